"""A Whisper decoder without its cross-attention -> a Hugging Face GPT-2 causal LM directory.

Why: osum needs a real pretrained LLM that installs offline. The bundled Whisper tiny.en
(`bundled_whisper_tiny_en`) carries one: its decoder is a pre-norm Transformer LM over GPT-2's byte-level
BPE. Without the cross-attention (Whisper's decoder layer skips it when no encoder states are given), each
block is exactly GPT-2's: pre-norm self-attention and MLP, learned positions, a tied output projection,
attention scaled by head_dim^-0.5, LayerNorm eps 1e-5. So the converted directory loads with
`AutoModelForCausalLM` (GPT2LMHeadModel) and gives the same logits as Whisper's decoder run with
`encoder_hidden_states=None` (to float rounding: Whisper scales the query before q.k, GPT-2 the product).

Its limits: 448 positions (prompt, speech frames and answer together), 4 layers x 384 wide for tiny.en,
and it learned only Whisper's transcripts, always read with the audio through the cross-attention that is
dropped here: an English-transcript LM, for wiring and small experiments, not a general language model.

The names (Whisper, after an optional `model.` prefix -> GPT2LMHeadModel; Linear [out, in] becomes GPT-2's
Conv1D [in, out], i.e. transposed):

  decoder.embed_tokens.weight                   transformer.wte.weight (the tied output projection too)
  decoder.embed_positions.weight                transformer.wpe.weight
  decoder.layers.N.self_attn_layer_norm.*       transformer.h.N.ln_1.*
  decoder.layers.N.self_attn.{q,k,v}_proj.*     transformer.h.N.attn.c_attn.* (q, k, v side by side; k has
                                                no bias in Whisper: zeros, which change no attention weight)
  decoder.layers.N.self_attn.out_proj.*         transformer.h.N.attn.c_proj.*
  decoder.layers.N.final_layer_norm.*           transformer.h.N.ln_2.*
  decoder.layers.N.fc1.*, fc2.*                 transformer.h.N.mlp.c_fc.*, mlp.c_proj.*
  decoder.layer_norm.*                          transformer.ln_f.*
  unused: encoder.*, decoder.layers.N.encoder_attn.*, decoder.layers.N.encoder_attn_layer_norm.*, and
  proj_out.weight when it is a copy of embed_tokens (checked equal)

Every weight is mapped or named unused; an unknown, missing or wrongly shaped one is an error naming it.
The tokenizer is Whisper's own (tokenizer.json, WhisperTokenizer; end of text, padding, bos and unk all
`<|endoftext|>`). With add_special_tokens it wraps text as the decoder saw it in training,
`<|startoftranscript|><|notimestamps|> text <|endoftext|>`; osum tokenizes without them.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import torch

from ..models.weights import WeightError, check_shapes, find_weight_files, load_state_dict_file
from .ct2_whisper import ConversionError

EOT = "<|endoftext|>"
_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")
# Per decoder layer: Whisper name -> (GPT-2 name, transpose). The attention's q/k/v are fused apart (below).
_BLOCK = {
    "self_attn_layer_norm.weight": ("ln_1.weight", False), "self_attn_layer_norm.bias": ("ln_1.bias", False),
    "self_attn.out_proj.weight": ("attn.c_proj.weight", True), "self_attn.out_proj.bias": ("attn.c_proj.bias", False),
    "final_layer_norm.weight": ("ln_2.weight", False), "final_layer_norm.bias": ("ln_2.bias", False),
    "fc1.weight": ("mlp.c_fc.weight", True), "fc1.bias": ("mlp.c_fc.bias", False),
    "fc2.weight": ("mlp.c_proj.weight", True), "fc2.bias": ("mlp.c_proj.bias", False),
}
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_TOP = {
    "decoder.embed_tokens.weight": "transformer.wte.weight",
    "decoder.embed_positions.weight": "transformer.wpe.weight",
    "decoder.layer_norm.weight": "transformer.ln_f.weight",
    "decoder.layer_norm.bias": "transformer.ln_f.bias",
}
_UNUSED_IN_LAYER = ("encoder_attn.", "encoder_attn_layer_norm.")


def gpt2_config(whisper: dict, where: str):
    """The GPT2Config of a Whisper config's decoder; what GPT-2 cannot express is a ConversionError."""
    from transformers import GPT2Config
    from transformers.activations import ACT2FN

    if whisper.get("model_type") != "whisper":
        raise ConversionError(f"{where}: model_type {whisper.get('model_type')!r}, not a Whisper config")
    if whisper.get("scale_embedding", False):
        raise ConversionError(f"{where}: scale_embedding is true: GPT-2 cannot scale the token embedding without "
                              "scaling its tied output projection too")
    activation = whisper.get("activation_function", "gelu")
    if activation not in ACT2FN:
        raise ConversionError(f"{where}: activation_function {activation!r} is not one transformers knows")
    try:
        d, heads = int(whisper["d_model"]), int(whisper["decoder_attention_heads"])
        eot = whisper.get("eos_token_id", 50256)
        return GPT2Config(
            vocab_size=int(whisper["vocab_size"]), n_positions=int(whisper["max_target_positions"]), n_embd=d,
            n_layer=int(whisper["decoder_layers"]), n_head=heads, n_inner=int(whisper["decoder_ffn_dim"]),
            activation_function=activation, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            layer_norm_epsilon=1e-5,  # Whisper's nn.LayerNorm default
            scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
            bos_token_id=eot, eos_token_id=eot, pad_token_id=whisper.get("pad_token_id", eot),
            tie_word_embeddings=True, architectures=["GPT2LMHeadModel"],
        )
    except KeyError as err:
        raise ConversionError(f"{where}: no {err.args[0]!r}: not a Whisper config") from None


