"""The whisper recipe's table: AN4 test WER (Whisper's English normalizer) of Whisper tiny.en before
fine-tuning (osum's decoder, and transformers' own Whisper pipeline as a cross-check) and after.

    python recipes/whisper/report.py EXP_DIR [--out results.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Where each run's summary is: `osum decode` writes OUT/<set name>/summary.json, `osum score` OUT/summary.json.
SUMMARIES = {"before": "before/test", "transformers": "transformers", "after": "after/test"}
RUNS = {
    "before": "Whisper tiny.en, before fine-tuning (osum decode)",
    "transformers": "Whisper tiny.en, before fine-tuning (transformers' own pipeline)",
    "after": "Whisper tiny.en fine-tuned on AN4 train (osum train + osum decode)",
}


def row_for(exp: Path, name: str) -> dict:
    summary = json.loads((exp / "decode" / SUMMARIES[name] / "summary.json").read_text())
    entry = summary["tasks"]["<TRANSCRIBE>"]
    return {"model": RUNS[name], "run": name, "clips": entry["outputs"], "wer": entry["wer"]["rate"],
            "cer": entry["cer"]["rate"], "sentence_error_rate": entry.get("sentence_error_rate"),
            "rtf": summary.get("real_time_factor")}


def markdown(rows: list[dict]) -> str:
    lines = ["| model | AN4 test clips | WER | CER | sentence error rate | RTF |", "|---|---|---|---|---|---|"]
    for r in rows:
        ser = "-" if r["sentence_error_rate"] is None else f"{r['sentence_error_rate']:.1%}"
        rtf = "-" if r["rtf"] is None else f"{r['rtf']:.3f}"
        lines.append(f"| {r['model']} | {r['clips']} | {r['wer']:.1%} | {r['cer']:.1%} | {ser} | {rtf} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp", help="the recipe's output directory (holding decode/)")
    parser.add_argument("--out", help="also write the table (Markdown) and the rows (JSON) here")
    args = parser.parse_args()
    exp = Path(args.exp)
    rows = [row_for(exp, name) for name in RUNS if (exp / "decode" / SUMMARIES[name] / "summary.json").is_file()]
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
