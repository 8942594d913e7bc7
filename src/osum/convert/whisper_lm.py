"""A Whisper decoder -> a Hugging Face GPT-2 causal LM directory, for a real pretrained LM that installs offline.

Why: osum needs a real pretrained LLM with no download. The bundled Whisper tiny.en
(`bundled_whisper_tiny_en`) carries one: its decoder is a pre-norm Transformer LM over GPT-2's byte-level BPE.
Each decoder block is GPT-2's block plus a cross-attention to the audio between self-attention and MLP
(residual: h += self_attn(ln(h)); h += cross_attn(ln(h), audio); h += mlp(ln(h))). GPT-2 has no
cross-attention, so the converter fixes what it contributes (`cross_attention`):

  "zero-encoder" (default): Whisper's decoder listening to an all-zero encoder output. Every key is then
      k_proj(0) = 0 (k has no bias), the attention is uniform and every value is v_proj's bias b_v, so the
      cross-attention adds the same vector out_proj(b_v) = W_o b_v + b_o at every position: it folds exactly
      into attn.c_proj.bias. Same logits as Whisper's decoder with `encoder_hidden_states=zeros`.
  "drop": no cross-attention at all (Whisper's decoder layer skips it when `encoder_hidden_states=None`).
      Exact too, but the decoder never ran without that vector in its residual stream: measured on English
      sentences it is no language model (9.6-9.9 nats/token; uniform is 10.9; greedy decoding repeats
      <|nocaptions|>), where "zero-encoder" gives 4.6-5.0 (real silence through tiny.en's encoder: 4.2).

Then each block is exactly GPT-2's: pre-norm self-attention and MLP, learned positions, a tied output
projection, attention scaled by head_dim^-0.5, LayerNorm eps 1e-5, the same activation. The directory loads
with `AutoModelForCausalLM` (GPT2LMHeadModel) and gives Whisper's logits to float rounding (Whisper scales
the query before q.k, GPT-2 the product, and "zero-encoder" adds its constant in another order; measured on
tiny.en in float32, logits up to about 35: max |diff| 2e-5 ("drop"), 1e-4 ("zero-encoder"), eager and sdpa
alike; in float64, 0 and 4e-6, the float32 storage of the folded constant).

Its limits: 448 positions (prompt, speech frames and answer together), 4 layers x 384 wide for tiny.en, and
it learned only Whisper's transcripts, always with the audio heard: an English-transcript LM, for wiring
and small experiments, not a general language model.

The names (Whisper, after an optional `model.` prefix -> GPT2LMHeadModel; Linear [out, in] becomes GPT-2's
Conv1D [in, out], i.e. transposed):

  decoder.embed_tokens.weight                   transformer.wte.weight (the tied output projection too)
  decoder.embed_positions.weight                transformer.wpe.weight
  decoder.layers.N.self_attn_layer_norm.*       transformer.h.N.ln_1.*
  decoder.layers.N.self_attn.{q,k,v}_proj.*     transformer.h.N.attn.c_attn.* (q, k, v side by side; k has
                                                no bias in Whisper: zeros, which change no attention weight)
  decoder.layers.N.self_attn.out_proj.*         transformer.h.N.attn.c_proj.*
  decoder.layers.N.encoder_attn.v_proj.bias,    "zero-encoder": out_proj.weight @ v_proj.bias + out_proj.bias
    encoder_attn.out_proj.{weight,bias}         added to transformer.h.N.attn.c_proj.bias
  decoder.layers.N.final_layer_norm.*           transformer.h.N.ln_2.*
  decoder.layers.N.fc1.*, fc2.*                 transformer.h.N.mlp.c_fc.*, mlp.c_proj.*
  decoder.layer_norm.*                          transformer.ln_f.*
  unused: encoder.*, the rest of decoder.layers.N.encoder_attn.* and encoder_attn_layer_norm.* (all of them
  with "drop"), and proj_out.weight when it is a copy of embed_tokens (checked equal)

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
CROSS_ATTENTION = ("zero-encoder", "drop")


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


def map_decoder_state(state: dict[str, torch.Tensor], n_layers: int, where: str, cross_attention: str = "zero-encoder"
                      ) -> tuple[dict[str, torch.Tensor], list[str], dict[str, list[str]]]:
    """Whisper names -> GPT2LMHeadModel names; returns (mapped, unused keys, the Whisper names behind each mapped
    name). An unknown or missing key is a WeightError naming it."""
    if cross_attention not in CROSS_ATTENTION:
        raise ValueError(f"cross_attention {cross_attention!r}: choose one of {', '.join(CROSS_ATTENTION)}")
    original = {k[len("model."):] if k.startswith("model.") else k: k for k in state}  # short name -> as in the file
    state = {short: state[k] for short, k in original.items()}
    prefix = "model." if any(k.startswith("model.") for k in original.values()) else ""
    mapped: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    unused: list[str] = []
    origins: dict[str, list[str]] = {}
    taken: list[str] = []

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise WeightError(f"{where}: the Whisper weights have no {prefix + name!r}")
        used.add(name)
        taken.append(original[name])
        return state[name]

    def put(name: str, tensor: torch.Tensor) -> None:
        mapped[name] = tensor
        origins[name] = origins.get(name, []) + taken
        taken.clear()

    for src, dst in _TOP.items():
        put(dst, take(src))
    for n in range(n_layers):
        p = f"decoder.layers.{n}."
        for src, (dst, transpose) in _BLOCK.items():
            tensor = take(p + src)
            put(f"transformer.h.{n}.{dst}", tensor.T if transpose else tensor)
        q, k, v = (take(f"{p}{name}.weight") for name in _QKV)
        put(f"transformer.h.{n}.attn.c_attn.weight", _cat([q, k, v], where, origin=list(taken)).T)  # Conv1D: [in, 3d]
        q_bias, v_bias = take(p + "self_attn.q_proj.bias"), take(p + "self_attn.v_proj.bias")
        k_bias = take(p + "self_attn.k_proj.bias") if p + "self_attn.k_proj.bias" in state else torch.zeros_like(q_bias)
        put(f"transformer.h.{n}.attn.c_attn.bias", _cat([q_bias, k_bias, v_bias], where, origin=list(taken)))
        if cross_attention == "zero-encoder":  # the constant a zero encoder output makes the cross-attention add
            x = p + "encoder_attn."
            value, weight, bias = take(x + "v_proj.bias"), take(x + "out_proj.weight"), take(x + "out_proj.bias")
            if weight.shape != (bias.shape[0], value.shape[0]):
                raise WeightError(f"{where}: {x}out_proj.weight {tuple(weight.shape)} does not fit v_proj.bias "
                                  f"{tuple(value.shape)} and out_proj.bias {tuple(bias.shape)}")
            constant = (weight.double() @ value.double() + bias.double()).to(bias.dtype)
            name = f"transformer.h.{n}.attn.c_proj.bias"
            if constant.shape != mapped[name].shape:
                raise WeightError(f"{where}: {x}out_proj.bias {tuple(bias.shape)} does not fit "
                                  f"{p}self_attn.out_proj.bias {tuple(mapped[name].shape)}")
            put(name, mapped[name] + constant)
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
    unknown = sorted(original[k] for k in state if k not in used and k not in unused)
    if unknown:
        raise WeightError(f"{where}: weights this converter does not know: {', '.join(unknown[:8])}"
                          + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""))
    return {k: v.contiguous() for k, v in mapped.items()}, [original[k] for k in unused], origins


def _cat(tensors: list[torch.Tensor], where: str, origin: list[str]) -> torch.Tensor:
    if len({t.shape[1:] for t in tensors}) > 1:
        shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
        raise WeightError(f"{where}: wrong shape: {', '.join(origin)} do not fit side by side as q, k, v ({shapes})")
    return torch.cat(tensors, dim=0)


def _check_shapes(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], origins: dict[str, list[str]],
                  where: str) -> None:
    """Each GPT-2 weight's shape as its config says; a wrong one is named by its Whisper weights too."""
    wrong = [f"{', '.join(origins.get(k, []))} (as {k}: {tuple(state[k].shape)} != {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if wrong:
        raise WeightError(f"{where}: wrong shape: {'; '.join(wrong[:5])}")
    check_shapes(expected, state, f"{where} (as GPT-2 names)")


def _read_whisper_state(whisper_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in find_weight_files(whisper_dir):
        state.update(load_state_dict_file(file))
    return state


def convert_whisper_decoder(whisper_dir: str | Path, out: str | Path, cross_attention: str = "zero-encoder",
                            whole_tokens: list[str] | None = None) -> Path:
    """Write OUT as a Hugging Face GPT-2 causal LM directory (config, safetensors, generation config, Whisper's
    tokenizer) from a Hugging Face Whisper directory's decoder; `cross_attention`: "zero-encoder" or "drop"
    (see the module's docstring). `whole_tokens`: strings (label tags such as <male>) the tokenizer gets as one
    token each, placed in the embedding's rows the tokenizer does not use (Whisper's timestamp tokens: 1,501 in
    tiny.en), as osum's utterance embedding needs. OUT must not exist or be empty."""
    from safetensors.torch import save_file
    from transformers import GPT2LMHeadModel, GenerationConfig

    src, out = Path(whisper_dir), Path(out)
    if cross_attention not in CROSS_ATTENTION:
        raise ConversionError(f"cross_attention {cross_attention!r}: choose one of {', '.join(CROSS_ATTENTION)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out} already exists and is not empty: choose a new directory (nothing was written)")
    config_file = src / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{config_file} not found: --whisper is a Hugging Face Whisper directory")
    if not (src / "tokenizer.json").is_file():
        raise ConversionError(f"{src / 'tokenizer.json'} not found: the Whisper directory needs its tokenizer")
    try:
        whisper = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{config_file}: not JSON ({err})") from err
    config = gpt2_config(whisper, str(config_file))
    try:
        state, _unused, origins = map_decoder_state(_read_whisper_state(src), config.n_layer, str(src), cross_attention)
        with torch.device("meta"):
            expected = {k: v for k, v in GPT2LMHeadModel(config).state_dict().items() if k != "lm_head.weight"}
        _check_shapes(expected, state, origins, str(src))
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
        if whole_tokens:
            _add_whole_tokens(tmp, whole_tokens, config.vocab_size)
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _add_whole_tokens(directory: Path, tokens: list[str], rows: int) -> None:
    """Give the tokenizer in `directory` each of `tokens` as one token, within the embedding's `rows`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    tokenizer.add_tokens([t for t in dict.fromkeys(tokens) if t])
    if len(tokenizer) > rows:
        raise ConversionError(f"{len(tokenizer)} tokens with the {len(tokens)} added do not fit the LLM's {rows} "
                              "embedding rows: add fewer")
    tokenizer.save_pretrained(str(directory))
