"""AN4's own train / test split as two manifests with absolute audio paths (the recipe's only data step).

    python recipes/whisper/prepare.py ../shared/data --out exp/whisper/data [--test-clips N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="the shared data folder (holds an4/manifest.jsonl)")
    parser.add_argument("--out", required=True, help="folder for train.jsonl and test.jsonl")
    parser.add_argument("--train-clips", type=int, default=0, help="keep only the first N training clips (tests)")
    parser.add_argument("--test-clips", type=int, default=0, help="keep only the first N test clips (tests)")
    args = parser.parse_args()
    root = Path(args.data) / "an4"
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        raise SystemExit(f"{manifest} not found: point the recipe at the shared data (OSUM_DATA=...)")
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, limit in (("train", args.train_clips), ("test", args.test_clips)):
        chosen = [dict(row, audio=str((root / row["audio"]).resolve())) for row in rows if row["split"] == split]
        chosen = chosen[:limit] if limit else chosen
        if not chosen:
            raise SystemExit(f"{manifest}: no clips with split={split}")
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in chosen)
        print(f"{split}: {len(chosen)} clips, {sum(r['duration'] for r in chosen) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
