"""Make the real_small recipe's manifests from ../shared/data, with held-out speakers.

    python recipes/real_small/prepare.py DATA_DIR --out EXP/data [--test-clips N]

Writes the training part per source (train_an4.jsonl, train_speechocean.jsonl, train_ravdess.jsonl: the
training configs give each its tasks) and three test sets, each line a copy of the source manifest's line with
an absolute audio path and the task tags the recipe decodes on that source:
  an4 (ASR, gender)                 train: AN4's train split            test_an4: AN4's test split (its own speakers)
  speechocean762_train (ASR, gender, age child <= 12 / adult)
                                    train: 60 speakers                  test_speechocean: 15 held-out speakers
  ravdess_half (emotion, gender)    train: 10 actors                    test_ravdess: 2 held-out actors
The held-out speakers are chosen by rule, not by hand: in each (gender, child/adult) group sorted by speaker
id, every fifth speaker; for RAVDESS the last male and the last female actor.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

SOURCES = {  # folder -> the task of its training and test lines
    "an4": "<TRANSCRIBE> <GENDER>",
    "speechocean762_train": "<TRANSCRIBE> <AGE> <GENDER>",
    "ravdess_half": "<EMOTION> <GENDER>",
}


def read(folder: Path) -> list[dict]:
    manifest = folder / "manifest.jsonl"
    if not manifest.is_file():
        raise SystemExit(f"{manifest} is missing: pass the folder holding an4/, speechocean762_train/ and "
                         "ravdess_half/ (../shared/data)")
    rows = []
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            row["audio"] = str((folder / row["audio"]).resolve())
            row["tasks"] = [SOURCES[folder.name]]
            rows.append(row)
    return rows


def held_out_speakers(rows: list[dict], group) -> set[str]:
    """Every fifth speaker of each group (sorted ids): a fixed, balanced choice."""
    groups: dict[object, set[str]] = defaultdict(set)
    for row in rows:
        groups[group(row)].add(row["speaker"])
    return {speaker for members in groups.values() for speaker in sorted(members)[2::5]}


def split(data: Path) -> dict[str, list[dict]]:
    an4 = read(data / "an4")
    ocean = read(data / "speechocean762_train")
    ravdess = read(data / "ravdess_half")
    ocean_out = held_out_speakers(ocean, lambda r: (r["gender"], int(r["age"]) <= 12))
    actors = sorted({r["speaker"] for r in ravdess}, key=lambda s: int(s.split("_")[-1]))
    ravdess_out = {max((a for a in actors if any(r["speaker"] == a and r["gender"] == g for r in ravdess)),
                       key=lambda s: int(s.split("_")[-1])) for g in ("male", "female")}
    return {
        "train_an4": [r for r in an4 if r["split"] == "train"],
        "train_speechocean": [r for r in ocean if r["speaker"] not in ocean_out],
        "train_ravdess": [r for r in ravdess if r["speaker"] not in ravdess_out],
        "test_an4": [r for r in an4 if r["split"] == "test"],
        "test_speechocean": [r for r in ocean if r["speaker"] in ocean_out],
        "test_ravdess": [r for r in ravdess if r["speaker"] in ravdess_out],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="the folder holding an4/, speechocean762_train/ and ravdess_half/")
    parser.add_argument("--out", required=True, help="where to write the train_*.jsonl and test_*.jsonl sets")
    parser.add_argument("--test-clips", type=int, help="keep only this many clips of each test set (quick runs)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = split(Path(args.data))
    if args.test_clips is not None:
        sets = {name: rows if name.startswith("train") else rows[:: max(1, len(rows) // args.test_clips)][: args.test_clips]
                for name, rows in sets.items()}
    train_speakers = {r["speaker"] for name, rows in sets.items() if name.startswith("train") for r in rows}
    for name, rows in sets.items():
        if name.startswith("test"):
            overlap = {r["speaker"] for r in rows} & train_speakers
            if overlap:
                raise SystemExit(f"{name} shares speakers with train: {sorted(overlap)}")
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"{name}: {len(rows)} clips, {len({r['speaker'] for r in rows})} speakers, "
              f"{sum(r['duration'] for r in rows) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
