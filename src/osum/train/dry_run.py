"""`osum train CONFIG --dry-run`: check a run before it takes a cluster: the config, the data lists, the
parameter counts and a per-GPU memory estimate, reading only config.json files (no weights are loaded, so
a 7B recipe is checked in seconds on a laptop that holds the configs).

The memory estimate is the usual accounting for mixed-precision AdamW: weights in their dtype, gradients of
the trainable weights in theirs, AdamW's two fp32 moments per trainable weight (plus an fp32 master copy when
the weights are bf16/fp16), divided over the GPUs as the engine shards them (FSDP2 / ZeRO-3: everything;
ZeRO-2: gradients and optimizer; ZeRO-1: optimizer; DDP: nothing); activations from the batch budget, per
layer about 34 bytes x tokens x hidden for a transformer (Korthikanti et al. 2022), 2 x with gradient
checkpointing. It is an estimate (allocator slack, CUDA context and temporary buffers come on top).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 1024**3


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} not found (the dry run reads config.json files, never weights)")
    return json.loads(path.read_text(encoding="utf-8"))


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


def build_on_meta(config: TrainConfig):
    """The model's parts on the meta device (shapes only): (encoder, adapter, llm) from config.json files."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..models.adapter import build_adapter
    from ..models.llm import apply_lora
    from ..models.whisper import WhisperEncoder, WhisperEncoderConfig

    m = config.model
    if m.encoder.path:
        encoder_config = WhisperEncoderConfig.from_hf(_read_json(Path(m.encoder.path) / "config.json", "encoder"))
    elif m.encoder.config is not None:
        encoder_config = m.encoder.config
    else:
        raise ValueError("model.encoder needs a path (a Hugging Face Whisper directory) or a config")
    llm_json = dict(_read_json(Path(m.llm.path) / "config.json", "LLM") if m.llm.path else (m.llm.config or {}))
    if "model_type" not in llm_json:
        raise ValueError("the LLM config needs a model_type (qwen2, llama, ...)")
    with torch.device("meta"):
        encoder = WhisperEncoder(encoder_config)
        llm_config = AutoConfig.for_model(llm_json.pop("model_type"), **{k: v for k, v in llm_json.items()
                                                                        if not k.startswith("_")})
        llm = AutoModelForCausalLM.from_config(llm_config)
        m.adapter.input_dim = encoder_config.d_model
        m.adapter.output_dim = llm.get_input_embeddings().weight.shape[1]
        adapter = build_adapter(m.adapter)
        if m.lora.enabled:
            llm = apply_lora(llm, m.lora)
    return encoder, adapter, llm, encoder_config, llm_config


def _numel(module, lora: bool | None = None) -> int:
    total = 0
    for name, p in module.named_parameters():
        if lora is not None and ("lora_" in name) != lora:
            continue
        total += p.numel()
    return total


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


def estimate_whisper(config: TrainConfig, world_size: int) -> dict[str, Any]:
    """model.type=whisper: encoder and decoder counts; fp32 weights (autocast for bf16/fp16); activations of
    the trained parts (the encoder always runs on 1500 positions per clip, the decoder on about 64 tokens)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    w = config.model.whisper
    hf = WhisperConfig(**(_read_json(Path(w.path) / "config.json", "Whisper") if w.path else w.config))
    with torch.device("meta"):
        whisper = WhisperForConditionalGeneration(hf)
    counts = {"encoder": _numel(whisper.model.encoder), "decoder": _numel(whisper.model.decoder)}
    trainable = counts["encoder"] * w.train_encoder + counts["decoder"] * w.train_decoder
    per_gpu = _sharded(config, world_size, (counts["encoder"] + counts["decoder"]) * 4, trainable * 4, trainable * 8)
    rows = min(config.data.loader.max_batch_size, max(1, config.data.loader.max_frames_in_batch // 300))  # ~3 s clips
    act_bytes = 2 if config.train.precision in ("bf16", "fp16") else 4
    activations = 0.0
    if w.train_encoder:
        activations += 17 * act_bytes * rows * hf.max_source_positions * hf.d_model * hf.encoder_layers
    if w.train_encoder or w.train_decoder:
        activations += 17 * act_bytes * rows * 64 * hf.d_model * hf.decoder_layers
        activations += act_bytes * rows * 64 * hf.vocab_size * 2  # the logits and their gradient
    per_gpu["activations"] = activations
    return _report(config, world_size, counts, trainable, per_gpu, {"weights_dtype": "float32"})


def estimate(config: TrainConfig, world_size: int) -> dict[str, Any]:
    """Parameter counts and the per-GPU memory estimate (GiB)."""
    if config.model.type == "whisper":
        return estimate_whisper(config, world_size)
    encoder, adapter, llm, encoder_config, llm_config = build_on_meta(config)
    t = config.model.trainable
    counts = {
        "encoder": _numel(encoder),
        "adapter": _numel(adapter) + 2 * llm.get_input_embeddings().weight.shape[1],  # + audio markers
        "llm": _numel(llm, lora=False),
        "lora": _numel(llm, lora=True),
    }
    trainable = (counts["encoder"] * t.encoder + counts["adapter"] * t.adapter + counts["llm"] * t.llm
                 + counts["lora"] * (t.lora and config.model.lora.enabled))
    llm_bytes = DTYPE_BYTES[config.model.llm.dtype]
    # Encoder and adapter are kept in fp32 unless the LLM's dtype is given to the whole model by the trainer.
    weight_bytes = (counts["encoder"] + counts["adapter"]) * 4 + (counts["llm"] + counts["lora"]) * llm_bytes
    grad_bytes = trainable * (4 if llm_bytes == 4 else llm_bytes)
    optim_bytes = trainable * (8 + (4 if llm_bytes < 4 else 0))
    per_gpu = _sharded(config, world_size, weight_bytes, grad_bytes, optim_bytes)
    # Activations of the largest batch: speech tokens (frames / 2 encoder, / 4 adapter) + prompt and target.
    frames = config.data.loader.max_frames_in_batch
    act_bytes = 2 if config.train.precision in ("bf16", "fp16") else 4
    factor = 2 if config.model.llm.gradient_checkpointing else 34 / 2  # 34 bytes at 2-byte activations
    rows = min(config.data.loader.max_batch_size, max(1, frames // 500))  # clips of about 5 s
    llm_tokens = frames / 8 + rows * 64  # + about 64 prompt and target tokens per row
    llm_layers = getattr(llm_config, "num_hidden_layers", 0)
    llm_hidden = getattr(llm_config, "hidden_size", 0)
    activations = factor * act_bytes * llm_tokens * llm_hidden * llm_layers
    if t.encoder:
        activations += (34 / 2) * act_bytes * (frames / 2) * encoder_config.d_model * encoder_config.n_layers
    per_gpu["activations"] = activations
    return _report(config, world_size, counts, trainable, per_gpu, {"llm_dtype": config.model.llm.dtype})


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
