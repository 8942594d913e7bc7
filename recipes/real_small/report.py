"""The real_small recipe's results table, from `osum decode`'s and the Whisper baseline's `osum score`
summaries: per test set, the WER (Whisper's English normalizer), Whisper tiny.en's WER on the same clips where
it was run, and the label accuracies.

    python recipes/real_small/report.py EXP_DIR [--out results.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SETS = {
    "test_an4": "AN4 test (its own 9 speakers)",
    "test_speechocean": "speechocean762, 15 held-out speakers",
    "test_ravdess": "RAVDESS, 2 held-out actors",
}
LABEL_KINDS = ("gender", "age", "emotion")


def row_for(exp: Path, name: str) -> dict:
    summary = json.loads((exp / "decode" / name / "summary.json").read_text())
    row: dict = {"set": SETS[name], "clips": 0, "wer": None, "whisper_wer": None, "rtf": summary.get("real_time_factor")}
    for task, entry in summary["tasks"].items():
        row["clips"] = max(row["clips"], entry.get("outputs", 0))
        if "wer" in entry:
            row["wer"] = entry["wer"]["rate"]
        for kind, result in entry.get("labels", {}).items():
            row[f"{kind}_accuracy"] = result["accuracy"]
    baseline = exp / "decode" / f"whisper_{name}" / "summary.json"
    if baseline.is_file():
        row["whisper_wer"] = json.loads(baseline.read_text())["tasks"]["<TRANSCRIBE>"]["wer"]["rate"]
    return row


def cell(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def markdown(rows: list[dict]) -> str:
    lines = ["| test set | clips | WER | Whisper tiny.en WER | gender acc. | child/adult acc. | emotion acc. |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['clips']} | {cell(r['wer'])} | {cell(r['whisper_wer'])} | "
                     + " | ".join(cell(r.get(f"{k}_accuracy")) for k in LABEL_KINDS) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp", help="the recipe's output directory (holding decode/)")
    parser.add_argument("--out", help="also write the table (Markdown) and the rows (JSON) here")
    args = parser.parse_args()
    exp = Path(args.exp)
    rows = [row_for(exp, name) for name in SETS if (exp / "decode" / name / "summary.json").is_file()]
    if not rows:
        raise SystemExit(f"no decoded test set under {exp / 'decode'}: run the recipe first")
    table = markdown(rows)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
