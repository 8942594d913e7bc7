"""`osum data check`: find what is wrong with a data set before a long run trips over it."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..audio import AudioError, audio_info, load_audio
from ..tasks import is_known_task, needs_transcript
from .manifest import read_manifest
from .problems import Problems
from .sample import Sample


@dataclass
class CheckResult:
    good: int = 0  # records without any problem
    hours: float = 0.0  # audio of the good records
    problems: Problems = field(default_factory=Problems)

    @property
    def samples(self) -> int:
        """Records read, good or bad."""
        return self.problems.samples_in

    def summary(self) -> dict:
        return {
            "samples": self.problems.samples_in,
            "good": self.good,
            "bad": self.problems.total,
            "hours": round(self.hours, 3),
            "problems": self.problems.summary(),
            **self.problems.account(self.good),
        }


def _inspect(args: tuple[str | bytes, float | None, float | None, bool, bool]) -> tuple[int, int] | AudioError:
    """(frames, rate) from the header; with `decode`, the audio is also decoded and validated as training will."""
    source, start, end, allow_pipes, decode = args
    try:
        header = audio_info(source, allow_pipes)
        if decode and header[0] > 0:  # an empty file is reported from its header (zero_duration)
            load_audio(source, None, start, end, allow_pipes)
        return header
    except AudioError as err:
        return err


def _sample_problems(sample: Sample, header: tuple[int, int] | AudioError, max_duration: float) -> list[tuple[str, str]]:
    """(reason, detail) of everything wrong with one sample, most serious first; and its duration."""
    found: list[tuple[str, str]] = []
    if isinstance(header, AudioError):
        found.append((header.reason, str(header)))
    else:
        frames, rate = header
        start = sample.start or 0.0
        end = frames / rate if sample.end is None else min(sample.end, frames / rate)
        duration = end - start
        if duration <= 0:
            found.append(("zero_duration", f"{duration:.3f} s of audio"))
        elif duration > max_duration:
            found.append(("absurd_duration", f"{duration:.0f} s > {max_duration:.0f} s"))
        elif sample.duration is not None and abs(sample.duration - duration) > 0.1:
            found.append(("duration_mismatch", f"manifest says {sample.duration:.2f} s, audio has {duration:.2f} s"))
    for tag in sample.tasks:
        if not is_known_task(tag):
            found.append(("unknown_task", f"task tag {tag!r} is not known (see osum.tasks)"))
    if needs_transcript(sample.tasks) and not (sample.text or "").strip():
        found.append(("empty_text", "no transcript for a task that needs one"))
    return found


def check_manifest(
    src: str | Path,
    fmt: str | None = None,
    max_duration: float = 1800.0,
    workers: int = 0,
    allow_pipes: bool = True,
    decode: bool = True,
) -> CheckResult:
    """Read every record and its audio (decoded and validated unless `decode` is off); count each bad sample
    once, under its most serious reason (its other problems are listed as notes)."""
    result = CheckResult()
    problems = result.problems
    samples = list(read_manifest(src, fmt, problems, allow_pipes))
    jobs = [(s.audio, s.start, s.end, allow_pipes, decode) for s in samples]
    workers = workers or min(os.cpu_count() or 1, 8)
    # Files are read in parallel; audio already in memory (shards) is cheaper to read here.
    if workers > 1 and len(jobs) > 64 and isinstance(jobs[0][0], str):
        with ProcessPoolExecutor(workers) as pool:
            headers = list(pool.map(_inspect, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
    else:
        headers = [_inspect(job) for job in jobs]

    seen: set[str] = set()
    for sample, header in zip(samples, headers):
        found = _sample_problems(sample, header, max_duration)
        if sample.key in seen:
            found.insert(0, ("duplicate_key", "the key appears more than once; the first is kept"))
        seen.add(sample.key)
        if found:
            problems.add(found[0][0], sample.key, found[0][1])
            for reason, detail in found[1:]:
                problems.note(reason, sample.key, detail)
            continue
        result.good += 1
        frames, rate = header
        result.hours += (min(sample.end or frames / rate, frames / rate) - (sample.start or 0.0)) / 3600
    return result
