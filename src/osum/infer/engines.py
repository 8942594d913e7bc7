"""What runs a model's decoding: the `Engine` interface and the table of engines.

`SpeechModel` (api.py) does everything around the model (reading inputs, splitting long audio, batching pieces
under a frame budget, stitching) and hands each batch of features to its engine. Two engines:

    torch   the model in this process: transformers' `generate`, label slots scored by one forward pass each
            (the default; every model type, every decoding option)
    vllm    the speech LLM's encoder and adapter in this process, its LLM on vLLM's engine: continuous
            batching, paged KV cache, tensor / pipeline parallel (vllm_engine.py; needs `osum[vllm]`)

Both run the same label-scoring algorithm (`labels.fill_labels`), so results have the same fields, the same
guarantee (a label is always one of the valid ones, with a confidence) and, greedy, the same answers.
Callers pick an engine by name from `ENGINES` and never branch on it.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch

from ..tasks import label_fields
from .labels import generate_with_label_scores, read_outputs


class Engine(Protocol):
    name: str
    # Model calls that may run at once. The server's batcher keeps this many batches in flight: 1 for torch
    # (one model call at a time bounds memory), more for an engine that schedules requests itself.
    concurrency: int

    def decode_batch(self, features: torch.Tensor, lengths: torch.Tensor, prompts: list[str], tasks: list[str],
                     labels: dict[str, tuple[str, ...]], label_scoring: bool,
                     decoding: dict[str, Any]) -> list[dict[str, Any]]:
        """One parsed output per row of the batch (features [B, T, n_mels], `lengths` [B]): the fields of
        `tasks.parse_output` plus `raw` and `confidence`. `decoding`: options of the model's GenerationConfig."""

    def close(self) -> None:
        """Release what the engine holds beyond the model (worker processes, temporary files); idempotent."""


class TorchEngine:
    """The model's own `generate` in this process (any model type, every decoding option)."""

    name = "torch"
    concurrency = 1

    def __init__(self, model, **options: Any):
        if options:
            raise ValueError(f"the torch engine takes no engine options (got {sorted(options)}); "
                             "they belong to --engine vllm")
        self.model = model

    def decode_batch(self, features, lengths, prompts, tasks, labels, label_scoring, decoding):
        if label_scoring and any(label_fields(task) for task in tasks):
            return generate_with_label_scores(self.model, features, lengths, prompts, tasks, labels, **decoding)
        return read_outputs(self.model.generate(features, lengths, prompts, **decoding), tasks, labels)

    def close(self) -> None:
        pass


def _vllm_engine(model, **options: Any) -> Engine:
    from .vllm_engine import VllmEngine  # vLLM is an optional extra: imported only when chosen

    return VllmEngine(model, **options)


ENGINES: dict[str, Callable[..., Engine]] = {"torch": TorchEngine, "vllm": _vllm_engine}


def make_engine(name: str, model, **options: Any) -> Engine:
    """The engine `name` for a loaded model; an unknown name, or one the model's type cannot run on, is a
    ValueError saying what there is."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose from {sorted(ENGINES)}")
    from ..models.model_types import type_of

    supported = type_of(model).engines
    if name not in supported:
        raise ValueError(f"a {type_of(model).name} model decodes on the {' / '.join(supported)} engine only, "
                         f"not {name}")
    return ENGINES[name](model, **options)
