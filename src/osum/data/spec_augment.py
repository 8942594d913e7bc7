"""SpecAugment on training features: bands of mel channels and runs of frames masked out (Park et al. 2019).

A small speech set seen for many epochs through a frozen encoder gives the adapter the same numbers every epoch,
and it learns them by heart; masking different bands and frames each time makes every epoch a new view of the
same speech. Masks are drawn from a generator seeded by (seed, epoch, rank, batch index), so a resumed run
masks exactly as the uninterrupted one did, whichever worker process decodes the batch. Training only: the
dev loader and decoding never mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SpecAugmentConfig:
    """Masks per utterance; widths are drawn uniformly from 0 to the maximum (WeNet/OSUM's defaults)."""

    enabled: bool = False
    freq_masks: int = 2  # bands of mel channels set to the utterance's mean
    max_freq_width: int = 10  # channels per band, at most
    time_masks: int = 2  # runs of frames set to the utterance's mean
    max_time_width: int = 50  # frames (10 ms) per run, at most
    max_time_ratio: float = 0.2  # and never more than this share of the utterance per run

    def __post_init__(self) -> None:
        for name in ("freq_masks", "max_freq_width", "time_masks", "max_time_width"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (got {getattr(self, name)})")
        if not 0.0 <= self.max_time_ratio <= 1.0:
            raise ValueError("max_time_ratio must be between 0 and 1")


def batch_generator(seed: int, epoch: int, rank: int, index: int) -> torch.Generator:
    """The generator of one batch's masks: a function of its place in the run, nothing else."""
    mixed = 0
    for part in (seed, epoch, rank, index):  # spelled out: Python's hash() of a tuple may change between versions
        mixed = (mixed * 1_000_003 + int(part)) % (1 << 63)
    generator = torch.Generator()
    generator.manual_seed(mixed)
    return generator


def spec_augment(features: torch.Tensor, lengths: torch.Tensor, config: SpecAugmentConfig,
                 generator: torch.Generator) -> torch.Tensor:
    """Mask `features` (batch, frames, mels) in place within each utterance's `lengths`; returns it.

    The masked value is the utterance's mean over its real frames (SpecAugment's choice for normalised features):
    Whisper's features have no fixed zero, so a constant would stand out from the utterance around it."""
    n_mels = features.shape[2]

    def draw(high: int) -> int:
        return int(torch.randint(0, high + 1, (), generator=generator))

    for row, length in enumerate(lengths.tolist()):
        if length <= 0:
            continue
        view = features[row, :length]
        fill = view.mean()
        for _ in range(config.freq_masks):
            width = draw(min(config.max_freq_width, n_mels))
            start = draw(n_mels - width)
            view[:, start:start + width] = fill
        widest = min(config.max_time_width, int(length * config.max_time_ratio))
        for _ in range(config.time_masks):
            width = draw(widest)
            start = draw(length - width)
            view[start:start + width] = fill
    return features
