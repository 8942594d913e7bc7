"""`osum score`: compare decoded outputs with references, for every task the outputs answer.

References: any manifest osum reads (osum/WeNet jsonl, Kaldi directory, FunASR jsonl, shards, Common Voice),
or a plain `text` file (key, whitespace, transcript). Hypotheses: a decode's `result.jsonl` (parsed fields
and the task of each output) or a `text` file (key TAB output, read with `--task`, default <TRANSCRIBE>).

Per task tag the summary holds what applies: WER/CER of the transcript, accuracy / macro-F1 / confusion of
each label, word-boundary error of <ALIGN> outputs, BLEU of translations. References missing a field are
left out of that field's score (counted); outputs with no reference are counted; a reference with no output
scores as an empty output (so skipping hard utterances cannot improve a score).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..tasks import (DEFAULT_TASK, LABEL_FIELDS, LABELS, UnknownTaskError, canonical_task, has_transcript, label_fields,
                     normalize_label, parse_output, task_file_stem, task_parts)
from . import metrics
from .normalize import get_normalizer


class ScoreError(ValueError):
    """Unreadable reference or hypothesis files; the message names the file and line."""


@dataclass
class Reference:
    text: str | None = None
    labels: dict[str, str] = field(default_factory=dict)  # field -> normalized label
    words: list[dict] | None = None
    translation: str | None = None
    tasks: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------------ reading

def _is_plain_text(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                return not line.lstrip().startswith("{") and not line.split()[0].endswith((".tar", ".tgz", ".tar.gz"))
    return True


def read_text_file(path: Path) -> dict[str, str]:
    """`key<whitespace>text` lines (Kaldi `text`, osum's decode `text`); a key alone means an empty text."""
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1) if "\t" not in line else line.split("\t", 1)
        key = parts[0].strip()
        if key in out:
            raise ScoreError(f"{path}:{number}: key {key!r} appears twice")
        out[key] = parts[1].strip() if len(parts) > 1 else ""
    return out


def read_references(src: str | Path, labels: dict[str, tuple[str, ...]] = LABELS) -> tuple[dict[str, Reference], dict[str, int]]:
    """key -> Reference from a manifest or a text file; returns also counts of labels that could not be read."""
    path = Path(src)
    if _is_plain_text(path):
        return {k: Reference(text=v) for k, v in read_text_file(path).items()}, {}
    from ..data.manifest import ManifestError, read_manifest
    from ..data.problems import Problems

    problems = Problems()
    try:
        samples = list(read_manifest(src, problems=problems))
    except (ManifestError, OSError) as err:
        raise ScoreError(f"cannot read references {src}: {err}") from err
    refs, bad_labels = references_from_samples(samples, labels)
    if not refs:
        raise ScoreError(f"no references could be read from {src} (skipped: {problems.summary()})")
    return refs, dict(bad_labels)


def references_from_samples(samples, labels: dict[str, tuple[str, ...]] = LABELS) -> tuple[dict[str, Reference], dict[str, int]]:
    """key -> Reference from osum Samples, and per label field the count of labels outside osum's sets."""
    refs: dict[str, Reference] = {}
    bad_labels: dict[str, int] = defaultdict(int)
    for s in samples:
        ref = Reference(text=s.text, tasks=s.tasks, translation=s.extra.get("translation"),
                        words=[{"word": w.word, "start": w.start, "end": w.end} for w in s.words] if s.words else None)
        for name in LABEL_FIELDS:
            value = getattr(s, name)
            if value is None or str(value).strip() == "":
                continue
            try:
                ref.labels[name] = normalize_label(name, value, labels)
            except ValueError:
                bad_labels[name] += 1
        refs[s.key] = ref
    return refs, dict(bad_labels)


def read_hypotheses(src: str | Path, task: str | None, labels: dict[str, tuple[str, ...]] = LABELS) -> list[dict[str, Any]]:
    """Parsed outputs [{key, task, text, gender, ..., words, translation}] from result.jsonl or a text file."""
    path = Path(src)
    if not path.is_file():
        raise ScoreError(f"hypotheses {path}: no such file")
    wanted = canonical_task(task) if task else None
    if _is_plain_text(path):
        tag = wanted or DEFAULT_TASK
        return [dict(parse_output(text, tag, labels), key=key, task=tag) for key, text in read_text_file(path).items()]
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ScoreError(f"{path}:{number}: not JSON ({err.msg}); expected a decode's result.jsonl") from None
        if not isinstance(row, dict) or "key" not in row:
            raise ScoreError(f"{path}:{number}: each line needs a 'key' (and the parsed fields of one output)")
        try:
            row_task = canonical_task(row.get("task") or wanted or DEFAULT_TASK)
        except UnknownTaskError as err:
            raise ScoreError(f"{path}:{number}: {err}") from None
        if wanted and row_task != wanted:
            continue  # --task picks one task's outputs from a multi-task decode
        out.append(dict(row, task=row_task))
    return out


# ------------------------------------------------------------------------------------------------ scoring

