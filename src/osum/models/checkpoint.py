"""Self-contained model directories: what inference needs, exactly as training used it.

    DIR/config.json        architecture, prompt layout, generation defaults, what the weights file holds
    DIR/model.safetensors  the weights osum owns: adapter, audio markers, and the encoder / LLM / LoRA
                           weights that were trained (or all of them for a standalone copy)
    DIR/tokenizer/         the tokenizer files
    DIR/prompts.yaml       the task prompts
    DIR/llm/               (standalone copies only) the LLM with LoRA merged, as a Hugging Face directory

Base weights that were not trained are referenced by path (absolute, or relative to DIR). Loading is strict:
a missing, unexpected or wrongly shaped key is an error naming it. Nothing is ever unpickled.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import from_dict, to_dict
from .llm import base_model, load_tokenizer
from .speech_llm import SpeechLLM, SpeechLLMConfig
from .weights import WeightError, check_shapes

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
PROMPTS_FILE = "prompts.yaml"
LLM_DIR = "llm"


def _weights_plan(model: SpeechLLM, merge: bool) -> dict[str, Any]:
    """Which parts the weights file holds: encoder (bool) and llm ('none' | 'lora' | 'full')."""
    c = model.config
    encoder = merge or c.trainable.encoder or not c.encoder.path
    if merge:
        llm = "none"  # the merged LLM goes to DIR/llm as a Hugging Face directory
    elif c.trainable.llm or not c.llm.path:
        llm = "full"
    elif c.lora.enabled:
        llm = "lora"
    else:
        llm = "none"
    return {"encoder": bool(encoder), "llm": llm}


def owned_state(model: SpeechLLM, plan: dict[str, Any], full_state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The subset of the model's state dict (or of `full_state`, gathered from shards) the weights file holds."""
    tied = getattr(base_model(model.llm).config, "tie_word_embeddings", False)
    state = {}
    for key, value in (model.state_dict() if full_state is None else full_state).items():
        part = key.split(".", 1)[0]
        if part in ("adapter", "audio_markers", "ctc_head"):
            state[key] = value
        elif part == "encoder" and plan["encoder"]:
            state[key] = value
        elif part == "llm":
            if plan["llm"] == "full" and not (tied and key.endswith("lm_head.weight")):
                state[key] = value
            elif plan["llm"] == "lora" and "lora_" in key:
                state[key] = value
    return state


