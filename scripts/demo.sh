#!/usr/bin/env bash
# The main job, end to end on this machine: synthesize labelled clips with espeak-ng, check them,
# pack them into shards, and stream them through the loader, printing the batch statistics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="${OSUM_DEMO_DIR:-exp/demo}"
rm -rf "$out/shards"
.venv/bin/osum data synth --out "$out/data" --count "${OSUM_DEMO_CLIPS:-40}"
.venv/bin/osum data check "$out/data/manifest.jsonl" --strict
.venv/bin/osum data pack "$out/data/manifest.jsonl" --out "$out/shards" --per-shard 10 --workers 2
.venv/bin/osum data batches "$out/shards/shards.list" max_frames_in_batch=4000 > "$out/batches.jsonl"
echo "first batches:"; head -n 3 "$out/batches.jsonl" | cut -c1-160
echo "summary:"; tail -n 1 "$out/batches.jsonl"
