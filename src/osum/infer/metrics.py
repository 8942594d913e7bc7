"""Scores for model outputs: error rates over mixed CJK/Latin tokens (more metrics come with `osum score`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..text import mixed_tokens


@dataclass
class ErrorCounts:
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference_tokens: int = 0
    hypothesis_tokens: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """Errors per reference token; an empty reference scores 0 when the hypothesis is empty too, else 1."""
        if self.reference_tokens == 0:
            return 0.0 if self.errors == 0 else 1.0
        return self.errors / self.reference_tokens

    def __add__(self, other: "ErrorCounts") -> "ErrorCounts":
        return ErrorCounts(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))


def align(reference: str, hypothesis: str) -> tuple[ErrorCounts, list[tuple[str, str | None, str | None]]]:
    """Edit-distance alignment of the mixed tokens: (counts, [(op, ref token, hyp token), ...])."""
    import jiwer

    ref, hyp = mixed_tokens(reference), mixed_tokens(hypothesis)
    if not ref:  # jiwer refuses an empty reference: every hypothesis token is an insertion
        return ErrorCounts(insertions=len(hyp), hypothesis_tokens=len(hyp)), [("insert", None, h) for h in hyp]
    if not hyp:
        return ErrorCounts(deletions=len(ref), reference_tokens=len(ref)), [("delete", r, None) for r in ref]
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    pairs: list[tuple[str, str | None, str | None]] = []
    for chunk in out.alignments[0]:
        for k in range(max(chunk.ref_end_idx - chunk.ref_start_idx, chunk.hyp_end_idx - chunk.hyp_start_idx)):
            r = ref[chunk.ref_start_idx + k] if chunk.type != "insert" else None
            h = hyp[chunk.hyp_start_idx + k] if chunk.type != "delete" else None
            pairs.append((chunk.type, r, h))
    counts = ErrorCounts(out.substitutions, out.deletions, out.insertions, len(ref), len(hyp))
    return counts, pairs
