"""osum: train, evaluate and serve speech-understanding LLMs (Whisper encoder + adapter + causal LM)."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .infer.api import SpeechModel
    from .models.speech_llm import SpeechLLM


def load(model_dir: str, device: str = "cpu", engine: str = "torch", **engine_options) -> "SpeechModel":
    """Open an osum model directory (strictly; nothing downloads), ready for inference.

    `model.generate(inputs, task=...)` decodes paths, bytes or arrays; `model.model` is the SpeechLLM.
    `engine`: "torch" (default) or "vllm" (the LLM on vLLM's engine; `engine_options` are the fields of
    osum.infer.vllm_engine.VllmOptions, e.g. tensor_parallel_size=2). `model.close()` (or `with osum.load(...)
    as model:`) stops vLLM's processes; a script using vLLM needs the `if __name__ == "__main__":` guard.
    """
    from .infer.api import SpeechModel

    return SpeechModel.load(model_dir, device, engine=engine, engine_options=engine_options)


def __getattr__(name: str):
    # SpeechLLM is imported on first use so that `import osum` stays light (no torch/transformers).
    if name == "SpeechLLM":
        from .models.speech_llm import SpeechLLM

        return SpeechLLM
    if name == "SpeechModel":
        from .infer.api import SpeechModel

        return SpeechModel
    raise AttributeError(f"module 'osum' has no attribute {name!r}")


__all__ = ["__version__", "load", "SpeechLLM", "SpeechModel"]
