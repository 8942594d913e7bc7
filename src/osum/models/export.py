"""Export an osum model directory as parts that other tools open without osum:

    OUT/llm/        a standard Hugging Face causal-LM directory (config, safetensors, tokenizer); with
                    --merge-lora the LoRA weights are merged in, otherwise OUT/llm is the base LLM and
                    OUT/lora/ the peft adapter (PeftModel.from_pretrained(llm, OUT/lora))
    OUT/encoder/    a Hugging Face Whisper encoder directory (WhisperConfig + WhisperEncoder weights):
                    transformers.models.whisper.modeling_whisper.WhisperEncoder.from_pretrained(OUT/encoder)
    OUT/adapter/    adapter.safetensors (the adapter's weights and the audio begin/end embeddings) and
                    adapter_config.json (its type and sizes: enough to rebuild it with torch alone)
    OUT/export.json how the parts fit: prompt layout, audio markers, end-of-text token, prompts

A Whisper model (model.type=whisper) exports as OUT/whisper/, a standard Hugging Face Whisper directory
(WhisperForConditionalGeneration, tokenizer, feature extractor settings), and OUT/export.json. Which parts a
model writes is its type's answer (`ModelType.export`: speech_llm_type.py, whisper_type.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import load_model
from .model_types import type_of
from .weights import WeightError, WeightWriteError, write_cause
from .whisper import _HF_LAYER_KEYS, _HF_TOP_KEYS


def hf_encoder_state(encoder) -> dict[str, torch.Tensor]:
    """osum's WhisperEncoder weights under Hugging Face WhisperEncoder names (the inverse of the loading map)."""
    ours = encoder.state_dict()
    out = {hf: ours[name] for hf, name in _HF_TOP_KEYS.items()}
    for i in range(encoder.config.n_layers):
        out.update({f"layers.{i}.{hf}": ours[f"blocks.{i}.{name}"] for hf, name in _HF_LAYER_KEYS.items()})
    unused = set(ours) - set(_HF_TOP_KEYS.values()) - {f"blocks.{i}.{n}" for i in range(encoder.config.n_layers)
                                                        for n in _HF_LAYER_KEYS.values()}
    if unused:
        raise WeightError(f"encoder weights with no Hugging Face name: {sorted(unused)[:5]}")
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def hf_whisper_config(encoder, source: str | None) -> dict:
    """The WhisperConfig of the encoder: the original's when the encoder came from a HF directory."""
    c = encoder.config
    if source and (Path(source) / "config.json").is_file():
        config = json.loads((Path(source) / "config.json").read_text())
    else:
        from transformers import WhisperConfig

        config = WhisperConfig().to_dict()
    config.update(num_mel_bins=c.n_mels, d_model=c.d_model, encoder_attention_heads=c.n_heads,
                  encoder_layers=c.n_layers, encoder_ffn_dim=c.ffn_dim, max_source_positions=c.max_positions)
    config["architectures"] = ["WhisperEncoder"]
    config["model_type"] = "whisper"
    return config


def export_model(model_dir: str | Path, out: str | Path, merge_lora: bool = False) -> dict:
    """Write the parts of a model directory to OUT (a new directory); a failed write (a full disk) is a
    WeightWriteError naming OUT. `merge_lora`: merge LoRA into the LLM (else OUT/llm + OUT/lora)."""
    from safetensors import SafetensorError

    model = load_model(model_dir)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise WeightError(f"{out} exists and is not empty: export into a new directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        return type_of(model).export(model, Path(model_dir), out, merge_lora)
    except (OSError, SafetensorError) as err:
        raise WeightWriteError(f"cannot write the export to {out}: {write_cause(err)}; what is there is incomplete: "
                               "remove it, free space (or choose another directory) and export again") from err
