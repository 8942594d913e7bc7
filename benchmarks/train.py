"""Training throughput: osum's loader + trainer vs a naive loop, and 1 vs 2 processes, on real speech.

    python benchmarks/train.py [--data ../shared/data] [--steps 30]

The model (same in every run): the bundled Whisper tiny.en encoder (real weights, frozen), osum's adapter,
and a random 4-layer 256-wide Qwen2 trained in full; AN4 train clips with their transcripts.

- osum: `osum.train.trainer.train` with the streaming loader (duration buckets under a 6,000-frame budget,
  one decoding worker), variable-length encoder.
- naive: the loop many projects start with: fixed batches of 8 in random order, audio decoded in the
  training process, features padded to Whisper's 30 s window (the encoder runs on 3,000 frames per clip).
- 2 processes: the osum run under torchrun (gloo, 1 thread each) vs 1 process (2 threads), same machine.

Figures are audio seconds trained per second of wall time, measured after the first step (warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def an4_train(data: Path, out: Path) -> Path:
    rows = [json.loads(line) for line in (data / "an4" / "manifest.jsonl").read_text().splitlines()]
    rows = [dict(r, audio=str(data / "an4" / r["audio"]), tasks=["asr"]) for r in rows if r.get("split") == "train"]
    path = out / "an4_train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_config(tmp: Path, manifest: Path, whisper: Path, steps: int) -> dict:
    from model_parts import tiny_llm_config, tiny_tokenizer

    tokenizer = tiny_tokenizer(tmp / "tokenizer", chat=True)
    llm = dict(tiny_llm_config(len(tokenizer)), hidden_size=256, intermediate_size=768, num_hidden_layers=4)
    return {
        "out_dir": str(tmp / "osum"),
        "model": {"encoder": {"path": str(whisper)}, "adapter": {"model_dim": 256, "ffn_dim": 512},
                  "llm": {"config": llm, "tokenizer": str(tmp / "tokenizer")}, "trainable": {"llm": True}},
        "data": {"train": [str(manifest)], "prompt_choice": "first",
                 "loader": {"max_frames_in_batch": 6000, "num_workers": 1}},
        "optim": {"lr": 1e-3}, "schedule": {"kind": "constant", "warmup_steps": 10},
        "train": {"max_steps": steps}, "checkpoint": {"every_steps": 0, "at_epoch_end": False},
        "log": {"every_steps": 1, "tensorboard": False, "progress": False},
    }


def throughput(out_dir: Path) -> tuple[float, float]:
    """(audio-s/s after the first step, mean samples per step) from a run's JSONL log."""
    records = [json.loads(l) for l in (out_dir / "train.log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"][1:]
    audio = sum(r["audio_seconds"] for r in steps)
    seconds = sum(r["audio_seconds"] / r["audio_s_per_s"] for r in steps)
    return audio / seconds, sum(r["samples"] for r in steps) / len(steps)


def run_osum(config: dict, tmp: Path, name: str, procs: int) -> tuple[float, float]:
    config = dict(config, out_dir=str(tmp / name))
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    if procs == 1:
        command = [sys.executable, "-m", "osum.cli", "train", str(path)]
        env = dict(os.environ)
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                   "-m", "osum.cli", "train", str(path)]
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // procs)))
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"osum train failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return throughput(tmp / name)


def run_naive(config: dict, manifest: Path, steps: int) -> float:
    """Fixed batches of 8, decoded in the loop, features padded to 30 s; the same model and optimizer."""
    from osum.audio import load_audio, log_mel_spectrogram
    from osum.config import from_dict
    from osum.prompt_set import load_prompts
    from osum.train.config import ModelSection
    from osum.train.trainer import build_model
    from osum.train.config import TrainConfig

    train_config = from_dict(TrainConfig, config)
    train_config.model.encoder.pad_to_30s = True  # Whisper's usual input: every clip padded to 30 s
    torch.manual_seed(0)
    model = build_model(train_config).train()
    prompt = load_prompts().pick("<TRANSCRIBE>", index=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    rows = [json.loads(l) for l in manifest.read_text().splitlines()]
    random.Random(0).shuffle(rows)
    audio_seconds, started = 0.0, None
    for step in range(steps + 1):
        batch = rows[step * 8 : (step + 1) * 8]
        waves = [load_audio(r["audio"]) for r in batch]
        features, lengths = log_mel_spectrogram(waves)
        out = model(features, lengths, [prompt] * len(batch), [r["text"] for r in batch])
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        if step == 0:
            started = time.perf_counter()  # after the warm-up step, as for osum
        else:
            audio_seconds += sum(len(w) for w in waves) / 16000
    return audio_seconds / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per osum run")
    parser.add_argument("--naive-steps", type=int, default=8)
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "an4" / "manifest.jsonl").is_file():
        print(f"data not found under {data}: pass --data DIR", file=sys.stderr)
        return 1
    from osum.convert.ct2_whisper import bundled_whisper_tiny_en

    whisper = bundled_whisper_tiny_en()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        manifest = an4_train(data, tmp)
        config = make_config(tmp, manifest, whisper, args.steps)
        osum_one, per_step = run_osum(config, tmp, "one", 1)
        osum_two, per_step_two = run_osum(config, tmp, "two", 2)
        naive = run_naive(config, manifest, args.naive_steps)
    print(f"Training throughput, AN4 train, tiny.en (frozen) + osum adapter + 4-layer 256-wide Qwen2, "
          f"{os.cpu_count()} cores:")
    print(f"  {'osum loader + trainer, 1 process':<44} {osum_one:8.1f} audio-s/s  ({per_step:.1f} clips/step)")
    print(f"  {'naive: batches of 8, padded to 30 s':<44} {naive:8.1f} audio-s/s   ratio {osum_one / naive:5.1f}x")
    print(f"  {'osum, 2 processes (torchrun, gloo)':<44} {osum_two:8.1f} audio-s/s   "
          f"{osum_two / osum_one:5.2f}x one process  ({per_step_two:.1f} clips/step over both)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
