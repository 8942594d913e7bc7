"""The declared interface of an osum model type (`ModelType`), and what its methods exchange.

An osum model type is one kind of model (the speech LLM; Whisper itself) with everything the code around it needs
from it: checking its config section, building it for training, its model directory (save, load), its export,
and its size and memory for the dry run. The implementations are speech_llm_type.py and whisper_type.py; the table
that picks one by name is model_types.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from ..data.loader import DataSource
    from ..train.config import ModelSection, TrainConfig


@dataclass
class DirectoryContents:
    """What a model directory holds besides its tokenizer and prompts (checkpoint.save_model writes them)."""

    weights: dict[str, torch.Tensor]  # model.safetensors
    document: dict[str, Any]  # config.json (osum_version is added on writing)
    hf_dirs: dict[str, Any] = field(default_factory=dict)  # sub-directory -> a model to save_pretrained there


@dataclass
class ModelSize:
    """What the dry run learns from the model's real modules built on the meta device."""

    parameters: dict[str, int]  # parameters per part (the report's keys)
    trainable: int  # parameters that train (requires_grad after the type's own set_trainable)
    dims: dict[str, int]  # the widths and depths the activation estimate needs


@dataclass
class MemoryEstimate:
    """Bytes on one GPU before the engine shards them (the dry run divides them as the engine does)."""

    weights: float
    gradients: float
    optimizer: float
    activations: float  # of the largest batch; not sharded
    dtypes: dict[str, str]  # what the report says of the weights' dtypes, e.g. {"llm_dtype": "bfloat16"}


class ModelType(Protocol):
    """One kind of osum model. Each method is the type's whole answer; callers never branch on `name`."""

    name: str  # model.type in a training config
    engines: tuple[str, ...]  # the decoding engines it runs on (osum.infer.engines.ENGINES), "torch" first

    def check_section(self, section: ModelSection) -> None:
        """Refuse model-section keys that mean nothing for this type, or a section it cannot be built from."""

    def check_tasks(self, where: str, source: DataSource) -> None:
        """Refuse a data list whose tasks this type cannot train (`where`: data.train or data.dev)."""

    def build(self, section: ModelSection) -> nn.Module:
        """A fresh model from the typed config (pretrained parts read from their paths), its trainable parts set."""

    def size(self, section: ModelSection) -> ModelSize:
        """Parameter counts of the model `build` makes, counted on its real modules built on the meta device from
        config.json files alone (no weights read, no tokenizer needed)."""

    def memory(self, config: TrainConfig, size: ModelSize) -> MemoryEstimate:
        """The per-GPU memory of training it as `config` says (mixed-precision AdamW), before sharding."""

    def save(self, model: nn.Module, standalone: bool, state: dict[str, torch.Tensor] | None) -> DirectoryContents:
        """What its model directory holds. `standalone`: every weight inside the directory, none read from a base
        path (a speech LLM: LoRA merged into its LLM, written as DIR/llm/; a Whisper: encoder and decoder stored).
        Otherwise only what trained, plus what has no base path. `state`: the full state dict when the model's
        own parameters are sharded (FSDP2)."""

    def stored_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The part of its state dict a (not standalone) model directory of it holds: what resuming loads."""

    def load(self, root: Path, document: dict, device: str | torch.device) -> nn.Module:
        """Open its model directory (config.json already read into `document`) strictly, in eval mode."""

    def export(self, model: nn.Module, model_dir: Path, out: Path, merge_lora: bool) -> dict:
        """Write its parts as Hugging Face directories under OUT (an empty directory); returns OUT/export.json's
        contents. `merge_lora`: merge LoRA weights into the LLM (a type without LoRA ignores it)."""


def read_config_json(path: Path, what: str) -> dict:
    """A config.json the dry run builds shapes from; a missing one is an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} not found (the dry run reads config.json files, never weights)")
    return json.loads(path.read_text(encoding="utf-8"))


def shape_config(values: dict, where: str, hf_model_type: str | None = None) -> dict:
    """A Hugging Face config.json as a config to build from: the keys its config class knows (building from a
    config refuses the others, which loading the directory would ignore; they change no shape)."""
    from .llm import hf_config_class, hf_config_keys

    _, known = hf_config_keys(hf_config_class(values.get("model_type", hf_model_type), where))
    return {k: v for k, v in values.items() if k in known and not k.startswith("_")}
