"""A Whisper encoder that runs on each utterance's real frames, and loads Hugging Face Whisper weights.

Whisper's encoder is a conv stem (two Conv1d, the second with stride 2), sinusoidal positions and a stack of
pre-norm transformer blocks. Whisper itself always pads audio to 30 s; here the positions are sliced to the
input's length and a key-padding mask keeps utterances in a batch apart, which is 10x+ cheaper for short
clips. A model trained on padded input behaves differently on unpadded input: see DESIGN.md, and use
`pad_to_30s` features (osum.audio) to get Whisper's exact behaviour from a frozen pretrained encoder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .weights import WeightError, load_state_dict_file, find_weight_files


@dataclass
class WhisperEncoderConfig:
    n_mels: int = 80
    d_model: int = 384
    n_heads: int = 6
    n_layers: int = 4
    ffn_dim: int = 1536
    max_positions: int = 1500  # encoder frames after the stride-2 conv: 30 s

    @classmethod
    def from_hf(cls, hf: dict) -> "WhisperEncoderConfig":
        """From a Hugging Face WhisperConfig dict (config.json)."""
        return cls(
            n_mels=hf["num_mel_bins"],
            d_model=hf["d_model"],
            n_heads=hf["encoder_attention_heads"],
            n_layers=hf["encoder_layers"],
            ffn_dim=hf["encoder_ffn_dim"],
            max_positions=hf.get("max_source_positions", 1500),
        )


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's sinusoidal position table [length, channels] (sin half, then cos half)."""
    log_increment = torch.log(torch.tensor(max_timescale)) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_increment * torch.arange(channels // 2))
    scaled = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


def encoder_lengths(feature_lengths: torch.Tensor) -> torch.Tensor:
    """Frames after the stride-2 conv (kernel 3, padding 1): ceil(T / 2)."""
    return (feature_lengths - 1) // 2 + 1


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B, max_len] True on real frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class SelfAttention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention, with a key-padding mask."""

    def __init__(self, d_model: int, n_heads: int, key_bias: bool = False):
        super().__init__()
        self.n_heads = n_heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model, bias=key_bias)  # Whisper's key projection has no bias
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        heads = lambda y: y.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        mask = None if keep is None else keep[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)) with GELU."""

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int):
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads)
        self.mlp_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), keep)
        return x + self.fc2(F.gelu(self.fc1(self.mlp_norm(x))))