def map_decoder_state(state: dict[str, torch.Tensor], n_layers: int, where: str
                      ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Whisper names -> GPT2LMHeadModel names; returns (mapped, unused keys). Unknown keys are a WeightError."""
    state = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state.items()}
    mapped: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    unused: list[str] = []

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise WeightError(f"{where}: the Whisper weights have no {name!r}")
        used.add(name)
        return state[name]

    for src, dst in _TOP.items():
        mapped[dst] = take(src)
    for n in range(n_layers):
        p = f"decoder.layers.{n}."
        for src, (dst, transpose) in _BLOCK.items():
            tensor = take(p + src)
            mapped[f"transformer.h.{n}.{dst}"] = tensor.T if transpose else tensor
        q, k, v = (take(f"{p}{name}.weight") for name in _QKV)
        mapped[f"transformer.h.{n}.attn.c_attn.weight"] = torch.cat([q, k, v], dim=0).T  # Conv1D: [in, 3 * d]
        q_bias, v_bias = take(p + "self_attn.q_proj.bias"), take(p + "self_attn.v_proj.bias")
        k_bias = take(p + "self_attn.k_proj.bias") if p + "self_attn.k_proj.bias" in state else torch.zeros_like(q_bias)
        mapped[f"transformer.h.{n}.attn.c_attn.bias"] = torch.cat([q_bias, k_bias, v_bias])
    if "proj_out.weight" in state:
        if not torch.equal(state["proj_out.weight"], state.get("decoder.embed_tokens.weight")):
            raise WeightError(f"{where}: proj_out.weight is not a copy of decoder.embed_tokens.weight: an untied "
                              "output projection is not supported")
        used.add("proj_out.weight")
        unused.append("proj_out.weight")
    for key in state:
        if key in used:
            continue
        layer = _LAYER.fullmatch(key)
        if key.startswith("encoder.") or (layer and int(layer.group(1)) < n_layers
                                          and layer.group(2).startswith(_UNUSED_IN_LAYER)):
            unused.append(key)
    unknown = sorted(k for k in state if k not in used and k not in unused)
    if unknown:
        raise WeightError(f"{where}: weights this converter does not know: {', '.join(unknown[:8])}"
                          + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""))
    return {k: v.contiguous() for k, v in mapped.items()}, unused


def _read_whisper_state(whisper_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in find_weight_files(whisper_dir):
        state.update(load_state_dict_file(file))
    return state


def convert_whisper_decoder(whisper_dir: str | Path, out: str | Path) -> Path:
    """Write OUT as a Hugging Face GPT-2 causal LM directory (config, safetensors, generation config, Whisper's
    tokenizer) from a Hugging Face Whisper directory's decoder. OUT must not exist or be empty."""
    from safetensors.torch import save_file
    from transformers import GPT2LMHeadModel, GenerationConfig

    src, out = Path(whisper_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out} already exists and is not empty: choose a new directory (nothing was written)")
    config_file = src / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{config_file} not found: --whisper is a Hugging Face Whisper directory")
    for name in ("tokenizer.json",):
        if not (src / name).is_file():
            raise ConversionError(f"{src / name} not found: the Whisper directory needs its tokenizer")
    try:
        whisper = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{config_file}: not JSON ({err})") from err
    config = gpt2_config(whisper, str(config_file))
    try:
        state, _unused = map_decoder_state(_read_whisper_state(src), config.n_layer, str(src))
        with torch.device("meta"):
            expected = {k: v for k, v in GPT2LMHeadModel(config).state_dict().items() if k != "lm_head.weight"}
        check_shapes(expected, state, f"{src} (as GPT-2 names)")
    except WeightError as err:
        raise ConversionError(str(err)) from err

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        config.save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                         pad_token_id=config.pad_token_id).save_pretrained(tmp)
        shutil.copyfile(src / "tokenizer.json", tmp / "tokenizer.json")
        (tmp / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "WhisperTokenizer", "model_max_length": config.n_positions,
            "bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT,
            "clean_up_tokenization_spaces": False,
        }, indent=2))
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
