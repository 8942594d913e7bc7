"""Reading weight files safely: safetensors (single or sharded), or .bin/.pt through weights_only unpickling."""

from __future__ import annotations

import json
from pathlib import Path

import torch


class WeightError(ValueError):
    """Weights that are missing, unexpected or the wrong shape; the message names them and the file."""


def find_weight_files(path: str | Path) -> list[Path]:
    """The weight files of a Hugging Face style directory, preferring safetensors."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [path / f for f in files]
    if (path / "pytorch_model.bin").is_file():
        return [path / "pytorch_model.bin"]
    raise WeightError(f"{path}: no model.safetensors, sharded index or pytorch_model.bin found")


def load_state_dict_file(file: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of one file; pickles are opened with weights_only=True, never executing code."""
    file = Path(file)
    if not file.is_file():
        raise WeightError(f"weight file not found: {file}")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, wrong formats
        raise WeightError(f"{file}: cannot read weights safely ({err})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightError(f"{file}: expected a dict of tensors, got {type(state).__name__}")
    return state


def check_shapes(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], where: str) -> None:
    """Same keys and shapes, or a WeightError naming the first differences."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [f"{k} {tuple(given[k].shape)} != {tuple(expected[k].shape)}"
             for k in expected if k in given and given[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}" + (f" (+{len(missing) - 5})" if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:5])}" + (f" (+{len(unexpected) - 5})" if len(unexpected) > 5 else ""))
    if wrong:
        problems.append(f"wrong shape {', '.join(wrong[:5])}")
    if problems:
        raise WeightError(f"{where}: " + "; ".join(problems))
