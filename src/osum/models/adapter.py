"""Adapters: encoder frames -> LLM-width embeddings, with fewer frames.

- `osum`: OSUM's adapter. Three causal Conv1d (kernel 3, left pad 2, strides 1, 2, 2, GELU: 4x fewer
  frames), a 4-layer pre-norm transformer (WeNet style: Linear + LayerNorm + dropout input layer,
  x * sqrt(d) + sinusoidal positions, 4 heads, ReLU feed-forward), a final LayerNorm, then a Linear to the
  LLM width. OSUM's sizes: 1024 in, 2560 feed-forward, 3584 out.
- `linear`: MooER / SLAM-LLM's projector: stack k consecutive frames, Linear, ReLU, Linear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .whisper import length_mask


@dataclass
class AdapterConfig:
    type: str = "osum"  # osum | linear
    input_dim: int = 1024  # encoder width
    output_dim: int = 3584  # LLM width
    conv_strides: list[int] = field(default_factory=lambda: [1, 2, 2])  # osum adapter: causal conv strides (x4 fewer frames)
    model_dim: int = 0  # transformer width; 0 = input_dim (as OSUM)
    n_layers: int = 4  # transformer blocks after the convolutions
    n_heads: int = 4  # attention heads
    ffn_dim: int = 2560  # feed-forward width (ReLU)
    dropout: float = 0.1  # dropout in the transformer blocks
    max_positions: int = 5000  # longest input (adapter frames) the sinusoidal table covers
    stack: int = 4  # linear adapter: encoder frames stacked into one
    hidden_dim: int = 2048  # linear adapter: width between its two Linear layers

    def __post_init__(self) -> None:
        if self.type not in ("osum", "linear"):
            raise ValueError(f"adapter type {self.type!r}: choose osum or linear")


def wenet_positions(length: int, dim: int) -> torch.Tensor:
    """WeNet's absolute positional table [length, dim]: sin on even channels, cos on odd ones."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)
    return table


class CausalConv(nn.Module):
    """Conv1d (kernel 3) that sees only the past: 2 frames of zero padding on the left."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(dim, dim, kernel_size=3, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, D, T]
        return F.gelu(self.conv(F.pad(x, (2, 0))))

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return (lengths - 1) // self.stride + 1


class AdapterBlock(nn.Module):
    """WeNet's pre-norm encoder layer: x + attn(norm1(x)), x + ffn(norm2(x)); q/k/v/out all with bias."""

    def __init__(self, dim: int, n_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.w1 = nn.Linear(dim, ffn_dim)
        self.w2 = nn.Linear(ffn_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def attention(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        heads = lambda y: y.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)  # noqa: E731
        p = self.dropout.p if self.training else 0.0
        y = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)), attn_mask=keep[:, None, None, :], dropout_p=p
        )
        return self.out(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm1(x), keep))
        return x + self.dropout(self.w2(self.dropout(F.relu(self.w1(self.norm2(x))))))


class OsumAdapter(nn.Module):
    """Causal conv downsampling (4x) + a small transformer + projection to the LLM width."""

    def __init__(self, c: AdapterConfig):
        super().__init__()
        dim = c.model_dim or c.input_dim
        self.convs = nn.ModuleList(CausalConv(c.input_dim, s) for s in c.conv_strides)
        self.input_linear = nn.Linear(c.input_dim, dim)
        self.input_norm = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = nn.Dropout(c.dropout)
        self.scale = math.sqrt(dim)
        self.register_buffer("positions", wenet_positions(c.max_positions, dim), persistent=True)
        self.blocks = nn.ModuleList(AdapterBlock(dim, c.n_heads, c.ffn_dim, c.dropout) for _ in range(c.n_layers))
        self.final_norm = nn.LayerNorm(dim, eps=1e-5)
        self.project = nn.Linear(dim, c.output_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Causal convs: frames past an utterance's end never reach its real frames, so no masking here.
        y = x.transpose(1, 2)
        for conv in self.convs:
            y = conv(y)
            lengths = conv.out_lengths(lengths)
        y = self.input_norm(self.input_linear(y.transpose(1, 2)))
        y = self.dropout(y * self.scale + self.positions[: y.shape[1]].to(y.dtype))
        keep = length_mask(lengths, y.shape[1])
        for block in self.blocks:
            y = block(y, keep)
        return self.project(self.final_norm(y)), lengths


class LinearAdapter(nn.Module):
    """Stack `stack` frames (zero-padding the last group), then Linear -> ReLU -> Linear."""

    def __init__(self, c: AdapterConfig):
        super().__init__()
        self.stack = c.stack
        self.fc1 = nn.Linear(c.input_dim * c.stack, c.hidden_dim)
        self.fc2 = nn.Linear(c.hidden_dim, c.output_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        x = x * length_mask(lengths, t)[..., None].to(x.dtype)
        x = F.pad(x, (0, 0, 0, -t % self.stack))
        x = x.reshape(b, -1, d * self.stack)
        return self.fc2(F.relu(self.fc1(x))), (lengths + self.stack - 1) // self.stack


def build_adapter(config: AdapterConfig) -> nn.Module:
    return OsumAdapter(config) if config.type == "osum" else LinearAdapter(config)


class UtteranceEmbedding(nn.Module):
    """One LLM-width embedding per utterance, from every encoder block: the mean and standard deviation of each
    block's states over the utterance's real frames (statistics pooling, as speaker embeddings do), each
    block's statistics layer-normalised, mixed with learned weights (as SUPERB's probes mix layers), then a
    two-layer MLP. It carries what is constant over an utterance (who speaks, how) in one place, apart from
    the frame-by-frame speech. Why every block: Whisper's last block is tuned for the words; who speaks is
    clearer lower down (measured on real speech: gender on AN4's unseen speakers 78-94% from the last block
    alone, 97% from the mix)."""

    def __init__(self, input_dim: int, output_dim: int, n_layers: int):
        super().__init__()
        self.layer_weights = nn.Parameter(torch.zeros(n_layers))
        self.layer_norm = nn.LayerNorm(2 * input_dim, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(2 * input_dim, output_dim), nn.GELU(), nn.Linear(output_dim, output_dim))

    def forward(self, layers: list[torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:
        """n_layers x [B, T, input_dim] + lengths [B] -> [B, output_dim]."""
        if len(layers) != self.layer_weights.shape[0]:
            raise ValueError(f"the utterance embedding mixes {self.layer_weights.shape[0]} encoder blocks, got {len(layers)}")
        dtype = self.mlp[0].weight.dtype
        keep = length_mask(lengths, layers[0].shape[1])[..., None].to(dtype)
        count = lengths[:, None].to(dtype).clamp(min=1)
        statistics = []
        for hidden in layers:
            hidden = hidden.to(dtype)
            mean = (hidden * keep).sum(1) / count
            variance = (((hidden - mean[:, None]) ** 2) * keep).sum(1) / count
            statistics.append(torch.cat([mean, variance.clamp(min=1e-6).sqrt()], dim=-1))
        mixed = (self.layer_norm(torch.stack(statistics, 1)) * self.layer_weights.softmax(0)[:, None]).sum(1)
        return self.mlp(mixed)
