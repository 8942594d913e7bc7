"""Checkpoints: atomic, complete enough to resume bit for bit, pruned to the last K and the best N.

    OUT/checkpoints/step_00001200/
        config.json model.safetensors tokenizer/ prompts.yaml   a model directory (osum.load opens it)
        optimizer.safetensors   AdamW moments by parameter name (+ hyper-parameters in trainer_state.json)
        rank0.safetensors rank0.json ...   each rank's RNG states and data-loader position
        trainer_state.json      step, epoch, scheduler, grad scaler, counters, validation metrics (written last)

A checkpoint is written under a temporary name and renamed when every rank has written its part, so a run
killed at any moment leaves only complete checkpoints. Nothing is pickled. Several nodes must see the same
OUT directory (a shared file system), as with every trainer that writes one checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..models.checkpoint import WEIGHTS_FILE, save_model
from ..models.weights import WeightError, WeightWriteError, read_safetensors, save_safetensors, write_error

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
HIGHER_IS_BETTER = {"accuracy": True, "loss": False, "wer": False}


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints (those with a trainer state), oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def read_state(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / STATE_FILE).read_text())


# ------------------------------------------------------------------------------------------------ optimizer

def optimizer_state_by_name(optimizer: torch.optim.Optimizer, names: dict[torch.nn.Parameter, str]) -> dict:
    """optimizer.state_dict() with parameter names instead of positions (the layout of torch's DCP helpers)."""
    state = optimizer.state_dict()
    order = [names[p] for group in optimizer.param_groups for p in group["params"]]
    groups = []
    for group in state["param_groups"]:
        groups.append({**group, "params": [order[i] for i in group["params"]]})
    return {"state": {order[i]: value for i, value in state["state"].items()}, "param_groups": groups}


def load_optimizer_state_by_name(optimizer: torch.optim.Optimizer, names: dict[torch.nn.Parameter, str], state: dict) -> None:
    """The inverse of optimizer_state_by_name; every trainable parameter must be present, by name."""
    order = [names[p] for group in optimizer.param_groups for p in group["params"]]
    saved = [n for group in state["param_groups"] for n in group["params"]]
    if sorted(saved) != sorted(order):
        missing, extra = sorted(set(order) - set(saved)), sorted(set(saved) - set(order))
        raise WeightError(f"the checkpoint's optimizer covers other parameters (missing {missing[:5]}, "
                          f"unexpected {extra[:5]}): did the trainable parts change since it was written?")
    index = {name: i for i, name in enumerate(order)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    optimizer.load_state_dict({"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups})


def flatten_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors go to safetensors ('name/exp_avg'); the rest (hyper-parameters, scalars) to JSON."""
    tensors, scalars = {}, {}
    for name, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{name}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[str, dict] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        name, key = flat.rsplit("/", 1)
        state.setdefault(name, {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# ------------------------------------------------------------------------------------------------ RNG

def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every random generator a step may draw from: torch (CPU and each GPU), numpy, Python."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, py_gauss = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [version, list(internal), py_gauss]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = meta["python"]
    random.setstate((version, tuple(internal), py_gauss))


# ------------------------------------------------------------------------------------------------ write / read

def save_checkpoint(
    out_dir: str | Path,
    step: int,
    rank: int,
    barrier: Callable[[], None],
    model,
    model_state: dict[str, torch.Tensor] | None,
    optimizer_state: dict | None,
    trainer_state: dict[str, Any],
    rank_state: dict[str, Any],
    write_more: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint `step` collectively: every rank its RNG + loader position, rank 0 the rest.

    `model_state` / `optimizer_state` (full, by parameter name) are only needed on rank 0; an engine that
    keeps its own optimizer files (DeepSpeed) passes `write_more`, which every rank runs on the directory.
    """
    final = checkpoint_dir(out_dir, step)
    tmp = final.parent / f".{final.name}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    with _checkpoint_writes(tmp):
        tensors, meta = rng_state()
        save_safetensors(tensors, tmp / f"rank{rank}.safetensors")
        (tmp / f"rank{rank}.json").write_text(json.dumps({**meta, **rank_state}))
        if write_more is not None:
            write_more(tmp)
        if rank == 0:
            save_model(model, tmp, state=model_state)
            if optimizer_state is not None:
                tensors, meta = flatten_optimizer_state(optimizer_state)
                save_safetensors(tensors, tmp / OPTIMIZER_FILE)
                trainer_state = {**trainer_state, "optimizer": meta}
    barrier()
    if rank == 0:
        with _checkpoint_writes(tmp):
            (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    barrier()
    return final


@contextmanager
def _checkpoint_writes(tmp: Path) -> Iterator[None]:
    """A failed write of a checkpoint (a full disk) is an error naming it; the half-written directory goes, and
    the checkpoints before it stay as they were (a rerun resumes from the newest of them)."""
    try:
        yield
    except (OSError, WeightWriteError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, WeightWriteError):
            raise
        raise write_error(Path(getattr(err, "filename", None) or tmp), err) from err


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # not every file system lets a directory be synced; the rename itself is atomic


def load_rank_state(path: str | Path, rank: int) -> dict[str, Any]:
    """Restore this rank's RNGs from checkpoint `path`; returns its JSON part (loader position)."""
    path = Path(path)
    if not (path / f"rank{rank}.json").is_file():
        raise WeightError(f"{path} has no state for rank {rank}: resume with the number of processes it was written by")
    meta = json.loads((path / f"rank{rank}.json").read_text())
    set_rng_state(read_safetensors(path / f"rank{rank}.safetensors"), meta)
    return meta


def load_optimizer_file(path: str | Path, meta: dict) -> dict:
    return unflatten_optimizer_state(read_safetensors(Path(path) / OPTIMIZER_FILE), meta)


# ------------------------------------------------------------------------------------------------ keep / average

def prune_checkpoints(out_dir: str | Path, keep_last: int, keep_best: int, metric: str) -> list[Path]:
    """Delete checkpoints that are neither among the newest `keep_last` nor the best `keep_best`."""
    found = list_checkpoints(out_dir)
    keep = set(found[-keep_last:]) if keep_last > 0 else set()
    keep |= set(best_checkpoints(out_dir, metric, keep_best))
    removed = [p for p in found if p not in keep]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def best_checkpoints(out_dir: str | Path, metric: str, count: int) -> list[Path]:
    """The `count` checkpoints with the best validation `metric`, best first (those validated only)."""
    if count <= 0:
        return []
    scored = []
    for path in list_checkpoints(out_dir):
        value = (read_state(path).get("validation") or {}).get(metric)
        if value is not None:
            scored.append((value, path))
    scored.sort(key=lambda vp: -vp[0] if HIGHER_IS_BETTER[metric] else vp[0])
    return [path for _, path in scored[:count]]


def average_checkpoints(paths: list[Path], out: str | Path) -> Path:
    """Average the weights of model directories with the same layout into `out` (a model directory)."""
    if not paths:
        raise ValueError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        weights = read_safetensors(Path(path) / WEIGHTS_FILE)
        if total and set(weights) != set(total):
            raise WeightError(f"{path}: holds other weights than {paths[0]}; only checkpoints of one run average")
        for key, value in weights.items():
            total[key] = total.get(key, 0) + value.double()
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    reference = read_safetensors(Path(paths[-1]) / WEIGHTS_FILE)
    averaged = {k: (v / len(paths)).to(reference[k].dtype).contiguous() for k, v in total.items()}
    with _checkpoint_writes(tmp):
        shutil.copytree(paths[-1], tmp, ignore=shutil.ignore_patterns("rank*", OPTIMIZER_FILE, STATE_FILE))
        save_safetensors(averaged, tmp / WEIGHTS_FILE, {"format": "pt", "averaged": ",".join(p.name for p in paths)})
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
