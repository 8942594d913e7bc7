"""Counting what was skipped and why, so that nothing is dropped silently.

Every data command keeps one account: samples in = samples out + samples skipped under a named reason.
The reasons are the same words in `osum data check`, `pack`, `batches`, `convert`, `decode`, `score` and
the trainer's summary; REASONS below is the one list of them (the README's table is made from it).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger("osum.data")

# reason -> what it means and what to do. A reason not listed here is a programming error (see Problems.add).
REASONS: dict[str, str] = {
    "malformed_line": "a manifest line that is not UTF-8, not JSON, or lacks a required field: fix the line named",
    "duplicate_key": "a key already seen in the same input: the first record is kept, rename the other",
    "missing_audio": "the audio file (or wav.scp entry) does not exist: fix the path",
    "unreadable_audio": "audio that cannot be decoded (corrupt file, unknown format, failed `command |`)",
    "empty_audio": "audio with no samples (0 bytes, or nothing in the segment asked for)",
    "non_finite_audio": "audio holding NaN or infinite samples: re-export the file",
    "truncated_audio": "the file holds less audio than its header says (an interrupted copy): re-copy it",
    "audio_too_large": "more bytes than osum reads for one utterance (a runaway pipe or a huge file)",
    "duration_mismatch": "the manifest's duration differs from the audio's by more than 0.1 s",
    "zero_duration": "the segment asked for has no audio (start at or past the end)",
    "absurd_duration": "audio longer than `--max-duration`",
    "too_short": "too short to use: under the loader's min_duration (25 ms, Whisper's window, for decoding)",
    "too_long": "longer than the loader's max_duration",
    "text_too_long": "a transcript longer than the loader's max_text_tokens",
    "empty_text": "no transcript for a task that needs one",
    "unknown_task": "a task tag osum does not know (see osum.tasks)",
    "no_target": "nothing to train on: the sample's tasks need labels it does not have",
    "unreadable_shard": "a shard that cannot be opened: the samples in it are not counted one by one",
    "truncated_tar": "a shard that ends early: the samples before the damage are kept",
    "malformed_sample": "a shard member that cannot be read (not UTF-8, bad JSON)",
}


class Problems:
    """A tally of skipped or suspicious inputs by reason, with one warning per input.

    Every reader, checker and loader stage takes one of these; the summary ends up in the command's output.
    `max_warnings` bounds the log noise on huge bad inputs; the counts stay exact.
    """

    def __init__(self, max_warnings: int = 50, warn: bool = True, max_records: int = 100_000):
        self.samples_in = 0  # records the readers saw, good or bad (readers count them)
        self.counts: Counter[str] = Counter()  # samples skipped, by reason
        self.notes: Counter[str] = Counter()  # problems that skip no sample of their own (see note())
        self.records: list[dict[str, Any]] = []  # the first `max_records`, for --report files
        self.max_warnings = max_warnings
        self.max_records = max_records
        self.warn = warn

    def add(self, reason: str, where: str, detail: str = "") -> None:
        """Record one problem: `reason` is one of REASONS, `where` a key or file:line."""
        if reason not in REASONS:
            raise ValueError(f"unknown problem reason {reason!r}: add it to osum.data.problems.REASONS")
        self.counts[reason] += 1
        if len(self.records) < self.max_records:
            self.records.append({"reason": reason, "where": where, "detail": detail})
        if self.warn and self.total <= self.max_warnings:
            log.warning("%s: %s%s", where, reason, f" ({detail})" if detail else "")
            if self.total == self.max_warnings:
                log.warning("further problems are counted but not printed")

    def note(self, reason: str, where: str, detail: str = "") -> None:
        """Record a problem that skips no sample by itself: a second fault of a sample already skipped, a bad
        line of a side table (utt2spk, text), a shard whose lost samples cannot be counted one by one."""
        if reason not in REASONS:
            raise ValueError(f"unknown problem reason {reason!r}: add it to osum.data.problems.REASONS")
        self.notes[reason] += 1
        if len(self.records) < self.max_records:
            self.records.append({"reason": reason, "where": where, "detail": detail, "skipped": False})
        if self.warn and self.total + sum(self.notes.values()) <= self.max_warnings:
            log.warning("%s: %s%s", where, reason, f" ({detail})" if detail else "")

    def account(self, samples_out: int) -> dict[str, Any]:
        """samples in = samples out + samples skipped by reason (+ those a stopped run never reached)."""
        account: dict[str, Any] = {
            "samples_in": self.samples_in,
            "samples_out": samples_out,
            "skipped": self.total,
            "skipped_by_reason": self.summary(),
        }
        if self.notes:
            account["other_problems"] = dict(self.notes.most_common())
        not_reached = self.samples_in - samples_out - self.total
        if not_reached:
            # Read ahead by a run that stopped early (--max-batches, max_steps); never part of a whole pass.
            account["not_reached"] = not_reached
        return account

    def merge(self, other: "Problems") -> None:
        """Fold another tally (e.g. from a worker process) into this one."""
        self.samples_in += other.samples_in
        self.counts.update(other.counts)
        self.notes.update(other.notes)
        self.records.extend(other.records[: max(0, self.max_records - len(self.records))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict[str, int]:
        """Counts by reason, most frequent first."""
        return dict(self.counts.most_common())

    def write_report(self, path: str | Path) -> None:
        """One JSON line per problem: reason, where, detail."""
        with open(path, "w", encoding="utf-8") as out:
            for record in self.records:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
