"""Counting what was skipped and why, so that nothing is dropped silently."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger("osum.data")


class Problems:
    """A tally of skipped or suspicious inputs by reason, with one warning per input.

    Every reader, checker and loader stage takes one of these; the summary ends up in the command's output.
    `max_warnings` bounds the log noise on huge bad inputs; the counts stay exact.
    """

    def __init__(self, max_warnings: int = 50, warn: bool = True, max_records: int = 100_000):
        self.counts: Counter[str] = Counter()
        self.records: list[dict[str, Any]] = []  # the first `max_records`, for --report files
        self.max_warnings = max_warnings
        self.max_records = max_records
        self.warn = warn

    def add(self, reason: str, where: str, detail: str = "") -> None:
        """Record one problem: `reason` is a short snake_case tag, `where` a key or file:line."""
        self.counts[reason] += 1
        if len(self.records) < self.max_records:
            self.records.append({"reason": reason, "where": where, "detail": detail})
        if self.warn and self.total <= self.max_warnings:
            log.warning("%s: %s%s", where, reason, f" ({detail})" if detail else "")
            if self.total == self.max_warnings:
                log.warning("further problems are counted but not printed")

    def merge(self, other: "Problems") -> None:
        """Fold another tally (e.g. from a worker process) into this one."""
        self.counts.update(other.counts)
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
