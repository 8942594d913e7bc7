"""Whisper zero-shot: transcribe a manifest with a Whisper model's own decoder (greedy, English, no
timestamps) and write `key<TAB>text` lines that `osum score` reads: the baseline the recipe compares with.

    python recipes/real_small/whisper_baseline.py WHISPER_DIR MANIFEST --out text [--batch 16]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from osum.audio import load_audio
from osum.data.manifest import read_manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("whisper", help="a Hugging Face Whisper directory (osum convert ct2-whisper makes one)")
    parser.add_argument("manifest", help="any manifest osum reads")
    parser.add_argument("--out", required=True, help="the `key<TAB>text` file to write")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    processor = WhisperProcessor.from_pretrained(args.whisper)
    model = WhisperForConditionalGeneration.from_pretrained(args.whisper).eval()
    samples = list(read_manifest(args.manifest))
    started, seconds, lines = time.perf_counter(), 0.0, []
    for first in range(0, len(samples), args.batch):
        chunk = samples[first : first + args.batch]
        waves = [load_audio(s.audio, start=s.start, end=s.end) for s in chunk]
        seconds += sum(len(w) for w in waves) / 16000
        features = processor(waves, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(features, num_beams=1, do_sample=False)
        for sample, text in zip(chunk, processor.batch_decode(ids, skip_special_tokens=True)):
            lines.append(f"{sample.key}\t{' '.join(text.split())}\n")
    with open(args.out, "w", encoding="utf-8") as out:
        out.writelines(lines)
    elapsed = time.perf_counter() - started
    print(f"{len(lines)} clips, {seconds:.0f} s of audio in {elapsed:.1f} s (RTF {elapsed / max(seconds, 1e-9):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
