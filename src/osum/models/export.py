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
(WhisperForConditionalGeneration, tokenizer, feature extractor settings), and OUT/export.json.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from .checkpoint import PROMPTS_FILE, load_model
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
    WeightWriteError naming OUT."""
    from safetensors import SafetensorError

    model = load_model(model_dir)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise WeightError(f"{out} exists and is not empty: export into a new directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        if model.model_type == "whisper":
            return _export_whisper(model, out)
        return _export_speech_llm(model, model_dir, out, merge_lora)
    except (OSError, SafetensorError) as err:
        raise WeightWriteError(f"cannot write the export to {out}: {write_cause(err)}; what is there is incomplete: "
                               "remove it, free space (or choose another directory) and export again") from err


def _export_speech_llm(model, model_dir: str | Path, out: Path, merge_lora: bool) -> dict:
    from safetensors.torch import save_file

    has_lora = hasattr(model.llm, "peft_config")
    llm = model.llm
    if has_lora and merge_lora:
        llm = copy.deepcopy(model.llm).merge_and_unload()
    elif has_lora:
        llm.save_pretrained(str(out / "lora"), safe_serialization=True)  # the peft adapter alone
        llm = copy.deepcopy(model.llm).unload()  # the base LLM without the LoRA layers (not merged)
    llm.save_pretrained(str(out / "llm"), safe_serialization=True)
    model.tokenizer.save_pretrained(str(out / "llm"))

    encoder_dir = out / "encoder"
    encoder_dir.mkdir()
    (encoder_dir / "config.json").write_text(json.dumps(hf_whisper_config(model.encoder, model.config.encoder.path), indent=2))
    save_file(hf_encoder_state(model.encoder), str(encoder_dir / "model.safetensors"), metadata={"format": "pt"})
    if model.config.encoder.path:  # the feature extractor's settings, when the encoder came with them
        source = Path(model.config.encoder.path) / "preprocessor_config.json"
        if source.is_file():
            shutil.copyfile(source, encoder_dir / source.name)

    adapter_dir = out / "adapter"
    adapter_dir.mkdir()
    adapter_state = {f"adapter.{k}": v.detach().contiguous().cpu() for k, v in model.adapter.state_dict().items()}
    adapter_state["audio_markers"] = model.audio_markers.detach().contiguous().cpu()
    if getattr(model, "utterance", None) is not None:  # model.utterance_labels: the utterance embedding's MLP
        adapter_state.update({f"utterance.{k}": v.detach().contiguous().cpu()
                              for k, v in model.utterance.state_dict().items()})
    save_file(adapter_state, str(adapter_dir / "adapter.safetensors"), metadata={"format": "pt"})
    (adapter_dir / "adapter_config.json").write_text(json.dumps(asdict(model.config.adapter), indent=2))

    prompts = Path(model_dir) / PROMPTS_FILE
    if prompts.is_file():
        shutil.copyfile(prompts, out / PROMPTS_FILE)
    description = {
        "layout": model.layout,
        "sequence": "prompt prefix | audio_markers[0] | adapter(encoder(log-mel))"
                    + (" | utterance(encoder(log-mel))" if getattr(model, "utterance", None) is not None else "")
                    + " | audio_markers[1] | prompt suffix | target",
        "eos_token_id": model.eos_id,
        "lora": "merged" if has_lora and merge_lora else ("lora/" if has_lora else "none"),
        "parts": {"llm": "llm/", "encoder": "encoder/", "adapter": "adapter/", "prompts": PROMPTS_FILE if prompts.is_file() else None},
    }
    (out / "export.json").write_text(json.dumps(description, indent=2))
    return description


def _export_whisper(model, out: Path) -> dict:
    """A Whisper model (model.type=whisper) as one Hugging Face Whisper directory, OUT/whisper, with its
    tokenizer and (from the base directory) the feature extractor's settings."""
    whisper_dir = out / "whisper"
    model.whisper.save_pretrained(str(whisper_dir), safe_serialization=True)
    model.tokenizer.save_pretrained(str(whisper_dir))
    if model.config.path and (Path(model.config.path) / "preprocessor_config.json").is_file():
        shutil.copyfile(Path(model.config.path) / "preprocessor_config.json", whisper_dir / "preprocessor_config.json")
    description = {"type": "whisper", "decoder_prefix": model.tokenizer.convert_ids_to_tokens(model.prefix),
                   "eos_token_id": model.eos_id, "parts": {"whisper": "whisper/"}}
    (out / "export.json").write_text(json.dumps(description, indent=2))
    return description
