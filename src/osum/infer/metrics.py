"""Scores for model outputs, one function per kind of task.

- transcripts: error rates over mixed tokens (each CJK character alone, other text by words; jiwer aligns)
  and over characters, with per-utterance alignments;
- labels: accuracy, macro-F1 over the label set, per-class precision/recall/F1 and the confusion matrix;
- word timestamps: mean absolute boundary error over the words the alignment matches;
- translation: corpus BLEU (sacrebleu).

Inputs are already normalized (`osum.infer.normalize`); `osum.infer.score` reads files and calls these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..text import mixed_tokens

MISSING = "(none)"  # the confusion-matrix column for outputs that named no valid label


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

    def as_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "errors": self.errors, "substitutions": self.substitutions,
                "deletions": self.deletions, "insertions": self.insertions,
                "reference_tokens": self.reference_tokens, "hypothesis_tokens": self.hypothesis_tokens}


Alignment = list[tuple[str, "str | None", "str | None"]]  # (equal|substitute|delete|insert, ref, hyp)


def align_tokens(ref: Sequence[str], hyp: Sequence[str]) -> tuple[ErrorCounts, Alignment]:
    """Minimum edit-distance alignment of two token lists: (counts, [(op, ref token, hyp token), ...])."""
    import jiwer

    ref, hyp = list(ref), list(hyp)
    if not ref:  # jiwer refuses an empty reference: every hypothesis token is an insertion
        return ErrorCounts(insertions=len(hyp), hypothesis_tokens=len(hyp)), [("insert", None, h) for h in hyp]
    if not hyp:
        return ErrorCounts(deletions=len(ref), reference_tokens=len(ref)), [("delete", r, None) for r in ref]
    # jiwer splits on spaces: tokens never hold spaces (they come from splitting), and index lists keep
    # any token (even one jiwer would otherwise transform) exact.
    vocabulary: dict[str, str] = {}
    code = lambda tokens: " ".join(vocabulary.setdefault(t, f"t{len(vocabulary)}") for t in tokens)  # noqa: E731
    out = jiwer.process_words(code(ref), code(hyp))
    pairs: Alignment = []
    for chunk in out.alignments[0]:
        span = max(chunk.ref_end_idx - chunk.ref_start_idx, chunk.hyp_end_idx - chunk.hyp_start_idx)
        for k in range(span):
            r = ref[chunk.ref_start_idx + k] if chunk.type != "insert" else None
            h = hyp[chunk.hyp_start_idx + k] if chunk.type != "delete" else None
            pairs.append((chunk.type, r, h))
    return ErrorCounts(out.substitutions, out.deletions, out.insertions, len(ref), len(hyp)), pairs


def align(reference: str, hypothesis: str) -> tuple[ErrorCounts, Alignment]:
    """Alignment of two texts over mixed tokens (the unit of osum's WER)."""
    return align_tokens(mixed_tokens(reference), mixed_tokens(hypothesis))


def characters(text: str) -> list[str]:
    """The characters of a text without its spaces (the unit of CER)."""
    return [ch for ch in text if not ch.isspace()]


def error_rates(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """WER (mixed tokens) and CER (characters) over (reference, hypothesis) pairs of normalized texts."""
    words, chars = ErrorCounts(), ErrorCounts()
    sentences_wrong = 0
    for ref, hyp in pairs:
        w, _ = align(ref, hyp)
        c, _ = align_tokens(characters(ref), characters(hyp))
        words, chars = words + w, chars + c
        sentences_wrong += w.errors > 0
    return {"wer": words.as_dict(), "cer": chars.as_dict(), "utterances": len(pairs),
            "sentence_error_rate": sentences_wrong / len(pairs) if pairs else 0.0}


def render_alignment(pairs: Alignment) -> tuple[str, str, str]:
    """Three aligned lines (REF, HYP, ops: S D I or space), padded to the same widths, for reading by eye."""
    refs, hyps, ops = [], [], []
    for op, r, h in pairs:
        r, h = r or "*" * _width(h or ""), h or "*" * _width(r or "")
        width = max(_width(r), _width(h))
        refs.append(_pad(r, width))
        hyps.append(_pad(h, width))
        ops.append(_pad({"equal": "", "substitute": "S", "delete": "D", "insert": "I"}[op], width))
    return " ".join(refs), " ".join(hyps), " ".join(ops)


def _width(text: str) -> int:
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


@dataclass
class LabelScores:
    labels: list[str]  # the classes, in the label set's order
    confusion: list[list[int]]  # rows: reference label; columns: labels + MISSING
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(map(sum, self.confusion))

    @property
    def accuracy(self) -> float:
        return sum(self.confusion[i][i] for i in range(len(self.labels))) / self.total if self.total else 0.0

    @property
    def macro_f1(self) -> float:
        """Mean F1 over the classes that occur in the references (classes never seen would score 0 for free)."""
        present = [label for label in self.labels if self.per_class[label]["support"] > 0]
        return sum(self.per_class[label]["f1"] for label in present) / len(present) if present else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "count": self.total,
                "labels": self.labels, "confusion": self.confusion, "per_class": self.per_class}

    def confusion_text(self) -> str:
        """The confusion matrix as an aligned text table (rows: reference, columns: hypothesis)."""
        columns = self.labels + [MISSING]
        head = ["ref \\ hyp"] + columns
        rows = [[label] + [str(n) for n in row] for label, row in zip(self.labels, self.confusion)]
        widths = [max(_width(r[k]) for r in [head] + rows) for k in range(len(head))]
        return "\n".join("  ".join(_pad(cell, w) for cell, w in zip(row, widths)).rstrip() for row in [head] + rows)


def label_scores(pairs: Sequence[tuple[str, "str | None"]], labels: Sequence[str]) -> LabelScores:
    """Scores of (reference label, hypothesis label or None) pairs over the label set `labels`.

    A reference outside the set is a caller's error (normalize labels first); a hypothesis outside the set
    (or None: the output named no label) counts in the MISSING column, wrong for its reference.
    """
    labels = list(labels)
    index = {label: i for i, label in enumerate(labels)}
    confusion = [[0] * (len(labels) + 1) for _ in labels]
    for ref, hyp in pairs:
        if ref not in index:
            raise ValueError(f"reference label {ref!r} is not one of {labels}")
        confusion[index[ref]][index.get(hyp, len(labels)) if hyp is not None else len(labels)] += 1
    per_class = {}
    for i, label in enumerate(labels):
        tp = confusion[i][i]
        support = sum(confusion[i])
        predicted = sum(row[i] for row in confusion)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return LabelScores(labels, confusion, per_class)


def plot_confusion(scores: LabelScores, path: str, title: str) -> None:
    """The confusion matrix as a PNG heat map with counts in the cells (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = scores.labels + [MISSING]
    size = max(4.0, 0.7 * len(columns) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ax.imshow(scores.confusion, cmap="Blues")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(scores.labels)), scores.labels)
    ax.set_xlabel("hypothesis")
    ax.set_ylabel("reference")
    ax.set_title(f"{title}: accuracy {scores.accuracy:.1%}, macro-F1 {scores.macro_f1:.3f}")
    peak = max(max(row) for row in scores.confusion) or 1
    for i, row in enumerate(scores.confusion):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def timestamp_error(pairs: Sequence[tuple[list[dict], list[dict]]], normalize=lambda w: w) -> dict[str, Any]:
    """Mean absolute error (ms) of word start and end times over the words the alignment matches.

    Each pair holds the reference and hypothesis words ({word, start, end} in seconds); words are aligned by
    their normalized text, and only equal words count (a misrecognized word has no true boundary).
    """
    starts, ends, matched, reference_words = [], [], 0, 0
    for ref_words, hyp_words in pairs:
        ref = [w for w in ref_words if normalize(w["word"])]
        hyp = [w for w in hyp_words if normalize(w["word"])]
        reference_words += len(ref)
        _, ops = align_tokens([normalize(w["word"]) for w in ref], [normalize(w["word"]) for w in hyp])
        i = j = 0  # positions in ref and hyp, advanced along the alignment
        for op, _, _ in ops:
            if op == "equal":
                starts.append(abs(ref[i]["start"] - hyp[j]["start"]) * 1000)
                ends.append(abs(ref[i]["end"] - hyp[j]["end"]) * 1000)
                matched += 1
            i += op != "insert"
            j += op != "delete"
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    both = starts + ends
    return {"mae_ms": mean(both), "start_mae_ms": mean(starts), "end_mae_ms": mean(ends),
            "matched_words": matched, "reference_words": reference_words}


def bleu(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Corpus BLEU of (reference, hypothesis) pairs; CJK text is tokenized by character (sacrebleu's zh)."""
    import sacrebleu

    refs = [r for r, _ in pairs]
    hyps = [h for _, h in pairs]
    cjk = any(len(mixed_tokens(r)) > len(r.split()) for r in refs)
    score = sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh" if cjk else "13a")
    return {"bleu": score.score, "tokenize": "zh" if cjk else "13a", "count": len(pairs),
            "precisions": list(score.precisions), "brevity_penalty": score.bp}
