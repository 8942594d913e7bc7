"""Learning-rate schedules as a factor of the peak rate, a pure function of the optimizer step.

Being a function of the step alone, a resumed run continues the schedule exactly where it stopped
(OSUM's resume restarts the warm-up).
"""

from __future__ import annotations

import math


def lr_factor(step: int, kind: str, warmup_steps: int, total_steps: int = 0, min_lr_ratio: float = 0.0) -> float:
    """The multiplier of the peak lr for optimizer step `step` (0-based: the step about to be taken)."""
    n = step + 1
    if kind == "constant":
        return min(1.0, n / warmup_steps) if warmup_steps else 1.0
    if warmup_steps and n <= warmup_steps:
        return n / warmup_steps
    if kind == "warmup_invsqrt":
        # WeNet's WarmupLR: lr * warmup^0.5 * min(n^-0.5, n * warmup^-1.5), i.e. 1/sqrt decay after warm-up.
        return math.sqrt(warmup_steps / n) if warmup_steps else 1 / math.sqrt(n)
    if kind == "warmup_cosine":
        if total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (n - warmup_steps) / (total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule kind {kind!r}")
