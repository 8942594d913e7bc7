"""What a run tells its user: one console line per interval, the same fields in JSONL and TensorBoard.

Only rank 0 writes; the numbers it writes are sums over all ranks (the loop all-reduces them first).
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

LOG_FILE = "train.log.jsonl"


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: the accelerator's allocator on GPU, resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


class TrainLog:
    def __init__(self, out_dir: Path, enabled: bool, total_steps: int, tensorboard: bool, progress: bool, start_step: int):
        self.enabled = enabled
        self.file = open(out_dir / LOG_FILE, "a", encoding="utf-8") if enabled else None
        self.writer = None
        self.note = ""
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                self.note = "tensorboard is not installed: scalars go to the JSONL log only"
        self.bar = None
        if enabled and progress and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps or None, initial=start_step, unit="step", dynamic_ncols=True)

    def write(self, record: dict[str, Any]) -> None:
        """One interval (kind 'train') or a validation (kind 'dev'): console, JSONL, TensorBoard."""
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("time", "step", "epoch") and math.isfinite(value):
                    self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])
        self.print(format_record(record))

    def print(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()


def format_record(r: dict[str, Any]) -> str:
    """A compact console line of a record."""
    if r["kind"] == "dev":
        parts = [f"dev   step {r['step']}", f"loss {r['loss']:.4f}", f"acc {r['accuracy']:.3f}"]
        parts += [f"{k} {r[k]:.4f}" for k in ("wer", "label_accuracy") if r.get(k) is not None]
        return " | ".join(parts)
    return (
        f"epoch {r['epoch']} step {r['step']} | loss {r['loss']:.4f} acc {r['accuracy']:.3f} ppl {r['perplexity']:.2f}"
        f" | lr {r['lr']:.2e} gnorm {r['grad_norm']:.2f} | {r['samples_per_s']:.1f} samples/s"
        f" {r['audio_s_per_s']:.1f} audio-s/s {r['tokens_per_s']:.0f} tok/s"
        f" | data {r['data_s']:.2f}s fwd {r['forward_s']:.2f}s bwd {r['backward_s']:.2f}s opt {r['optimizer_s']:.2f}s"
        f" | mem {r['peak_memory_mb']:.0f} MB" + (f" | skipped {r['skipped_steps']}" if r.get("skipped_steps") else "")
    )
