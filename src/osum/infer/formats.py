"""Results -> text for people and tools: plain text, JSON lines, SRT / WebVTT subtitles, TSV."""

from __future__ import annotations

import json
from typing import Any

from ..tasks import LABEL_FIELDS

FORMATS = ("text", "json", "srt", "vtt", "tsv")


def _clock(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def cues(result: dict[str, Any]) -> list[tuple[float, float, str]]:
    """Subtitle cues: the pieces of long audio (one cue for a short input)."""
    segments = result.get("segments") or [{"start": 0.0, "end": result.get("duration") or 0.0, "text": result.get("text") or ""}]
    return [(s["start"], s["end"], s["text"]) for s in segments if s["text"]]


def srt(result: dict[str, Any]) -> str:
    return "".join(f"{n}\n{_clock(a, ',')} --> {_clock(b, ',')}\n{text}\n\n" for n, (a, b, text) in enumerate(cues(result), 1))


def vtt(result: dict[str, Any]) -> str:
    return "WEBVTT\n\n" + "".join(f"{_clock(a, '.')} --> {_clock(b, '.')}\n{text}\n\n" for a, b, text in cues(result))


def labels_text(result: dict[str, Any]) -> str:
    """'gender=male (0.97) age=adult (0.88)': the labels with their confidences."""
    confidence = result.get("confidence") or {}
    parts = []
    for name in LABEL_FIELDS:
        if result.get(name) is not None:
            c = confidence.get(name)
            parts.append(f"{name}={result[name]}" + (f" ({c:.2f})" if c is not None else ""))
    return " ".join(parts)


def one_line(result: dict[str, Any]) -> str:
    """The main answer of a result on one line: transcript, translation or reply, then the labels."""
    main = result.get("translation") or result.get("text") or ""
    if result.get("reply"):
        main = f"{main} -> {result['reply']}" if main else result["reply"]
    labels = labels_text(result)
    return f"{main} [{labels}]" if labels and main else (labels or main)


def render(results: list[dict[str, Any]], fmt: str) -> str:
    """All results in one of FORMATS."""
    if fmt == "json":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
    if fmt == "text":
        return "".join((f"{r['key']}\t" if len(results) > 1 else "") + one_line(r) + "\n" for r in results)
    if fmt == "tsv":
        head = "key\ttask\ttext\t" + "\t".join(LABEL_FIELDS) + "\tduration\n"
        rows = ["\t".join([str(r["key"]), r["task"], (r.get("text") or r.get("translation") or "").replace("\t", " ")]
                          + [r.get(n) or "" for n in LABEL_FIELDS] + [f"{r.get('duration') or 0:.3f}"]) + "\n" for r in results]
        return head + "".join(rows)
    if fmt in ("srt", "vtt"):
        write = srt if fmt == "srt" else vtt
        if len(results) == 1:
            return write(results[0])
        return "".join(f"# {r['key']}\n{write(r)}" for r in results)
    raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
