"""`osum data check`: find what is wrong with a data set before a long run trips over it."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..audio import AudioError, audio_info
from ..tasks import is_known_task, needs_transcript
from .manifest import read_manifest
from .problems import Problems


@dataclass
class CheckResult:
    samples: int = 0  # records read
    good: int = 0  # records without any problem
    hours: float = 0.0  # audio of the good records
    problems: Problems = field(default_factory=Problems)

    def summary(self) -> dict:
        return {
            "samples": self.samples,
            "good": self.good,
            "bad": self.samples - self.good,
            "hours": round(self.hours, 3),
            "problems": self.problems.summary(),
        }


def _header(args: tuple[str | bytes, bool]) -> tuple[int, int] | str:
    source, allow_pipes = args
    try:
        return audio_info(source, allow_pipes)
    except AudioError as err:
        return str(err)


def check_manifest(
    src: str | Path,
    fmt: str | None = None,
    max_duration: float = 1800.0,
    workers: int = 0,
    allow_pipes: bool = True,
) -> CheckResult:
    """Read every record and every audio header; count each problem by reason."""
    result = CheckResult()
    problems = result.problems
    samples = list(read_manifest(src, fmt, problems, allow_pipes))
    result.samples = len(samples) + problems.counts.get("malformed_line", 0)
    jobs = [(s.audio, allow_pipes) for s in samples]
    workers = workers or min(os.cpu_count() or 1, 8)
    # Headers of files are read in parallel; audio already in memory (shards) is cheaper to read here.
    if workers > 1 and len(jobs) > 64 and isinstance(jobs[0][0], str):
        with ProcessPoolExecutor(workers) as pool:
            headers = list(pool.map(_header, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
    else:
        headers = [_header(job) for job in jobs]

    seen: set[str] = set()
    for sample, header in zip(samples, headers):
        bad = False
        if sample.key in seen:
            problems.add("duplicate_key", sample.key, "the key appears more than once")
            bad = True
        seen.add(sample.key)
        if isinstance(header, str):
            problems.add("missing_audio" if "not found" in header else "unreadable_audio", sample.key, header)
            bad = True
            duration = None
        else:
            frames, rate = header
            start = sample.start or 0.0
            end = frames / rate if sample.end is None else min(sample.end, frames / rate)
            duration = end - start
            if duration <= 0:
                problems.add("zero_duration", sample.key, f"{duration:.3f} s of audio")
                bad = True
            elif duration > max_duration:
                problems.add("absurd_duration", sample.key, f"{duration:.0f} s > {max_duration:.0f} s")
                bad = True
            elif sample.duration is not None and abs(sample.duration - duration) > 0.1:
                problems.add(
                    "duration_mismatch", sample.key, f"manifest says {sample.duration:.2f} s, audio has {duration:.2f} s"
                )
                bad = True
        for tag in sample.tasks:
            if not is_known_task(tag):
                problems.add("unknown_task", sample.key, f"task tag {tag!r} is not known (see osum.tasks)")
                bad = True
        if needs_transcript(sample.tasks) and not (sample.text or "").strip():
            problems.add("empty_text", sample.key, "no transcript for a task that needs one")
            bad = True
        if not bad:
            result.good += 1
            result.hours += (duration or 0.0) / 3600
    return result
