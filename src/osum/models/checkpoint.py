"""Self-contained model directories: what inference needs, exactly as training used it.

    DIR/config.json        architecture, prompt layout, generation defaults, what the weights file holds
    DIR/model.safetensors  the weights osum owns: adapter, audio markers, and the encoder / LLM / LoRA
                           weights that were trained (or all of them for a standalone copy)
    DIR/tokenizer/         the tokenizer files
    DIR/prompts.yaml       the task prompts
    DIR/llm/               (standalone copies only) the LLM with LoRA merged, as a Hugging Face directory

Base weights that were not trained are referenced by path (absolute, or relative to DIR). Loading is strict:
a missing, unexpected or wrongly shaped key is an error naming it, and so is a missing prompts.yaml (the prompts
are part of the model). Nothing is ever unpickled. Saving writes every file under a temporary name and renames
them into place at the end, so a failure (a full disk) leaves the directory as it was.

What the weights file and config.json hold is the model type's answer (`ModelType.save`, `.load`: a speech LLM's
in speech_llm_type.py; a Whisper's, which says "type" in config.json, in whisper_type.py); the files and their
safe writing are the same for every type. `load_model` also opens a plain Hugging Face Whisper directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .. import __version__
from .weights import WeightError, check_shapes, copy_stored_into, stored_shapes, staged_writes, write_error

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
PROMPTS_FILE = "prompts.yaml"
LLM_DIR = "llm"


def save_model(
    model,
    out_dir: str | Path,
    standalone: bool = False,
    prompts_file: str | Path | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a model directory (a SpeechLLM or a WhisperASR).

    `standalone`: every weight inside the directory, none read from a base path (a speech LLM gets its LoRA
    merged into the LLM, written as DIR/llm/, a Hugging Face directory; a Whisper stores encoder and decoder).
    Otherwise the directory holds what trained and refers to the base weights by path. `state` is the full
    state dict when the model's own parameters are sharded (FSDP2). Every file is written under a temporary name
    and renamed into place at the end: a failure (a full disk: WeightWriteError, naming the file) leaves a
    directory that was there before as it was.
    """
    from safetensors.torch import save_file

    from ..prompt_set import DEFAULT_PROMPTS, load_prompts
    from .model_types import type_of

    out = Path(out_dir)
    prompts_file = Path(prompts_file or getattr(getattr(model, "prompts", None), "source", "") or DEFAULT_PROMPTS)
    load_prompts(prompts_file)  # a broken prompt file fails now, not when the model is served
    contents = type_of(model).save(model, standalone, state)
    weights = {k: v.detach().contiguous().cpu() for k, v in contents.weights.items()}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(out, err) from err
    with staged_writes(out) as stage:  # config.json last: it is what makes the directory a model
        save_file(weights, str(stage(WEIGHTS_FILE)), metadata={"format": "pt", "osum_version": __version__})
        for name, hf_model in contents.hf_dirs.items():
            hf_model.save_pretrained(str(stage(name)), safe_serialization=True)
        model.tokenizer.save_pretrained(str(stage(TOKENIZER_DIR)))
        if prompts_file.resolve() != (out / PROMPTS_FILE).resolve():
            shutil.copyfile(prompts_file, stage(PROMPTS_FILE))
        stage(CONFIG_FILE).write_text(json.dumps({"osum_version": __version__, **contents.document}, indent=2,
                                                 ensure_ascii=False))
    return out


def load_model(model_dir: str | Path, device: str | torch.device = "cpu"):
    """Open a model directory strictly, in eval mode: a SpeechLLM, or a WhisperASR."""
    from .model_types import directory_type

    root = Path(model_dir)
    config_file = root / CONFIG_FILE
    if not config_file.is_file():
        raise WeightError(f"{root}: not an osum model directory (no {CONFIG_FILE})")
    try:
        document = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightError(f"{config_file}: cannot read it ({err}); the file is probably incomplete (an interrupted "
                          "copy or save): copy the model directory again") from err
    if not isinstance(document, dict):
        raise WeightError(f"{config_file}: not an osum model config (expected a JSON object)")
    return directory_type(document, config_file).load(root, document, device)


def load_weights(model, model_dir: str | Path, require_all: bool = True) -> list[str]:
    """Load a model directory's weights file into `model`; returns the parts it held.

    `require_all`: the file must hold exactly what this model owns (resuming the same run). Otherwise
    (fine-tuning from another run, `model.init_from`) it may hold less, e.g. an adapter-only stage; every
    weight it holds must exist in the model with the same shape either way.
    """
    from .model_types import type_of

    root = Path(model_dir)
    path = root / WEIGHTS_FILE
    if not path.is_file():
        raise WeightError(f"{root}: no {WEIGHTS_FILE} (not an osum model directory?)")
    stored = stored_shapes(path)
    model_state = model.state_dict()
    if require_all:
        expected = type_of(model).stored_state(model)
    else:
        unexpected = sorted(set(stored) - set(model_state))
        if unexpected:
            raise WeightError(f"{path}: weights this model does not have: {unexpected[:5]}"
                              f"{' ...' if len(unexpected) > 5 else ''} (was it built with another architecture?)")
        expected = {k: model_state[k] for k in stored}
    check_shapes(expected, stored, str(path))
    copy_stored_into(path, model_state)  # coverage was checked above, key by key
    return sorted({k.split(".", 1)[0] if "lora_" not in k else "lora" for k in stored})
