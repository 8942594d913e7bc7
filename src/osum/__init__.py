"""osum: train, evaluate and serve speech-understanding LLMs (Whisper encoder + adapter + causal LM)."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .models.speech_llm import SpeechLLM


def load(model_dir: str, device: str = "cpu") -> "SpeechLLM":
    """Open an osum model directory (strictly; nothing downloads), ready for inference."""
    from .models.checkpoint import load_model

    return load_model(model_dir, device)


def __getattr__(name: str):
    # SpeechLLM is imported on first use so that `import osum` stays light (no torch/transformers).
    if name == "SpeechLLM":
        from .models.speech_llm import SpeechLLM

        return SpeechLLM
    raise AttributeError(f"module 'osum' has no attribute {name!r}")


__all__ = ["__version__", "load", "SpeechLLM"]
