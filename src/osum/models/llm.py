"""The decoder LLM: any local Hugging Face causal LM directory, or a fresh one built from a config; LoRA by peft."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .weights import WeightError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraConfig:
    """peft LoRA settings; OSUM's defaults."""

    enabled: bool = False  # wrap the LLM with peft LoRA adapters
    r: int = 8  # LoRA rank
    alpha: int = 32  # scaling: the update is (alpha / r) * B A
    dropout: float = 0.1  # dropout on the LoRA input
    # LLM linear layers that get LoRA (names inside each decoder layer)
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]
    )


@dataclass
class LLMConfig:
    path: str | None = None  # a local HF causal LM directory (weights + config + tokenizer)
    config: dict[str, Any] | None = None  # or an HF config dict (with "model_type") for a fresh LLM
    tokenizer: str | None = None  # tokenizer directory when it is not `path`
    dtype: str = "float32"  # float32 | bfloat16 | float16
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2 (when installed)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"llm.dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")


def build_llm(c: LLMConfig):
    """A causal LM from a local directory (its weights) or from a config (random weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = DTYPES[c.dtype]
    if c.path:
        path = Path(c.path)
        if not (path / "config.json").is_file():
            raise WeightError(f"LLM directory {path} has no config.json (a local Hugging Face causal LM is needed)")
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, local_files_only=True, attn_implementation=c.attn_implementation,
            output_loading_info=True,
        )
        # transformers only warns and initializes missing weights at random: a silently random LLM is
        # exactly the failure osum exists to prevent, so any mismatch is an error here.
        missing = [k for k in info.get("missing_keys", []) if not k.endswith("lm_head.weight") or
                   not getattr(model.config, "tie_word_embeddings", False)]
        unexpected = list(info.get("unexpected_keys", []))
        mismatched = [str(m[0]) if isinstance(m, (tuple, list)) else str(m) for m in info.get("mismatched_keys", [])]
        if missing or unexpected or mismatched:
            details = "; ".join(f"{label}: {', '.join(sorted(keys)[:5])}" for label, keys in
                                (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)) if keys)
            raise WeightError(f"LLM weights in {path} do not match its config ({details})")
    elif c.config:
        config = dict(c.config)
        model_type = config.pop("model_type", None)
        if not model_type:
            raise WeightError("llm.config needs a model_type (e.g. qwen2, llama)")
        hf_config = AutoConfig.for_model(model_type, **config)
        hf_config._attn_implementation = c.attn_implementation
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    else:
        raise WeightError("the model needs llm.path (a local HF causal LM directory) or llm.config")
    if c.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model


def load_tokenizer(path: str | Path):
    """A local tokenizer; its pad token falls back to its end-of-sequence token."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise WeightError(f"tokenizer directory not found: {path}")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def apply_lora(model, c: LoraConfig):
    """Wrap the LLM with LoRA adapters (peft); only the LoRA weights train."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in c.target_modules if m not in present]
    if missing:
        raise ValueError(f"lora.target_modules {missing} are not modules of this LLM (it has e.g. {sorted(present)[:12]})")
    peft_config = PeftLoraConfig(
        r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout, target_modules=list(c.target_modules), task_type="CAUSAL_LM"
    )
    return get_peft_model(model, peft_config)


def base_model(model):
    """The plain HF model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
