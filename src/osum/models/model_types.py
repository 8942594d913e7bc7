"""The model types osum knows, by name: the one place that names them (the interface is model_type.py).

    speech_llm   Whisper encoder + adapter + causal LM (speech_llm.py; its type: speech_llm_type.py)
    whisper      Whisper itself, encoder + decoder (whisper_asr.py; its type: whisper_type.py)

A training config's `model.type`, a built model's `model_type` and a model directory's config.json are looked up
here; the training config, the model directories, the export and the dry run then call the type's methods.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from .model_type import ModelType
from .speech_llm_type import SpeechLLMType
from .weights import WeightError
from .whisper_type import WhisperType

if TYPE_CHECKING:
    from ..train.config import ModelSection

log = logging.getLogger("osum.train")

MODEL_TYPES: dict[str, ModelType] = {kind.name: kind for kind in (SpeechLLMType(), WhisperType())}
MODEL_TYPE_NAMES = tuple(MODEL_TYPES)  # speech_llm, whisper
DEFAULT_MODEL_TYPE = SpeechLLMType.name  # a training config without model.type; a model directory without "type"
# Hugging Face directories (by their config.json's transformers model_type) that open as an osum model as they are.
HF_DIRECTORY_TYPES = {"whisper": WhisperType.name}


def model_type(name: str) -> ModelType:
    """The type a config's model.type names; an unknown name is a ValueError listing the known ones."""
    try:
        return MODEL_TYPES[name]
    except KeyError:
        raise ValueError(f"model.type {name!r}: choose one of {', '.join(MODEL_TYPES)}") from None


def type_of(model: nn.Module) -> ModelType:
    """The type of a built model (its `model_type` attribute)."""
    return MODEL_TYPES[model.model_type]


def directory_type(document: dict, config_file: Path) -> ModelType:
    """The type of a model directory from its config.json: osum's "type" (none: a speech LLM, osum's first
    format), or a Hugging Face model_type that osum opens as it is."""
    hf_type = document.get("model_type")
    if hf_type in HF_DIRECTORY_TYPES:
        return MODEL_TYPES[HF_DIRECTORY_TYPES[hf_type]]
    name = document.get("type", DEFAULT_MODEL_TYPE)
    if name not in MODEL_TYPES:
        raise WeightError(f"{config_file}: model type {name!r} is not one osum knows ({', '.join(MODEL_TYPES)})")
    return MODEL_TYPES[name]


def build_for_training(section: ModelSection) -> nn.Module:
    """The model a training config describes, with its prompts and the weights of model.init_from: what
    training starts from."""
    from ..prompt_set import load_prompts
    from .checkpoint import load_weights

    model = model_type(section.type).build(section)
    model.prompts = load_prompts(section.prompts)
    if section.init_from:
        parts = load_weights(model, section.init_from, require_all=False)
        log.info("initialized %s from %s", ", ".join(parts), section.init_from)
    return model
