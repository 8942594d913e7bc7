"""osum: train, evaluate and serve speech-understanding LLMs (Whisper encoder + adapter + causal LM)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
