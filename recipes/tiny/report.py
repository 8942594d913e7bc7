"""The tiny recipe's results table, from `osum decode`'s outputs: per held-out set and language, the error
rate (WER for English, CER for Mandarin), the label accuracies and the real-time factor.

    python recipes/tiny/report.py EXP_DIR [--out results.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from osum.data.manifest import read_manifest
from osum.infer.score import references_from_samples, score
from osum.prompt_set import load_prompts

TASK = "<TRANSCRIBE> <STYLE> <AGE> <GENDER>"
SETS = {"test_sentences": "new sentences, training voices", "test_voice": "new sentences, held-out voices"}


def rows_for(exp: Path, labels) -> list[dict]:
    rows = []
    for name, what in SETS.items():
        out = exp / "decode" / name
        summary = json.loads((out / "summary.json").read_text())
        samples = list(read_manifest(exp / "data" / f"{name}.jsonl"))
        hypotheses = [json.loads(line) for line in (out / "result.jsonl").read_text().splitlines() if line.strip()]
        for lang, measure in (("en", "wer"), ("zh", "cer")):
            keys = {s.key for s in samples if s.lang == lang}
            if not keys:
                continue
            references, _ = references_from_samples([s for s in samples if s.key in keys], labels)
            for ref in references.values():
                ref.tasks = (TASK,)
            result, _ = score(references, [h for h in hypotheses if h["key"] in keys], "basic", labels)
            entry = result["tasks"][TASK]
            rows.append({
                "set": f"{name} ({what})", "language": "English" if lang == "en" else "Mandarin",
                "clips": len(keys), "measure": measure.upper(), "error_rate": entry[measure]["rate"],
                **{f"{k}_accuracy": entry["labels"][k]["accuracy"] for k in ("gender", "style", "age")},
                "rtf": summary["real_time_factor"],
            })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| held-out set | language | clips | error rate | gender acc. | style acc. | age acc. | RTF |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['language']} | {r['clips']} | {r['measure']} {r['error_rate']:.1%} | "
                     f"{r['gender_accuracy']:.1%} | {r['style_accuracy']:.1%} | {r['age_accuracy']:.1%} | "
                     f"{r['rtf']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp", help="the recipe's output directory (holding data/, decode/, run/)")
    parser.add_argument("--out", help="also write the table (Markdown) and the rows (JSON) here")
    args = parser.parse_args()
    exp = Path(args.exp)
    labels = load_prompts(exp / "run" / "model" / "prompts.yaml").labels
    rows = rows_for(exp, labels)
    table = markdown(rows)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