def save_model(
    model: SpeechLLM,
    out_dir: str | Path,
    merge: bool = False,
    prompts_file: str | Path | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a model directory; `merge=True` writes a standalone copy with LoRA merged into the LLM.

    `state` is the full state dict when the model's own parameters are sharded (FSDP2).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = _weights_plan(model, merge)
    config = copy.deepcopy(model.config)
    config.prompt_layout = model.layout
    if config.encoder.path and not plan["encoder"]:
        config.encoder.path = str(Path(config.encoder.path).resolve())
    else:
        config.encoder.path = None
    if plan["llm"] == "full" or merge:
        config.llm.config = base_model(model.llm).config.to_dict()
    if merge:
        merged = copy.deepcopy(model.llm)
        merged = merged.merge_and_unload() if hasattr(merged, "merge_and_unload") else merged
        merged.save_pretrained(str(out / LLM_DIR), safe_serialization=True)
        config.llm.path = LLM_DIR
        config.lora = replace(config.lora, enabled=False)
    elif plan["llm"] == "full":
        config.llm.path = None
    elif config.llm.path and config.llm.path != LLM_DIR:
        config.llm.path = str(Path(config.llm.path).resolve())
    config.llm.tokenizer = None
    state = {k: v.detach().contiguous().cpu() for k, v in owned_state(model, plan, state).items()}
    tmp = out / f".{WEIGHTS_FILE}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt", "osum_version": __version__})
    os.replace(tmp, out / WEIGHTS_FILE)
    model.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    from ..prompt_set import DEFAULT_PROMPTS, load_prompts

    prompts_file = Path(prompts_file or getattr(getattr(model, "prompts", None), "source", "") or DEFAULT_PROMPTS)
    load_prompts(prompts_file)  # a broken prompt file fails now, not when the model is served
    if prompts_file.resolve() != (out / PROMPTS_FILE).resolve():
        shutil.copyfile(prompts_file, out / PROMPTS_FILE)
    document = {"osum_version": __version__, "weights": plan, "model": to_dict(config)}
    tmp = out / f".{CONFIG_FILE}.tmp"
    tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False))
    os.replace(tmp, out / CONFIG_FILE)
    return out


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> SpeechLLM:
    """Open a model directory strictly, in eval mode."""
    from safetensors.torch import load_file

    root = Path(model_dir)
    config_file = root / CONFIG_FILE
    if not config_file.is_file():
        raise WeightError(f"{root}: not an osum model directory (no {CONFIG_FILE})")
    document = json.loads(config_file.read_text())
    if "model" not in document or "weights" not in document:
        raise WeightError(f"{config_file}: not an osum model config (needs 'model' and 'weights')")
    plan = document["weights"]
    config = from_dict(SpeechLLMConfig, document["model"], "model")
    if plan["encoder"]:
        config.encoder.path = None
        if config.encoder.config is None:
            raise WeightError(f"{config_file}: model.encoder.config is needed when the encoder weights are included")
    elif config.encoder.path and not Path(config.encoder.path).is_absolute():
        config.encoder.path = str(root / config.encoder.path)
    if plan["llm"] == "full":
        config.llm.path = None
    elif config.llm.path and not Path(config.llm.path).is_absolute():
        config.llm.path = str(root / config.llm.path)
    for name, path in (("encoder", config.encoder.path), ("LLM", config.llm.path)):
        if path and not Path(path).exists():
            raise WeightError(f"{root}: the base {name} it was trained on is not at {path}; "
                              "copy it there or save a standalone model with --merge")
    for name in (WEIGHTS_FILE, TOKENIZER_DIR):
        if not (root / name).exists():
            raise WeightError(f"{root}: {name} is missing, so the model directory is incomplete; copy the whole "
                              "directory again (config.json, model.safetensors, tokenizer/, prompts.yaml)")
    model = SpeechLLM.build(config, tokenizer=load_tokenizer(root / TOKENIZER_DIR))
    stored = load_file(str(root / WEIGHTS_FILE))
    expected = owned_state(model, plan)
    check_shapes(expected, stored, str(root / WEIGHTS_FILE))
    model.load_state_dict(stored, strict=False)  # coverage was checked above, key by key
    from ..prompt_set import load_prompts

    model.prompts = load_prompts(root / PROMPTS_FILE) if (root / PROMPTS_FILE).is_file() else load_prompts()
    return model.to(device).eval()


def load_weights(model: SpeechLLM, model_dir: str | Path, require_all: bool = True) -> list[str]:
    """Load a model directory's weights file into `model`; returns the parts it held.

    `require_all`: the file must hold exactly what this model owns (resuming the same run). Otherwise
    (fine-tuning from another run, `model.init_from`) it may hold less, e.g. an adapter-only stage; every
    weight it holds must exist in the model with the same shape either way.
    """
    from safetensors.torch import load_file

    root = Path(model_dir)
    path = root / WEIGHTS_FILE
    if not path.is_file():
        raise WeightError(f"{root}: no {WEIGHTS_FILE} (not an osum model directory?)")
    stored = load_file(str(path))
    model_state = model.state_dict()
    if require_all:
        expected = owned_state(model, _weights_plan(model, merge=False))
    else:
        unexpected = sorted(set(stored) - set(model_state))
        if unexpected:
            raise WeightError(f"{path}: weights this model does not have: {unexpected[:5]}"
                              f"{' ...' if len(unexpected) > 5 else ''} (was it built with another architecture?)")
        expected = {k: model_state[k] for k in stored}
    check_shapes(expected, stored, str(path))
    model.load_state_dict(stored, strict=False)  # coverage was checked above, key by key
    return sorted({k.split(".", 1)[0] if "lora_" not in k else "lora" for k in stored})