def score(
    references: dict[str, Reference],
    hypotheses: Iterable[dict[str, Any]],
    normalizer: str = "basic",
    labels: dict[str, tuple[str, ...]] = LABELS,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, per-utterance details). The summary has one entry per task tag under "tasks"."""
    norm = get_normalizer(normalizer)
    by_task: dict[str, list[tuple[Reference, dict]]] = defaultdict(list)
    seen: dict[str, set[str]] = defaultdict(set)
    unmatched = 0
    for hyp in hypotheses:
        ref = references.get(str(hyp["key"]))
        if ref is None:
            unmatched += 1
            continue
        by_task[hyp["task"]].append((ref, hyp))
        seen[hyp["task"]].add(str(hyp["key"]))
    summary: dict[str, Any] = {"normalizer": normalizer, "references": len(references),
                               "outputs_without_reference": unmatched, "tasks": {}}
    details: list[dict[str, Any]] = []
    for task in sorted(by_task):
        parts = task_parts(task)
        rows = by_task[task]
        # References that ask for this task (their tasks name it; no tasks means ASR, as in training) but got
        # no output score as empty outputs.
        for key, ref in references.items():
            if key not in seen[task] and any(_same_task(t, task) for t in ref.tasks or (DEFAULT_TASK,)):
                rows.append((ref, {"key": key, "task": task, "missing": True}))
        entry: dict[str, Any] = {"outputs": sum(not h.get("missing") for _, h in rows),
                                 "missing_outputs": sum(bool(h.get("missing")) for _, h in rows),
                                 "unparsed": sum(bool(h.get("unparsed")) for _, h in rows)}
        if has_transcript(task):
            pairs, keys = [], []
            for ref, hyp in rows:
                if ref.text is not None and ref.text.strip():
                    pairs.append((norm(ref.text), norm(hyp.get("text") or "")))
                    keys.append(hyp["key"])
            entry["references_without_text"] = len(rows) - len(pairs)
            if pairs:
                entry.update(metrics.error_rates(pairs))
                for key, (r, h) in zip(keys, pairs):
                    counts, ops = metrics.align(r, h)
                    details.append({"key": key, "task": task, "wer": counts.rate, "errors": counts.errors,
                                    "reference_tokens": counts.reference_tokens, "ref": r, "hyp": h,
                                    "alignment": metrics.render_alignment(ops)})
        for name in label_fields(task):
            pairs = [(ref.labels[name], hyp.get(name)) for ref, hyp in rows if name in ref.labels]
            entry.setdefault("labels", {})[name] = metrics.label_scores(pairs, labels[name]).as_dict() if pairs else None
        if "<ALIGN>" in parts:
            pairs = [(ref.words, hyp.get("words") or []) for ref, hyp in rows if ref.words]
            entry["timestamps"] = metrics.timestamp_error(pairs, normalize=norm) if pairs else None
        if "<TRANSLATE>" in parts:
            pairs = [(ref.translation, hyp.get("translation") or "") for ref, hyp in rows if ref.translation]
            entry["translation"] = metrics.bleu(pairs) if pairs else None
        summary["tasks"][task] = entry
    return summary, details


def _same_task(tag: str, task: str) -> bool:
    try:
        return canonical_task(tag) == task
    except UnknownTaskError:
        return False


# ------------------------------------------------------------------------------------------------ writing

def markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table: one row per task and measure."""
    lines = ["| task | measure | value | count |", "|---|---|---|---|"]
    for task, entry in summary["tasks"].items():
        def row(measure: str, value: str, count: Any) -> None:
            lines.append(f"| `{task}` | {measure} | {value} | {count} |")

        if "wer" in entry:
            row("WER", f"{entry['wer']['rate']:.2%}", entry["wer"]["reference_tokens"])
            row("CER", f"{entry['cer']['rate']:.2%}", entry["cer"]["reference_tokens"])
        for name, scores in (entry.get("labels") or {}).items():
            if scores:
                row(f"{name} accuracy", f"{scores['accuracy']:.2%}", scores["count"])
                row(f"{name} macro-F1", f"{scores['macro_f1']:.3f}", scores["count"])
        if entry.get("timestamps") and entry["timestamps"]["mae_ms"] is not None:
            t = entry["timestamps"]
            row("word boundary MAE", f"{t['mae_ms']:.0f} ms", f"{t['matched_words']}/{t['reference_words']} words")
        if entry.get("translation"):
            row("BLEU", f"{entry['translation']['bleu']:.2f}", entry["translation"]["count"])
        if entry["missing_outputs"] or entry["unparsed"]:
            row("missing / unparsed outputs", f"{entry['missing_outputs']} / {entry['unparsed']}", entry["outputs"])
    return "\n".join(lines)


def write_report(summary: dict[str, Any], details: list[dict[str, Any]], out_dir: str | Path,
                 plots: bool = True) -> list[Path]:
    """summary.json, summary.md, alignments.txt and per task and label confusion_*.txt / .png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "summary.json", out / "summary.md", out / "alignments.txt"]
    written[0].write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    written[1].write_text(markdown(summary) + "\n")
    with open(written[2], "w", encoding="utf-8") as f:
        for d in sorted(details, key=lambda d: (d["task"], str(d["key"]))):
            ref, hyp, ops = d["alignment"]
            f.write(f"{d['key']} {d['task']} WER {d['wer']:.2%} ({d['errors']}/{d['reference_tokens']})\n"
                    f"REF: {ref}\nHYP: {hyp}\n     {ops}\n\n")
    for task, entry in summary["tasks"].items():
        stem = task_file_stem(task)
        for name, scores in (entry.get("labels") or {}).items():
            if not scores:
                continue
            result = metrics.LabelScores(scores["labels"], scores["confusion"], scores["per_class"])
            text_path = out / f"confusion_{stem}_{name}.txt"
            text_path.write_text(result.confusion_text() + "\n")
            written.append(text_path)
            if plots:
                png = out / f"confusion_{stem}_{name}.png"
                metrics.plot_confusion(result, str(png), f"{task} {name}")
                written.append(png)
    return written
