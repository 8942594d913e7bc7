"""osum: train, evaluate and serve speech-understanding LLMs (Whisper encoder + adapter + causal LM)."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .infer.api import SpeechModel
    from .models.speech_llm import SpeechLLM


def load(model_dir: str, device: str = "cpu") -> "SpeechModel":
    """Open an osum model directory (strictly; nothing downloads), ready for inference.

    `model.generate(inputs, task=...)` decodes paths, bytes or arrays; `model.model` is the SpeechLLM.
    """
    from .infer.api import SpeechModel

    return SpeechModel.load(model_dir, device)


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
