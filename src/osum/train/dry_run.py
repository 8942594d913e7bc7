"""`osum train CONFIG --dry-run`: check a run before it takes a cluster: the config, the data lists, the
parameter counts and a per-GPU memory estimate, reading only config.json files (no weights are loaded, so
a 7B recipe is checked in seconds on a laptop that holds the configs).

The counts come from the model's real modules, built as training builds them but on the meta device (shapes
only, from config.json files): the model type's `size` (models/model_type.py), so they cannot drift from
what trains.

The memory estimate is the usual accounting for mixed-precision AdamW: weights in their dtype, gradients of
the trainable weights in theirs, AdamW's two fp32 moments per trainable weight (plus an fp32 master copy when
the weights are bf16/fp16), divided over the GPUs as the engine shards them (FSDP2 / ZeRO-3: everything;
ZeRO-2: gradients and optimizer; ZeRO-1: optimizer; DDP: nothing); activations from the batch budget, per
layer about 34 bytes x tokens x hidden for a transformer (Korthikanti et al. 2022), 2 x with gradient
checkpointing. It is an estimate (allocator slack, CUDA context and temporary buffers come on top).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..models.model_types import model_type
from .config import TrainConfig

GIB = 1024**3


def count_samples(path: str) -> tuple[str, int]:
    """(kind, count) for a data list without reading audio: shards in a list, or lines of a manifest."""
    from ..data.manifest import detect_format

    p = Path(path)
    fmt = detect_format(path)
    if fmt == "shards":
        listing = p / "shards.list" if p.is_dir() else p
        if str(p).endswith((".tar", ".tgz", ".tar.gz")):
            return "shards", 1
        missing = [line.strip() for line in listing.read_text().splitlines()
                   if line.strip() and "://" not in line and not Path(line.strip()).is_absolute()
                   and not (listing.parent / line.strip()).exists() and not Path(line.strip()).exists()]
        if missing:
            raise FileNotFoundError(f"{listing}: shard {missing[0]} not found ({len(missing)} missing)")
        return "shards", sum(1 for line in listing.read_text().splitlines() if line.strip())
    if fmt == "kaldi":
        return "utterances", sum(1 for line in (p / "wav.scp").read_text().splitlines() if line.strip())
    return "utterances", sum(1 for line in p.read_text(encoding="utf-8").splitlines() if line.strip())


def _sharded(config: TrainConfig, world_size: int, weight_bytes: float, grad_bytes: float,
             optim_bytes: float) -> dict[str, float]:
    """Bytes per GPU of weights, gradients and optimizer state, as the engine divides them."""
    engine, stage = config.train.engine, config.train.deepspeed_stage
    shard_weights = engine == "fsdp2" or (engine == "deepspeed" and stage == 3)
    shard_grads = shard_weights or (engine == "deepspeed" and stage >= 2)
    shard_optim = shard_grads or engine == "deepspeed"
    n = max(1, world_size)
    return {
        "weights": weight_bytes / (n if shard_weights else 1),
        "gradients": grad_bytes / (n if shard_grads else 1),
        "optimizer": optim_bytes / (n if shard_optim else 1),
    }


def _report(config: TrainConfig, world_size: int, counts: dict, trainable: int, per_gpu: dict,
            dtypes: dict[str, str]) -> dict:
    engine, stage = config.train.engine, config.train.deepspeed_stage
    return {
        "parameters": counts, "trainable": trainable,
        "world_size": max(1, world_size), "engine": engine if engine != "deepspeed" else f"deepspeed ZeRO-{stage}",
        "precision": config.train.precision, **dtypes,
        "memory_gib_per_gpu": {k: round(v / GIB, 2) for k, v in per_gpu.items()},
        "total_gib_per_gpu": round(sum(per_gpu.values()) / GIB, 2),
    }


def estimate(config: TrainConfig, world_size: int) -> dict[str, Any]:
    """Parameter counts and the per-GPU memory estimate (GiB)."""
    kind = model_type(config.model.type)
    size = kind.size(config.model)
    memory = kind.memory(config, size)
    per_gpu = _sharded(config, world_size, memory.weights, memory.gradients, memory.optimizer)
    per_gpu["activations"] = memory.activations
    return _report(config, world_size, size.parameters, size.trainable, per_gpu, memory.dtypes)


def dry_run(config: TrainConfig, world_size: int) -> dict[str, Any]:
    """Everything a dry run checks and reports (raises naming the first problem)."""
    data = {}
    for section, sources in (("train", config.data.train), ("dev", config.data.dev)):
        for source in sources:
            kind, count = count_samples(source.path)
            data[source.path] = {"list": section, kind: count, "weight": source.weight,
                                 "tasks": list(source.tasks) or "from the samples"}
    if not config.data.train:
        raise ValueError("data.train is empty: name at least one training list")
    if config.model.init_from and not (Path(config.model.init_from) / "config.json").is_file():
        raise FileNotFoundError(f"model.init_from: {config.model.init_from} is not an osum model directory")
    if config.model.prompts and not Path(config.model.prompts).is_file():
        raise FileNotFoundError(f"model.prompts: {config.model.prompts} not found")
    return {"config": "valid", "data": data, **estimate(config, world_size)}
