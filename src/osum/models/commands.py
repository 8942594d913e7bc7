"""The `osum model` commands as plain functions: build an untrained model directory, train a tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _read_json(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read JSON config {path}: {err}") from err


def init_model(
    out: str,
    encoder: str | None = None,
    encoder_config: str | None = None,
    pad_to_30s: bool = False,
    llm: str | None = None,
    llm_config: str | None = None,
    tokenizer: str | None = None,
    adapter: str = "osum",
    lora: bool = False,
    dtype: str = "float32",
    prompt_layout: str = "auto",
    prompts: str | None = None,
) -> dict[str, Any]:
    """Write an untrained model directory from an encoder (HF Whisper dir or JSON config) and an LLM (dir or JSON).

    A fresh LLM (from `llm_config`) is trainable; a pretrained one stays frozen. Returns the parameter counts.
    """
    from ..config import from_dict
    from .adapter import AdapterConfig
    from .checkpoint import save_model
    from .llm import LLMConfig, LoraConfig
    from .speech_llm import EncoderConfig, SpeechLLM, SpeechLLMConfig, TrainableConfig
    from .whisper import WhisperEncoderConfig

    encoder_part = EncoderConfig(
        path=encoder,
        config=from_dict(WhisperEncoderConfig, _read_json(encoder_config)) if encoder_config else None,
        pad_to_30s=pad_to_30s,
    )
    if not (encoder or encoder_config):
        raise ValueError("give --encoder DIR (a Hugging Face Whisper directory) or --encoder-config JSON")
    if not (llm or llm_config):
        raise ValueError("give --llm DIR (a Hugging Face causal LM directory) or --llm-config JSON (with --tokenizer)")
    llm_part = LLMConfig(path=llm, config=_read_json(llm_config) if llm_config else None, tokenizer=tokenizer,
                         dtype=dtype)
    config = SpeechLLMConfig(
        encoder=encoder_part,
        adapter=AdapterConfig(type=adapter),
        llm=llm_part,
        lora=LoraConfig(enabled=lora),
        trainable=TrainableConfig(llm=not llm),  # a fresh LLM must train; a pretrained one stays frozen
        prompt_layout=prompt_layout,
    )
    model = SpeechLLM.build(config)
    written = save_model(model, out, prompts_file=prompts)
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in
              (("encoder", model.encoder), ("adapter", model.adapter), ("llm", model.llm))}
    return {"model": str(written), "layout": model.layout, "parameters": counts,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def train_tokenizer(manifests: list[str], out: str, vocab_size: int = 1000, prompts: str | None = None,
                    chat: bool = False) -> dict[str, Any]:
    """Train a byte-level BPE tokenizer on the manifests' transcripts; the prompt file's label tags become whole tokens."""
    from ..data.manifest import read_manifest
    from ..prompt_set import load_prompts
    from .tokenizer import train_bpe_tokenizer

    texts = [s.text for src in manifests for s in read_manifest(src) if s.text]
    if not texts:
        raise ValueError(f"no transcripts in {', '.join(manifests)}: a tokenizer needs text to learn from")
    prompt_set = load_prompts(prompts)
    # Label tags are whole tokens; the prompts become few tokens if the tokenizer sees them often enough.
    tags = [f"<{label}>" for values in prompt_set.labels.values() for label in values]
    extra = [p for choices in prompt_set.prompts.values() for p in choices] * 5
    tokenizer = train_bpe_tokenizer(texts + extra, out, vocab_size, chat=chat, whole_tokens=tags)
    return {"tokenizer": out, "vocab_size": len(tokenizer), "transcripts": len(texts)}
