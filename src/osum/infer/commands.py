"""The `osum score` and `osum decode` commands' logic as plain functions: scoring files, a decode's exit status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .score import read_hypotheses, read_references, score, write_report


def score_files(ref: str | Path, hyp: str | Path, task: str | None = None, normalizer: str = "basic",
                out: str | Path | None = None, plots: bool = True) -> tuple[dict[str, Any], dict[str, int]]:
    """Score outputs (`hyp`) against references (`ref`); returns the summary and the unreadable reference labels.

    The summary names the reference labels left out (not in osum's label sets); with `out`, summary.json,
    summary.md, alignments.txt and confusion matrices are written there.
    """
    references, bad_labels = read_references(ref)
    summary, details = score(references, read_hypotheses(hyp, task), normalizer)
    if bad_labels:
        summary["unreadable_reference_labels"] = bad_labels
    if out:
        write_report(summary, details, out, plots=plots)
    return summary, bad_labels


def decode_status(summaries: dict[str, dict[str, Any]], strict: bool = False) -> tuple[int, str | None]:
    """The exit status of a decode and why: 2 when a data set could not be read, 1 under `strict` for skips."""
    failed = {name: summary["error"] for name, summary in summaries.items() if "error" in summary}
    if failed:
        return 2, f"{len(failed)} of {len(summaries)} data sets could not be read: {failed}"
    skipped = {name: summary["skipped"] for name, summary in summaries.items() if summary["skipped"]}
    if strict and skipped:
        return 1, f"--strict: utterances skipped {skipped}"
    return 0, None
