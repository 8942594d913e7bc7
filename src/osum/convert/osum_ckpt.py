"""OSUM's released checkpoint (infer.pt: WeNet Whisper-medium + conv/transformer adapter + Qwen2-7B with
LoRA) -> an osum model directory.

Every key of the checkpoint is mapped explicitly or named as unused; an unmapped, missing or wrongly shaped
key is an error naming it. The LLM directory given gives the LLM's config and tokenizer; all weights come
from the checkpoint. The names, as OSUM writes them:

  encoder.embed.conv.{0,2}.*                 Whisper's two convolutions
  encoder.embed.pos_enc.pe [1, T, d]         Whisper's position table
  encoder.encoders.N.self_attn.linear_{q,k,v,out}.*   attention (linear_k has no bias)
  encoder.encoders.N.norm{1,2}.*, feed_forward.w_{1,2}.*, encoder.after_norm.*
  down_sample_2.conv.{1,4,7}.*               the adapter's three causal Conv1d (strides 1, 2, 2)
  speech_transformer.embed.out.{0,1}.*       its input Linear and LayerNorm; embed.pos_enc.pe its positions
  speech_transformer.encoders.N.*            its blocks (named as the encoder's), after_norm.*
  speech_llama_proj.*                        the projection to the LLM width
  llama_model.base_model.model.<Qwen2 name>  the LLM, with peft LoRA (base_layer, lora_A/B.default)
  speech_token_emded.weight [4099, hidden]   rows 4097 and 4098: the audio begin / end embeddings
  unused: ln_speech.*, speaker_head.*, the other rows of speech_token_emded; embed_tokens.weight and
  lm_head.weight at the top level are copies of the LLM's own (checked equal, then dropped)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..config import ConfigError
from ..models.adapter import AdapterConfig
from ..models.llm import LLMConfig, LoraConfig, load_tokenizer
from ..models.speech_llm import EncoderConfig, GenerationConfig, SpeechLLM, SpeechLLMConfig, TrainableConfig
from ..models.weights import WeightError, check_shapes, load_state_dict_file
from ..models.whisper import WhisperEncoderConfig

LLM_PREFIX = "llama_model."  # + peft's base_model.model.<HF name>: osum's "llm." + the same
AUDIO_MARKER_ROWS = (4097, 4098)  # begin / end of audio in speech_token_emded
OSUM_EOS = "<|endoftext|>"  # token 151643 in Qwen2's tokenizer: OSUM's end of text
OSUM_ADAPTER_HEADS = 4  # OSUM's speech_transformer: attention_heads=4 (not recoverable from shapes)
UNUSED_PREFIXES = ("ln_speech.", "speaker_head.")
# OSUM builds its LLM in bfloat16 and casts the speech to it: the converted model does the same by default (float32
# doubles the memory, about 30 GB for Qwen2-7B, and its greedy output parts from OSUM's within a few tokens).
OSUM_LLM_DTYPE = "bfloat16"
# OSUM's generate allows 400 new tokens; the converted model's default budget is the same (its longest outputs,
# a transcript followed by labels or a chat reply, must not be cut), decoding stays deterministic by default.
OSUM_MAX_NEW_TOKENS = 400

# WeNet block names (after "encoders.N.") -> osum's, for the Whisper encoder and for the adapter.
_ENCODER_BLOCK = {
    "self_attn.linear_q.weight": "attn.query.weight", "self_attn.linear_q.bias": "attn.query.bias",
    "self_attn.linear_k.weight": "attn.key.weight",
    "self_attn.linear_v.weight": "attn.value.weight", "self_attn.linear_v.bias": "attn.value.bias",
    "self_attn.linear_out.weight": "attn.out.weight", "self_attn.linear_out.bias": "attn.out.bias",
    "norm1.weight": "attn_norm.weight", "norm1.bias": "attn_norm.bias",
    "norm2.weight": "mlp_norm.weight", "norm2.bias": "mlp_norm.bias",
    "feed_forward.w_1.weight": "fc1.weight", "feed_forward.w_1.bias": "fc1.bias",
    "feed_forward.w_2.weight": "fc2.weight", "feed_forward.w_2.bias": "fc2.bias",
}
_ADAPTER_BLOCK = {
    "self_attn.linear_q.weight": "query.weight", "self_attn.linear_q.bias": "query.bias",
    "self_attn.linear_k.weight": "key.weight", "self_attn.linear_k.bias": "key.bias",
    "self_attn.linear_v.weight": "value.weight", "self_attn.linear_v.bias": "value.bias",
    "self_attn.linear_out.weight": "out.weight", "self_attn.linear_out.bias": "out.bias",
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "feed_forward.w_1.weight": "w1.weight", "feed_forward.w_1.bias": "w1.bias",
    "feed_forward.w_2.weight": "w2.weight", "feed_forward.w_2.bias": "w2.bias",
}


def _count_blocks(state: dict, prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if found != set(range(len(found))):
        raise WeightError(f"blocks under {prefix} are not numbered 0..N-1: {sorted(found)}")
    return len(found)


def map_osum_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """OSUM names -> osum SpeechLLM names (with a peft-wrapped LLM); returns (mapped, unused keys)."""
    mapped: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(src: str, dst: str, transform=lambda t: t) -> None:
        if src not in state:
            raise WeightError(f"the OSUM checkpoint has no {src!r}")
        mapped[dst] = transform(state[src])
        used.add(src)

    for i, j in ((0, 1), (2, 2)):
        for p in ("weight", "bias"):
            take(f"encoder.embed.conv.{i}.{p}", f"encoder.conv{j}.{p}")
    take("encoder.embed.pos_enc.pe", "encoder.positions", lambda t: t.reshape(t.shape[-2], t.shape[-1]))
    for n in range(_count_blocks(state, "encoder.encoders.")):
        for src, dst in _ENCODER_BLOCK.items():
            take(f"encoder.encoders.{n}.{src}", f"encoder.blocks.{n}.{dst}")
    for p in ("weight", "bias"):
        take(f"encoder.after_norm.{p}", f"encoder.final_norm.{p}")

    for conv, index in enumerate((1, 4, 7)):
        for p in ("weight", "bias"):
            take(f"down_sample_2.conv.{index}.{p}", f"adapter.convs.{conv}.conv.{p}")
    for p in ("weight", "bias"):
        take(f"speech_transformer.embed.out.0.{p}", f"adapter.input_linear.{p}")
        take(f"speech_transformer.embed.out.1.{p}", f"adapter.input_norm.{p}")
        take(f"speech_transformer.after_norm.{p}", f"adapter.final_norm.{p}")
        take(f"speech_llama_proj.{p}", f"adapter.project.{p}")
    take("speech_transformer.embed.pos_enc.pe", "adapter.positions", lambda t: t.reshape(t.shape[-2], t.shape[-1]))
    for n in range(_count_blocks(state, "speech_transformer.encoders.")):
        for src, dst in _ADAPTER_BLOCK.items():
            take(f"speech_transformer.encoders.{n}.{src}", f"adapter.blocks.{n}.{dst}")

    take("speech_token_emded.weight", "audio_markers", lambda t: t[list(AUDIO_MARKER_ROWS)].clone())
    for key in state:
        if key.startswith(LLM_PREFIX):
            mapped["llm." + key[len(LLM_PREFIX):]] = state[key]
            used.add(key)
    llm_own = {"embed_tokens.weight": "llm.base_model.model.model.embed_tokens.weight",
               "lm_head.weight": "llm.base_model.model.lm_head.weight"}
    for alias, own in llm_own.items():
        if alias in state:
            if own not in mapped or not torch.equal(state[alias], mapped[own]):
                raise WeightError(f"the OSUM checkpoint's {alias!r} is not a copy of the LLM's own ({own}): "
                                  "cannot tell which to use")
            used.add(alias)
    unused = [k for k in state if k not in used and k.startswith(UNUSED_PREFIXES)]
    unknown = [k for k in state if k not in used and k not in unused]
    if unknown:
        raise WeightError(f"the OSUM checkpoint has keys osum does not know: {', '.join(sorted(unknown)[:8])}"
                          + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""))
    return mapped, unused


def osum_config(state: dict[str, torch.Tensor], whisper_config: dict, llm_dir: Path, lora_alpha: int,
                dtype: str = OSUM_LLM_DTYPE) -> SpeechLLMConfig:
    """The osum config of the checkpoint: encoder from the Whisper config, adapter and LoRA from the shapes."""
    conv = state["down_sample_2.conv.1.weight"]
    lora_a = {k: v for k, v in state.items() if k.startswith(LLM_PREFIX) and k.endswith("lora_A.default.weight")}
    targets = sorted({k.split(".lora_A.")[0].rsplit(".", 1)[-1] for k in lora_a})
    ranks = {int(v.shape[0]) for v in lora_a.values()}
    if len(ranks) > 1:
        raise WeightError(f"LoRA ranks differ between layers ({sorted(ranks)}): osum keeps one rank")
    llm_file = llm_dir / "config.json"
    try:
        llm = LLMConfig(config=json.loads(llm_file.read_text()), tokenizer=str(llm_dir), dtype=dtype)
    except (ConfigError, ValueError) as err:
        raise WeightError(f"{llm_file}: {err}") from err
    return SpeechLLMConfig(
        encoder=EncoderConfig(config=WhisperEncoderConfig.from_hf(whisper_config)),
        adapter=AdapterConfig(
            type="osum", input_dim=int(conv.shape[1]), output_dim=int(state["speech_llama_proj.weight"].shape[0]),
            conv_strides=[1, 2, 2], model_dim=int(state["speech_transformer.embed.out.0.weight"].shape[0]),
            n_layers=_count_blocks(state, "speech_transformer.encoders."), n_heads=OSUM_ADAPTER_HEADS,
            ffn_dim=int(state["speech_transformer.encoders.0.feed_forward.w_1.weight"].shape[0]),
            max_positions=int(state["speech_transformer.embed.pos_enc.pe"].shape[-2]),
        ),
        llm=llm,
        lora=LoraConfig(enabled=bool(lora_a), r=ranks.pop() if ranks else 8, alpha=lora_alpha, dropout=0.0,
                        target_modules=targets or LoraConfig().target_modules),
        trainable=TrainableConfig(encoder=True, adapter=True, llm=True, lora=True),
        prompt_layout="plain",  # OSUM: prompt text, audio, target; no chat template
        # deterministic; OSUM's own settings are the `osum` decoding preset (osum.infer.presets)
        generation=GenerationConfig(max_new_tokens=OSUM_MAX_NEW_TOKENS),
    )


def convert_osum_checkpoint(ckpt: str | Path, whisper_config_dir: str | Path, llm_dir: str | Path, out: str | Path,
                            merge: bool = False, lora_alpha: int = 32, dtype: str = OSUM_LLM_DTYPE,
                            prompts: str | Path | None = None) -> Path:
    """Write an osum model directory from OSUM's checkpoint. `dtype`: the LLM's number format (bfloat16, as OSUM
    runs it; float32 keeps full precision at twice the memory). `prompts`: OSUM's prompt_config.yaml, installed as
    the model's prompts (without it the model gets osum's packaged prompts: `conversion_notes` says so)."""
    from ..models.checkpoint import save_model
    from ..prompt_set import load_prompts

    whisper_file = Path(whisper_config_dir) / "config.json"
    if not whisper_file.is_file():
        raise WeightError(f"{whisper_file} not found: --whisper-config is a directory with Whisper-medium's config.json")
    llm_dir = Path(llm_dir)
    if not (llm_dir / "config.json").is_file():
        raise WeightError(f"{llm_dir / 'config.json'} not found: --llm is the Qwen2 directory (config and tokenizer)")
    prompt_set = load_prompts(prompts) if prompts else None  # a broken prompt file fails before any weight is read
    state = load_state_dict_file(ckpt)
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        config = osum_config(state, json.loads(whisper_file.read_text()), llm_dir, lora_alpha, dtype)
    except KeyError as err:
        raise WeightError(f"{ckpt}: not an OSUM checkpoint (no {err.args[0]!r})") from None
    mapped, _unused = map_osum_state(state)
    del state  # the mapped dict holds the same tensors; nothing else may keep a second reference
    tokenizer = load_tokenizer(llm_dir)
    if OSUM_EOS not in tokenizer.get_vocab():
        raise WeightError(f"{llm_dir}: the tokenizer has no {OSUM_EOS!r}, OSUM's end of text")
    tokenizer.eos_token = OSUM_EOS
    model = SpeechLLM.build(config, tokenizer=tokenizer)  # the LLM is built in `dtype` itself: no float32 copy
    check_shapes(model.state_dict(), mapped, f"{ckpt} (as osum names)")
    model.load_state_dict(mapped, strict=True)  # copies into the built tensors, casting to their dtype
    del mapped
    if prompt_set is not None:
        model.prompts = prompt_set
    return save_model(model.eval(), out, standalone=merge)  # merged LoRA: a standalone directory


def conversion_notes(prompts: str | Path | None) -> list[str]:
    """What a user must know about a converted OSUM model that the directory cannot say by itself."""
    if prompts:
        return [f"prompts: {prompts} (OSUM's own prompts, installed as the model's prompts.yaml)"]
    from ..prompt_set import DEFAULT_PROMPTS

    return [f"no --prompts given: the model uses osum's packaged prompts ({DEFAULT_PROMPTS}), which OSUM never "
            "trained on; give OSUM's prompt_config.yaml with --prompts (or replace prompts.yaml in the model "
            "directory) to decode with the prompts the release was trained with"]
