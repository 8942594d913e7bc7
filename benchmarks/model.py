"""Model benchmarks: each prints osum's figure, a baseline measured in the same run, and the ratio.

    python benchmarks/model.py [--data ../shared/data]

1. encoder: Whisper tiny.en (the bundled real weights) on a batch of 8 real 1-5 s AN4 clips, osum's
   variable-length encoder vs transformers' WhisperEncoder on the same clips padded to 30 s; and the largest
   difference between the two on the real frames (they differ: Whisper was trained on padded input).
2. generation: a small speech LLM (tiny.en encoder, osum adapter, a random 8-layer 512-wide Qwen2 of 25M
   parameters) on 32 utterances, batched by 16 vs one at a time: utterances per second, and whether the
   outputs are identical. Batches are formed from length-sorted utterances, as `osum decode` forms them
   (the loader's duration buckets). The LLM is chosen larger than the encoder, as in every real speech LLM
   (OSUM: 0.3B encoder, 7B LLM): batching speeds up the LLM's decoding; the encoder is compute-bound on CPU
   and costs the same batched or not, so a toy LLM smaller than the encoder would measure the encoder.
   `--llm-layers 4 --llm-width 256` gives the toy figure too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from osum.audio import load_audio, log_mel_spectrogram

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, an4_clips, best_of, small_speech_llm  # noqa: E402


def bench_encoder(whisper_dir: Path, data: Path) -> None:
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from osum.models.whisper import WhisperEncoder

    waves = [load_audio(p) for p in an4_clips(data, 8, 1.0, 5.0)]
    ours = WhisperEncoder.from_pretrained(whisper_dir).eval()
    hf = WhisperForConditionalGeneration.from_pretrained(str(whisper_dir), local_files_only=True).get_encoder().eval()
    features, lengths = log_mel_spectrogram(waves)
    padded = torch.from_numpy(WhisperFeatureExtractor(feature_size=80)(waves, sampling_rate=16000, return_tensors="np").input_features)
    with torch.inference_mode():
        t_ours = best_of(lambda: ours(features, lengths))
        t_hf = best_of(lambda: hf(padded))
        out, out_lengths = ours(features, lengths)
        ref = hf(padded).last_hidden_state
        ours_padded, _ = ours(padded.transpose(1, 2))
    worst = max(float((out[i, :n] - ref[i, :n]).abs().max()) for i, n in enumerate(out_lengths.tolist()))
    cosine = torch.cat([torch.nn.functional.cosine_similarity(out[i, :n], ref[i, :n], dim=-1)
                        for i, n in enumerate(out_lengths.tolist())])
    audio = sum(len(w) for w in waves) / 16000
    print(f"1. Whisper tiny.en encoder, batch of 8 AN4 clips ({audio:.1f} s of audio), {torch.get_num_threads()} threads:")
    print(f"  {'osum, variable length':<44} {t_ours * 1000:8.1f} ms")
    print(f"  {'transformers WhisperEncoder, padded to 30 s':<44} {t_hf * 1000:8.1f} ms   ratio {t_hf / t_ours:5.1f}x")
    print(f"  same weights, osum on 30 s input vs transformers: max |diff| {float((ours_padded - ref).abs().max()):.2e}")
    print(f"  real frames, unpadded vs padded input: max |diff| {worst:.3f}, cosine mean {float(cosine.mean()):.3f}, "
          f"min {float(cosine.min()):.3f}")


def bench_generation(whisper_dir: Path, data: Path, layers: int, width: int) -> None:
    model, _ = small_speech_llm(layers, width)
    waves = [load_audio(p) for p in an4_clips(data, 32, 0.5, 8.0, seed=1)]
    prompts = ["Transcribe the speech."] * len(waves)
    settings = dict(max_new_tokens=24)

    def batched(size: int) -> list[str]:
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))  # similar lengths share a batch
        texts: list[str] = [""] * len(waves)
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            features, lengths = log_mel_spectrogram([waves[i] for i in chunk])
            for i, text in zip(chunk, model.generate(features, lengths, [prompts[i] for i in chunk], **settings)):
                texts[i] = text
        return texts

    one, sixteen = batched(1), batched(16)  # also the warm-up
    t_one = best_of(lambda: batched(1), repeats=2, warm_up=False)
    t_sixteen = best_of(lambda: batched(16), repeats=2, warm_up=False)
    new_tokens = sum(len(model.tokenizer(x)["input_ids"]) for x in one)
    params = sum(p.numel() for p in model.llm.parameters()) / 1e6
    print(f"2. generation, {len(waves)} AN4 utterances, tiny.en + osum adapter + {layers}-layer {width}-wide Qwen2 "
          f"({params:.0f}M, random), greedy, {new_tokens} tokens generated:")
    print(f"  {'batched by 16':<44} {len(waves) / t_sixteen:8.2f} utt/s")
    print(f"  {'one at a time':<44} {len(waves) / t_one:8.2f} utt/s   ratio {t_one / t_sixteen:5.2f}x")
    print(f"  identical outputs: {sixteen == one} ({sum(a == b for a, b in zip(sixteen, one))}/{len(one)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--only", default="encoder,generation")
    parser.add_argument("--llm-layers", type=int, default=8)
    parser.add_argument("--llm-width", type=int, default=512)
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "an4" / "manifest.jsonl").is_file():
        print(f"data not found under {data}: pass --data DIR", file=sys.stderr)
        return 1
    from osum.convert.ct2_whisper import bundled_whisper_tiny_en

    whisper_dir = bundled_whisper_tiny_en()
    if "encoder" in args.only:
        bench_encoder(whisper_dir, data)
    if "generation" in args.only:
        bench_generation(whisper_dir, data, args.llm_layers, args.llm_width)
    return 0


if __name__ == "__main__":
    sys.exit(main())
