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

A Whisper model (model.type=whisper, `whisper_asr.py`) has the same files; config.json says "type": "whisper"
and which of its parts model.safetensors holds (encoder, decoder), the rest coming from its base directory.
`load_model` also opens a plain Hugging Face Whisper directory as such a model, to decode with it as it is.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import from_dict, to_dict
from .llm import base_model, load_tokenizer
from .speech_llm import SpeechLLM, SpeechLLMConfig
from .weights import WeightError, check_shapes, read_safetensors, staged_writes, write_error

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
        if part in ("adapter", "audio_markers", "ctc_head", "utterance"):
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
    model,
    out_dir: str | Path,
    merge: bool = False,
    prompts_file: str | Path | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a model directory (a SpeechLLM or a WhisperASR); `merge=True` writes a standalone copy (LoRA merged
    into the LLM; every Whisper weight stored).

    `state` is the full state dict when the model's own parameters are sharded (FSDP2). Every file is written
    under a temporary name and renamed into place at the end: a failure (a full disk: WeightWriteError, naming
    the file) leaves a directory that was there before as it was.
    """
    from safetensors.torch import save_file

    from ..prompt_set import DEFAULT_PROMPTS, load_prompts

    out = Path(out_dir)
    prompts_file = Path(prompts_file or getattr(getattr(model, "prompts", None), "source", "") or DEFAULT_PROMPTS)
    load_prompts(prompts_file)  # a broken prompt file fails now, not when the model is served
    merged_llm = None
    if model.model_type == "whisper":
        weights, document = _whisper_contents(model, merge, state)
    else:
        weights, document, merged_llm = _speech_llm_contents(model, merge, state)
    weights = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(out, err) from err
    with staged_writes(out) as stage:  # config.json last: it is what makes the directory a model
        save_file(weights, str(stage(WEIGHTS_FILE)), metadata={"format": "pt", "osum_version": __version__})
        if merged_llm is not None:
            merged_llm.save_pretrained(str(stage(LLM_DIR)), safe_serialization=True)
        model.tokenizer.save_pretrained(str(stage(TOKENIZER_DIR)))
        if prompts_file.resolve() != (out / PROMPTS_FILE).resolve():
            shutil.copyfile(prompts_file, stage(PROMPTS_FILE))
        stage(CONFIG_FILE).write_text(json.dumps({"osum_version": __version__, **document}, indent=2,
                                                 ensure_ascii=False))
    return out


def _speech_llm_contents(model: SpeechLLM, merge: bool, state) -> tuple[dict, dict, Any]:
    """(weights, config document, the LLM with LoRA merged to write to OUT/llm or None) of a SpeechLLM."""
    plan = _weights_plan(model, merge)
    config = copy.deepcopy(model.config)
    config.prompt_layout = model.layout
    if config.encoder.path and not plan["encoder"]:
        config.encoder.path = str(Path(config.encoder.path).resolve())
    else:
        config.encoder.path = None
    if plan["llm"] == "full" or merge:
        config.llm.config = base_model(model.llm).config.to_dict()
    merged = None
    if merge:
        merged = copy.deepcopy(model.llm)
        merged = merged.merge_and_unload() if hasattr(merged, "merge_and_unload") else merged
        config.llm.path = LLM_DIR
        config.lora = replace(config.lora, enabled=False)
    elif plan["llm"] == "full":
        config.llm.path = None
    elif config.llm.path and config.llm.path != LLM_DIR:
        config.llm.path = str(Path(config.llm.path).resolve())
    config.llm.tokenizer = None
    return owned_state(model, plan, state), {"weights": plan, "model": to_dict(config)}, merged


def _whisper_contents(model, standalone: bool, state) -> tuple[dict, dict]:
    """(weights, config document) of a WhisperASR: the parts that trained; the rest by its base path."""
    from .whisper_asr import whisper_plan, whisper_state_parts

    plan = whisper_plan(model, standalone)
    config = copy.deepcopy(model.config)
    config.config = model.whisper.config.to_dict()  # the architecture always travels with the weights
    config.path = None if all(plan.values()) else str(Path(config.path).resolve())
    config.tokenizer = None
    document = {"type": "whisper", "weights": plan,
                "model": {"whisper": to_dict(config), "generation": to_dict(model.generation)}}
    return whisper_state_parts(model, plan, state), document


def load_model(model_dir: str | Path, device: str | torch.device = "cpu"):
    """Open a model directory strictly, in eval mode: a SpeechLLM, or a WhisperASR."""
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
    if document.get("model_type") == "whisper":  # a plain Hugging Face Whisper directory: open it as it is
        return _open_hf_whisper(root, document, device)
    if document.get("type") == "whisper":
        return _load_whisper(root, document, device)
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
    from ..prompt_set import DEFAULT_PROMPTS, load_prompts

    if not (root / PROMPTS_FILE).is_file():
        # Other prompts than those it was trained with change what the model answers: no silent default.
        raise WeightError(f"{root / PROMPTS_FILE} is missing: the task prompts are part of the model. Copy the "
                          f"prompts.yaml of the run that trained it (OUT/model/ or any OUT/checkpoints/step_*/) into "
                          f"{root}, or the prompt file it was trained with (model.prompts; osum's default is "
                          f"{DEFAULT_PROMPTS})")
    prompts = load_prompts(root / PROMPTS_FILE)
    model = SpeechLLM.build(config, tokenizer=load_tokenizer(root / TOKENIZER_DIR))
    stored = read_safetensors(root / WEIGHTS_FILE)
    expected = owned_state(model, plan)
    check_shapes(expected, stored, str(root / WEIGHTS_FILE))
    model.load_state_dict(stored, strict=False)  # coverage was checked above, key by key
    model.prompts = prompts
    return model.to(device).eval()


def load_weights(model, model_dir: str | Path, require_all: bool = True) -> list[str]:
    """Load a model directory's weights file into `model`; returns the parts it held.

    `require_all`: the file must hold exactly what this model owns (resuming the same run). Otherwise
    (fine-tuning from another run, `model.init_from`) it may hold less, e.g. an adapter-only stage; every
    weight it holds must exist in the model with the same shape either way.
    """
    root = Path(model_dir)
    path = root / WEIGHTS_FILE
    if not path.is_file():
        raise WeightError(f"{root}: no {WEIGHTS_FILE} (not an osum model directory?)")
    stored = read_safetensors(path)
    model_state = model.state_dict()
    if require_all and model.model_type == "whisper":
        from .whisper_asr import whisper_plan, whisper_state_parts

        expected = whisper_state_parts(model, whisper_plan(model, standalone=False))
    elif require_all:
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


def _load_whisper(root: Path, document: dict, device) -> "torch.nn.Module":
    """A WhisperASR model directory: the stored parts over the base directory (or a config) for the rest.
    Whisper reads no task prompts (its prompt is its prefix tokens), so a missing prompts.yaml is no error here."""
    from ..prompt_set import load_prompts
    from .speech_llm import GenerationConfig
    from .whisper_asr import WhisperASR, WhisperModelConfig, whisper_state_parts

    config_file = root / CONFIG_FILE
    plan = document.get("weights") or {}
    if set(plan) != {"encoder", "decoder"}:
        raise WeightError(f"{config_file}: 'weights' must say which Whisper parts are stored (encoder, decoder)")
    model_doc = document.get("model") or {}
    config = from_dict(WhisperModelConfig, model_doc.get("whisper") or {}, "model.whisper")
    generation = from_dict(GenerationConfig, model_doc.get("generation") or {}, "model.generation")
    if all(plan.values()):
        config.path = None  # every weight is here: build from the stored architecture
    elif not config.path or not Path(config.path).exists():
        raise WeightError(f"{root}: the base Whisper it was trained on is not at {config.path}; copy it there, or "
                          "where it is, export a standalone copy with `osum export DIR OUT` (OUT/whisper opens as it is)")
    if not (root / WEIGHTS_FILE).is_file() or not (root / TOKENIZER_DIR).is_dir():
        raise WeightError(f"{root}: {WEIGHTS_FILE} or {TOKENIZER_DIR}/ is missing, so the model directory is incomplete")
    model = WhisperASR.build(config, generation, tokenizer=load_tokenizer(root / TOKENIZER_DIR))
    stored = read_safetensors(root / WEIGHTS_FILE)
    check_shapes(whisper_state_parts(model, plan), stored, str(root / WEIGHTS_FILE))
    model.load_state_dict(stored, strict=False)  # coverage was checked above, key by key
    model.prompts = load_prompts(root / PROMPTS_FILE) if (root / PROMPTS_FILE).is_file() else load_prompts()
    return model.to(device).eval()


def _open_hf_whisper(root: Path, hf_config: dict, device) -> "torch.nn.Module":
    """A Hugging Face Whisper directory used directly (decode, serve): its language from generation_config.json."""
    from ..prompt_set import load_prompts
    from .whisper_asr import WhisperASR, WhisperModelConfig

    generation_file = root / "generation_config.json"
    language = json.loads(generation_file.read_text()).get("language") if generation_file.is_file() else None
    if isinstance(language, str):
        language = language.strip("<|>")
    model = WhisperASR.build(WhisperModelConfig(path=str(root), language=language))
    model.prompts = load_prompts()
    return model.to(device).eval()
