"""Whisper weight names: Hugging Face <-> MindSpeed-MM.

MindSpeed-MM names Whisper's attention projections `proj_q`, `proj_k`, `proj_v`, `proj_out` where Hugging Face
has `q_proj`, `k_proj`, `v_proj`, `out_proj`; everything else is the same. The one trap is Hugging Face's own
top-level `proj_out.weight` (WhisperForConditionalGeneration's output projection), which keeps its name both
ways: only a `proj_out` inside the model (an attention block) is an attention output projection.

Tensors are copied untouched, so a round trip gives back the same file content (names and values).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from ..models.weights import WeightError, load_state_dict_file

HF_TO_MINDSPEED = {"q_proj": "proj_q", "k_proj": "proj_k", "v_proj": "proj_v", "out_proj": "proj_out"}
MINDSPEED_TO_HF = {v: k for k, v in HF_TO_MINDSPEED.items()}
FORMATS = (".safetensors", ".bin", ".pt", ".pth")


def rename(name: str, to: Literal["mindspeed", "hf"]) -> str:
    """One weight name in the other naming; names without attention projections come back unchanged."""
    table = HF_TO_MINDSPEED if to == "mindspeed" else MINDSPEED_TO_HF
    parts = name.split(".")
    # parts[0] is never renamed: a top-level `proj_out` is the LM output projection in both namings.
    return ".".join(parts[:1] + [table.get(p, p) for p in parts[1:]])


def convert_names(state: dict[str, torch.Tensor], to: Literal["mindspeed", "hf"], where: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        new = rename(name, to)
        if new in out:
            raise WeightError(f"{where}: two weights would both be named {new!r} (is the file already in {to} names "
                              "with both namings mixed?)")
        out[new] = tensor
    return out


def convert_whisper_names(src: str | Path, out: str | Path, to: Literal["mindspeed", "hf"]) -> dict[str, int]:
    """Rewrite a weight file (.safetensors, .bin, .pt) in the other naming; the output format follows `out`'s
    extension. Returns how many names changed and how many were kept."""
    src, out = Path(src), Path(out)
    if to not in ("mindspeed", "hf"):
        raise WeightError(f"unknown naming {to!r}: use mindspeed or hf")
    if out.suffix not in FORMATS:
        raise WeightError(f"{out}: unknown weight format {out.suffix!r}; use one of {', '.join(FORMATS)}")
    state = load_state_dict_file(src)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightError(f"{src}: entries that are not tensors: {', '.join(map(str, bad[:5]))}")
    converted = convert_names(state, to, str(src))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        # safetensors refuses shared storage (tied weights): give each tensor its own.
        seen: set[int] = set()
        tensors = {}
        for name, tensor in converted.items():
            pointer = tensor.untyped_storage().data_ptr()
            tensors[name] = tensor.clone().contiguous() if pointer in seen else tensor.contiguous()
            seen.add(pointer)
        save_file(tensors, str(out))
    else:
        torch.save(converted, out)
    changed = sum(1 for old, new in zip(state, converted) if old != new)
    return {"weights": len(converted), "renamed": changed, "kept": len(converted) - changed}
