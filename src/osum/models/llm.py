"""The decoder LLM: any local Hugging Face causal LM directory, or a fresh one built from a config; LoRA by peft."""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
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
    # or an HF config dict (with "model_type") for a fresh LLM; a key its config class lacks is an error
    config: dict[str, Any] | None = None
    tokenizer: str | None = None  # tokenizer directory when it is not `path`
    dtype: str = "float32"  # float32 | bfloat16 | float16
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2 (when installed)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"llm.dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if self.config is not None:
            check_hf_config(self.config, "config")


# Keys every transformers config takes besides its class's own: PretrainedConfig's common settings as
# transformers 4.x wrote them into each config.json, and legacy names transformers 5 converts or drops.
COMMON_HF_CONFIG_KEYS = frozenset({
    "model_type", "transformers_version", "architectures", "name_or_path", "torch_dtype", "dtype", "use_bfloat16",
    "return_dict", "output_hidden_states", "output_attentions", "torchscript", "tf_legacy_loss", "pruned_heads",
    "tie_word_embeddings", "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "add_cross_attention",
    "cross_attention_hidden_size", "tie_encoder_decoder", "finetuning_task", "id2label", "label2id", "num_labels",
    "tokenizer_class", "prefix", "bos_token_id", "pad_token_id", "eos_token_id", "sep_token_id",
    "decoder_start_token_id", "task_specific_params", "problem_type", "attn_implementation",
    "experts_implementation", "per_layer_config", "rope_theta", "rope_scaling", "partial_rotary_factor",
    "quantization_config", "auto_map", "use_cache",
    # generation settings that old config.json files carry (transformers now reads them from generation_config)
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "forced_decoder_ids",
})
# transformers code outside a model's own package that reads optional config keys with getattr
_GENERIC_HF_SOURCES = ("configuration_utils.py", "modeling_utils.py", "modeling_rope_utils.py", "masking_utils.py",
                       "cache_utils.py", "generation/utils.py")
_GETATTR_CONFIG = re.compile(r"getattr\(\s*(?:self\.)?\w*config\w*\s*,\s*[\"'](\w+)[\"']")


def hf_config_class(model_type: Any, where: str) -> type:
    """The transformers config class of a model_type (qwen2, llama, whisper, ...); an unknown one is a ConfigError."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not model_type:
        raise ConfigError(f"{where}.model_type: missing; a transformers config needs one (e.g. qwen2, llama)")
    try:
        return CONFIG_MAPPING[str(model_type)]
    except KeyError:
        close = difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING.keys()), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else " (e.g. qwen2, llama, gpt2)"
        raise ConfigError(f"{where}.model_type: {model_type!r} is not a model type this transformers knows{hint}") from None


@functools.lru_cache(maxsize=None)
def hf_config_keys(config_class: type) -> tuple[frozenset[str], frozenset[str]]:
    """(its own keys, every key it accepts) of a transformers config class. Its own: its arguments, the
    attributes of its defaults, its aliases (attribute_map). Accepted besides: what every config accepts, and the
    keys its model's code reads with getattr (Qwen2's head_dim)."""
    import transformers
    from transformers import PretrainedConfig

    own = set(getattr(config_class, "attribute_map", {}) or {})
    accepted = set(COMMON_HF_CONFIG_KEYS)
    for klass, keys in ((config_class, own), (PretrainedConfig, accepted)):
        keys |= {name for name, p in inspect.signature(klass.__init__).parameters.items()
                 if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        try:
            defaults = klass()
            keys |= set(defaults.to_dict()) | set(vars(defaults))
        except Exception:  # a config that cannot be built without arguments: its signature is what there is
            pass
        keys |= {name for c in klass.__mro__ for name, value in vars(c).items()
                 if isinstance(value, property) and value.fset is not None}
    root = Path(transformers.__file__).parent
    package = root.joinpath(*config_class.__module__.split(".")[1:-1])  # transformers/models/<type>/
    sources = list(package.glob("*.py")) if package != root else []
    for source in sources + [root / name for name in _GENERIC_HF_SOURCES]:
        if source.is_file():
            accepted |= set(_GETATTR_CONFIG.findall(source.read_text(encoding="utf-8", errors="replace")))
    return frozenset(own), frozenset(own | accepted)


def check_hf_config(values: dict[str, Any], where: str, model_type: str | None = None) -> type:
    """Refuse a key the transformers config class would keep without using it (a typo such as `hiden_size` would
    silently build a model of the default size); returns the class. `where` names the dict (e.g. llm.config)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of transformers config keys, got {values!r}")
    config_class = hf_config_class(values.get("model_type", model_type), where)
    if model_type and values.get("model_type", model_type) != model_type:
        raise ConfigError(f"{where}.model_type: {values['model_type']!r}, but only {model_type!r} fits here")
    own, known = hf_config_keys(config_class)
    for key in values:
        if key in known or str(key).startswith("_"):  # underscored keys are transformers' own bookkeeping
            continue
        close = next((found for names in (own, known) if (found := difflib.get_close_matches(
            str(key), sorted(k for k in names if not k.startswith("_")), n=3, cutoff=0.6))), [])
        hint = f"did you mean {' or '.join(close)}?" if close else f"see {config_class.__name__}'s documentation for its keys"
        raise ConfigError(f"{where}.{key}: not a setting of transformers' {config_class.__name__}, which would "
                          f"silently ignore it; {hint}")
    return config_class


def build_llm(c: LLMConfig):
    """A causal LM from a local directory (its weights) or from a config (random weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = DTYPES[c.dtype]
    if c.path:
        path = Path(c.path)
        if not (path / "config.json").is_file():
            raise WeightError(f"LLM directory {path} has no config.json (a local Hugging Face causal LM is needed)")
        from safetensors import SafetensorError

        try:
            model, info = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=dtype, local_files_only=True, attn_implementation=c.attn_implementation,
                output_loading_info=True,
            )
        except SafetensorError as err:
            raise WeightError(f"LLM directory {path}: a weight file cannot be read ({err}); it is probably "
                              "incomplete (an interrupted copy or save): copy the directory again") from err
        except OSError as err:
            raise WeightError(f"LLM directory {path}: {err}") from err
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
        check_hf_config(c.config, "llm.config")  # again: the config may have changed since it was built
        config = dict(c.config)
        hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
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
    from transformers.pytorch_utils import Conv1D

    # GPT-2-style layers (Conv1D) store their weight transposed; peft must be told (else it warns and fixes it)
    transposed = any(isinstance(module, Conv1D) and name.rsplit(".", 1)[-1] in c.target_modules
                     for name, module in model.named_modules())
    peft_config = PeftLoraConfig(
        r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout, target_modules=list(c.target_modules),
        task_type="CAUSAL_LM", fan_in_fan_out=transposed,
    )
    return get_peft_model(model, peft_config)


def merged_llm(model):
    """The LLM with its LoRA weights merged in, as a plain HF model (a copy; the model itself when it has no LoRA):
    what `osum export --merge-lora` writes and the vLLM engine runs."""
    if not hasattr(model, "peft_config"):
        return model
    import copy

    return copy.deepcopy(model).merge_and_unload()


def base_model(model):
    """The plain HF model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
