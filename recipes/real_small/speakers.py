"""Gender on speechocean762's held-out speakers, one row per speaker: the manifest's gender and age, the
speaker's median pitch (F0) and how many of the speaker's clips the model labelled with the right gender.

    python recipes/real_small/speakers.py EXP_DIR [--out speakers.md]

Why: a gender figure over 15 speakers is a handful of voices, and the pitch says which voices a listener
(or a model) could sex at all: children's voices, before puberty, overlap between boys and girls.
The pitch is a plain autocorrelation estimate over voiced 64 ms frames (enough to tell 120 Hz from 220 Hz).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from osum.audio import SAMPLE_RATE, load_audio

CHILD_MAX_AGE = 12  # the recipe's child / adult line (prepare.py)


def median_pitch(wave: np.ndarray, low_hz: float = 60.0, high_hz: float = 500.0) -> float:
    """Median F0 in Hz over the frames that are loud and periodic enough; NaN when there are none."""
    size, hop = 1024, 320
    floor = 0.02 * float(np.abs(wave).max() or 1.0)
    shortest, longest = int(SAMPLE_RATE / high_hz), int(SAMPLE_RATE / low_hz)
    found = []
    for start in range(0, len(wave) - size, hop):
        frame = wave[start:start + size] - wave[start:start + size].mean()
        if np.sqrt((frame ** 2).mean()) < floor:
            continue  # silence or breath
        correlation = np.correlate(frame, frame, "full")[size - 1:]
        lag = shortest + int(np.argmax(correlation[shortest:longest]))
        if correlation[lag] > 0.5 * correlation[0]:  # clearly periodic: voiced
            found.append(SAMPLE_RATE / lag)
    return float(np.median(found)) if found else float("nan")


def speaker_rows(exp: Path) -> list[dict]:
    clips = [json.loads(line) for line in (exp / "data" / "test_speechocean.jsonl").read_text().splitlines() if line.strip()]
    decoded = {}
    results = exp / "decode" / "test_speechocean" / "result.jsonl"
    for line in results.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            decoded[row["key"]] = row.get("gender")
    speakers: dict[str, dict] = defaultdict(lambda: {"pitches": [], "right": 0, "decoded": 0})
    for clip in clips:
        entry = speakers[clip["speaker"]]
        entry.update(speaker=clip["speaker"], gender=clip["gender"], age=int(clip["age"]))
        entry["pitches"].append(median_pitch(load_audio(clip["audio"])))
        if clip["id"] in decoded:
            entry["decoded"] += 1
            entry["right"] += decoded[clip["id"]] == clip["gender"]
    rows = []
    for entry in speakers.values():
        pitches = [p for p in entry.pop("pitches") if not np.isnan(p)]
        entry["pitch_hz"] = float(np.median(pitches)) if pitches else None
        rows.append(entry)
    return sorted(rows, key=lambda r: (r["age"] > CHILD_MAX_AGE, r["gender"], r["age"], r["speaker"]))


def markdown(rows: list[dict]) -> str:
    lines = ["| speaker | gender | age | median pitch | gender right |", "|---|---|---|---|---|"]
    for r in rows:
        pitch = "-" if r["pitch_hz"] is None else f"{r['pitch_hz']:.0f} Hz"
        lines.append(f"| {r['speaker']} | {r['gender']} | {r['age']} | {pitch} | {r['right']}/{r['decoded']} |")
    for name, group in (("children (<= 12)", [r for r in rows if r["age"] <= CHILD_MAX_AGE]),
                        ("adults", [r for r in rows if r["age"] > CHILD_MAX_AGE])):
        right, total = sum(r["right"] for r in group), sum(r["decoded"] for r in group)
        if total:
            lines.append(f"| {name}: {len(group)} speaker{'s' if len(group) != 1 else ''} | | | | {right}/{total} = {right / total:.1%} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp", help="the recipe's output directory (holding data/ and decode/)")
    parser.add_argument("--out", help="also write the table (Markdown) here")
    args = parser.parse_args()
    exp = Path(args.exp)
    if not (exp / "decode" / "test_speechocean" / "result.jsonl").is_file():
        raise SystemExit(f"{exp / 'decode' / 'test_speechocean' / 'result.jsonl'} is missing: run the recipe first")
    table = markdown(speaker_rows(exp))
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
