"""Decoding speed through osum's API: batched vs one utterance at a time, on the CI clips.

    python benchmarks/decode.py [--data ../shared/data] [--clips 64] [--llm-layers 8 --llm-width 512]

The clips: ../shared/data/ci_small (real speech from several corpora, 8-48 kHz, WAV and FLAC), read and
resampled once before timing. The model: tiny.en + osum adapter + a random Qwen2 (benchmarks/common.py),
greedy, at most 24 new tokens, task <TRANSCRIBE>. Batched = `SpeechModel.generate_audio` on all clips
(length-sorted batches under its frame budget, as `osum decode` does); one at a time = the same call per
clip. Printed: real-time factor (processing seconds per audio second; lower is faster), the ratio, and
whether the outputs are identical.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, small_speech_llm  # noqa: E402

from osum.audio import load_audio  # noqa: E402
from osum.infer.api import SpeechModel  # noqa: E402
from osum.infer.inputs import AudioInput  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--llm-layers", type=int, default=8)
    parser.add_argument("--llm-width", type=int, default=512)
    args = parser.parse_args()
    manifest = Path(args.data) / "ci_small" / "manifest.jsonl"
    if not manifest.is_file():
        print(f"{manifest} not found: pass --data DIR", file=sys.stderr)
        return 1
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows = [r for r in rows if r.get("duration", 0) <= 30][: args.clips]
    audios = [AudioInput(r["id"], load_audio(str(manifest.parent / r["audio"]))) for r in rows]
    seconds = sum(a.duration for a in audios)
    llm, _ = small_speech_llm(args.llm_layers, args.llm_width)
    model = SpeechModel(llm)
    options = dict(task="<TRANSCRIBE>", max_new_tokens=24)
    model.generate_audio(audios[:2], **options)  # warm-up

    started = time.perf_counter()
    batched = model.generate_audio(audios, **options)
    t_batched = time.perf_counter() - started
    started = time.perf_counter()
    alone = [model.generate_audio([a], **options)[0] for a in audios]
    t_alone = time.perf_counter() - started

    same = sum(a["raw"] == b["raw"] for a, b in zip(batched, alone))
    params = sum(p.numel() for p in llm.llm.parameters()) / 1e6
    print(f"decode, {len(audios)} ci_small clips ({seconds:.0f} s of audio, {min(a.duration for a in audios):.1f}-"
          f"{max(a.duration for a in audios):.1f} s), tiny.en + osum adapter + {args.llm_layers}x{args.llm_width} "
          f"Qwen2 ({params:.0f}M, random), greedy, 24 new tokens, {torch.get_num_threads()} threads:")
    print(f"  {'batched (SpeechModel.generate_audio)':<40} RTF {t_batched / seconds:.4f}  ({t_batched:.1f} s)")
    print(f"  {'one at a time':<40} RTF {t_alone / seconds:.4f}  ({t_alone:.1f} s)   ratio {t_alone / t_batched:.2f}x")
    print(f"  identical outputs: {same}/{len(audios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
