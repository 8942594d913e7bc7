"""Long audio -> pieces the encoder can take, and the pieces' outputs -> one result for the whole file.

Splitting is energy based: a piece ends in the middle of the quietest 200 ms (lowest mean energy) in the
second half of the window, so cuts fall in pauses between words whenever there are pauses; speech with no
pause at all is still cut (at its quietest point), never dropped. Pieces do not overlap, so nothing is
transcribed twice; their silent edges are trimmed and silent pieces skipped (`trim_silence`).
Stitching joins the texts, shifts word timestamps by each piece's start, and takes for each label the
value with the most speech behind it (duration times confidence).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..audio import SAMPLE_RATE
from ..tasks import LABEL_FIELDS
from ..text import is_cjk

HOP = SAMPLE_RATE // 100  # 10 ms energy frames
QUIET = 20  # frames (200 ms) averaged when looking for a pause


def _energy(wave: np.ndarray) -> np.ndarray:
    frames = len(wave) // HOP
    return np.square(wave[: frames * HOP].astype(np.float64)).reshape(frames, HOP).mean(axis=1)


def split_points(wave: np.ndarray, max_seconds: float = 30.0) -> list[tuple[int, int]]:
    """[(start, end)] sample ranges covering the whole signal, each at most `max_seconds` long."""
    limit = int(max_seconds * SAMPLE_RATE)
    if len(wave) <= limit:
        return [(0, len(wave))]
    smooth = np.convolve(_energy(wave), np.ones(QUIET) / QUIET, mode="same")
    pieces, start = [], 0
    while len(wave) - start > limit:
        # Cut in the window's second half, leaving at least a second for the last piece, in the middle of
        # the quietest stretch (a pause of equal quiet frames: its centre, not its edge).
        lo = (start + limit // 2) // HOP
        hi = min(start + limit, len(wave) - SAMPLE_RATE) // HOP - QUIET // 2
        if hi <= lo:
            cut = start + limit
        else:
            window = smooth[lo:hi]
            quiet = np.flatnonzero(window <= window.min() * 1.05 + 1e-12)
            best = int(window.argmin())
            run_start = run_end = int(np.searchsorted(quiet, best))
            while run_start > 0 and quiet[run_start - 1] == quiet[run_start] - 1:
                run_start -= 1
            while run_end + 1 < len(quiet) and quiet[run_end + 1] == quiet[run_end] + 1:
                run_end += 1
            cut = (lo + (int(quiet[run_start]) + int(quiet[run_end])) // 2) * HOP
        pieces.append((start, cut))
        start = cut
    pieces.append((start, len(wave)))
    return pieces


def trim_silence(wave: np.ndarray, pieces: list[tuple[int, int]], margin: float = 0.2) -> list[tuple[int, int]]:
    """Pieces of long audio without their leading and trailing silence (a margin kept); silent pieces dropped.

    Models hallucinate on long silence, and a pause left at a piece's edge is not speech anyway. Silence
    is 40 dB below the loud frames of the whole file. A single piece (short audio) is left as it is.
    """
    if len(pieces) < 2:
        return pieces
    energy = _energy(wave)
    floor = max(np.percentile(energy, 95) * 1e-4, 1e-10)
    keep = int(margin * SAMPLE_RATE)
    out = []
    for a, b in pieces:
        voiced = np.flatnonzero(energy[a // HOP : b // HOP] > floor)
        if len(voiced) == 0:
            continue
        first, last = a + int(voiced[0]) * HOP, a + (int(voiced[-1]) + 1) * HOP
        start, end = max(a, first - keep), min(b, last + keep)
        if end - start >= 401:  # Whisper's shortest input
            out.append((start, end))
    return out


def _join(texts: list[str]) -> str:
    """Join piece texts with a space, except between two CJK characters."""
    out = ""
    for text in (t.strip() for t in texts):
        if not text:
            continue
        if out and not (is_cjk(out[-1]) and is_cjk(text[0])):
            out += " "
        out += text
    return out


def stitch(pieces: list[dict[str, Any]], offsets: list[float], durations: list[float]) -> dict[str, Any]:
    """One result from the results of consecutive pieces (offsets and durations in seconds)."""
    if len(pieces) == 1:
        result = dict(pieces[0])
        result["segments"] = [{"start": 0.0, "end": round(durations[0], 3), "text": result.get("text") or ""}]
        return result
    result: dict[str, Any] = {}
    for name in ("text", "reply", "translation"):
        values = [p.get(name) for p in pieces]
        result[name] = _join([v for v in values if v]) if any(v is not None for v in values) else None
    if any(p.get("words") is not None for p in pieces):
        result["words"] = [dict(w, start=round(w["start"] + off, 2), end=round(w["end"] + off, 2))
                           for p, off in zip(pieces, offsets) for w in (p.get("words") or [])]
    else:
        result["words"] = None
    confidence: dict[str, float] = {}
    for name in LABEL_FIELDS:
        votes: dict[str, float] = {}
        weights: dict[str, float] = {}
        for p, seconds in zip(pieces, durations):
            value = p.get(name)
            if value is None:
                continue
            c = (p.get("confidence") or {}).get(name, 1.0)
            votes[value] = votes.get(value, 0.0) + seconds * c
            weights[value] = weights.get(value, 0.0) + seconds
        result[name] = max(votes, key=votes.get) if votes else None
        if votes and any(p.get("confidence") for p in pieces):
            confidence[name] = votes[result[name]] / weights[result[name]]  # mean confidence of the winner
    result["confidence"] = confidence or None
    result["unparsed"] = any(p.get("unparsed") for p in pieces)
    result["raw"] = [p.get("raw") for p in pieces]
    result["segments"] = [{"start": round(off, 3), "end": round(off + d, 3), "text": p.get("text") or ""}
                          for p, off, d in zip(pieces, offsets, durations)]
    return result