class WhisperEncoder(nn.Module):
    """features [B, T, n_mels] + lengths [B] -> hidden states [B, ceil(T/2), d_model] + their lengths."""

    def __init__(self, config: WhisperEncoderConfig):
        super().__init__()
        self.config = config
        c = config
        self.conv1 = nn.Conv1d(c.n_mels, c.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(c.d_model, c.d_model, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positions", sinusoids(c.max_positions, c.d_model), persistent=True)
        self.blocks = nn.ModuleList(EncoderBlock(c.d_model, c.n_heads, c.ffn_dim) for _ in range(c.n_layers))
        self.final_norm = nn.LayerNorm(c.d_model)

    @property
    def max_frames(self) -> int:
        """The longest input in feature frames (30 s for Whisper)."""
        return self.config.max_positions * 2

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, out_lengths = self._run(features, lengths, keep_layers=False)
        return hidden[-1], out_lengths

    def forward_layers(self, features: torch.Tensor, lengths: torch.Tensor | None = None
                       ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every block's output [B, ceil(T/2), d_model] (the last one after the final norm: what `forward` returns)
        and their lengths. Lower blocks carry more of who speaks and how (the utterance embedding pools them all)."""
        return self._run(features, lengths, keep_layers=True)

    def _run(self, features: torch.Tensor, lengths: torch.Tensor | None, keep_layers: bool
             ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The blocks' outputs (all of them, or the last alone: holding every block costs memory) and lengths."""
        b, t, _ = features.shape
        if t > self.max_frames:
            raise ValueError(f"{t} feature frames exceed the encoder's window of {self.max_frames} (30 s): split the audio")
        if lengths is None:
            lengths = torch.full((b,), t, device=features.device, dtype=torch.long)
        keep_in = length_mask(lengths, t)
        x = features.transpose(1, 2) * keep_in[:, None, :].to(features.dtype)
        x = F.gelu(self.conv1(x))
        # Zero the frames past each end, so conv2 sees at an utterance's edge what it would see alone.
        x = x * keep_in[:, None, :].to(x.dtype)
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        out_lengths = encoder_lengths(lengths)
        x = x + self.positions[: x.shape[1]].to(x.dtype)
        keep = length_mask(out_lengths, x.shape[1])
        all_real = bool(keep.all())
        outputs = []
        for block in self.blocks:
            x = block(x, None if all_real else keep)
            if keep_layers:
                outputs.append(x)
        outputs[-1:] = [self.final_norm(x)]
        return outputs, out_lengths

    # ----------------------------------------------------------------------------------- Hugging Face weights
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "WhisperEncoder":
        """Load from a HF WhisperModel / WhisperForConditionalGeneration / WhisperEncoder directory, strictly."""
        path = Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise WeightError(f"{path}: no config.json; expected a Hugging Face Whisper directory")
        try:
            hf = json.loads(config_file.read_text(encoding="utf-8"))
            encoder_config = WhisperEncoderConfig.from_hf(hf)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise WeightError(f"{config_file}: cannot read it ({err}); copy the Whisper directory again") from err
        except (KeyError, TypeError, AttributeError) as err:
            raise WeightError(f"{config_file}: not a Whisper config (no {err}); expected a Hugging Face "
                              "WhisperConfig with num_mel_bins, d_model, encoder_layers, ...") from err
        encoder = cls(encoder_config)
        state = {}
        for file in find_weight_files(path):
            state.update(load_state_dict_file(file))
        encoder.load_state_dict(map_hf_encoder_keys(state, encoder.config.n_layers, str(path)))
        return encoder.to(dtype)

    def config_dict(self) -> dict:
        return asdict(self.config)


# HF name (after the encoder prefix) -> osum name; `{i}` is the layer index.
_HF_LAYER_KEYS = {
    "self_attn.q_proj.weight": "attn.query.weight",
    "self_attn.q_proj.bias": "attn.query.bias",
    "self_attn.k_proj.weight": "attn.key.weight",
    "self_attn.v_proj.weight": "attn.value.weight",
    "self_attn.v_proj.bias": "attn.value.bias",
    "self_attn.out_proj.weight": "attn.out.weight",
    "self_attn.out_proj.bias": "attn.out.bias",
    "self_attn_layer_norm.weight": "attn_norm.weight",
    "self_attn_layer_norm.bias": "attn_norm.bias",
    "final_layer_norm.weight": "mlp_norm.weight",
    "final_layer_norm.bias": "mlp_norm.bias",
    "fc1.weight": "fc1.weight",
    "fc1.bias": "fc1.bias",
    "fc2.weight": "fc2.weight",
    "fc2.bias": "fc2.bias",
}
_HF_TOP_KEYS = {
    "conv1.weight": "conv1.weight",
    "conv1.bias": "conv1.bias",
    "conv2.weight": "conv2.weight",
    "conv2.bias": "conv2.bias",
    "embed_positions.weight": "positions",
    "layer_norm.weight": "final_norm.weight",
    "layer_norm.bias": "final_norm.bias",
}
_ENCODER_PREFIXES = ("model.encoder.", "encoder.", "")


def map_hf_encoder_keys(state: dict[str, torch.Tensor], n_layers: int, where: str) -> dict[str, torch.Tensor]:
    """HF Whisper state dict -> WhisperEncoder state dict; every encoder key mapped, none missing."""
    prefix = next((p for p in _ENCODER_PREFIXES if f"{p}conv1.weight" in state), None)
    if prefix is None:
        raise WeightError(f"{where}: no Whisper encoder weights (looked for conv1.weight under {_ENCODER_PREFIXES})")
    wanted = {f"{prefix}{hf}": ours for hf, ours in _HF_TOP_KEYS.items()}
    for i in range(n_layers):
        wanted.update({f"{prefix}layers.{i}.{hf}": f"blocks.{i}.{ours}" for hf, ours in _HF_LAYER_KEYS.items()})
    missing = [k for k in wanted if k not in state]
    if missing:
        raise WeightError(f"{where}: Whisper encoder weights missing: {', '.join(missing[:5])}"
                          + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    # Keys under the encoder's prefix that we do not map are an error: a silent drop hides a wrong model.
    # (The decoder's keys, under another prefix, belong to the decoder and are not ours to check.)
    encoder_keys = [k for k in state if k.startswith(prefix)] if prefix else list(state)
    unexpected = [k for k in encoder_keys if k not in wanted]
    if unexpected:
        raise WeightError(f"{where}: unexpected Whisper encoder weights: {', '.join(unexpected[:5])}")
    return {ours: state[hf] for hf, ours in wanted.items()}
