"""Data-layer benchmarks: each prints osum's figure, a baseline measured in the same run, and the ratio.

    python benchmarks/data_layer.py [--data ../shared/data] [--only scan,pack,loader,padding]

1. scan:    durations of every file in the data folder, from headers vs by decoding the whole file.
2. pack:    `osum data pack` throughput (MB/s, utterances/s) vs a plain copy of the same bytes, same disk.
3. loader:  osum's loader (shards, buckets, batch log-mel, 2 worker processes) vs a naive map-style
            torch DataLoader with WhisperFeatureExtractor padding every clip to 30 s (2 workers).
4. padding: padding fraction of batches on AN4 + speechocean762: duration buckets vs OSUM's sort-buffer
            batching (shuffle buffer 1500, sort buffer 500, max_frames_in_batch 3900).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

from osum.audio import audio_info
from osum.data.loader import Item, LoaderConfig, SpeechLoader, batch_items
from osum.data.manifest import read_manifest
from osum.data.problems import Problems
from osum.data.shards import PackOptions, pack_shards

SETS = ("an4", "speechocean762_train", "ravdess_half", "ci_small")


def row(name: str, ours: float, base: float, unit: str, higher_is_better: bool = True) -> None:
    ratio = ours / base if higher_is_better else base / ours
    print(f"  {name:<46} osum {ours:>10.2f} {unit:<12} baseline {base:>10.2f} {unit:<12} ratio {ratio:6.2f}x")


def samples_of(data: Path, names) -> list:
    out = []
    for name in names:
        manifest = data / name / "manifest.jsonl"
        if manifest.is_file():
            out.extend(read_manifest(manifest, problems=Problems()))
    return out


def bench_scan(data: Path) -> None:
    files = sorted({s.audio for s in samples_of(data, SETS)})
    for f in files:  # warm the page cache so both sides read from memory
        Path(f).read_bytes()
    t = time.perf_counter()
    header = [frames / rate for frames, rate in map(audio_info, files)]
    t_header = time.perf_counter() - t
    t = time.perf_counter()
    decoded = []
    for f in files:
        wave, rate = sf.read(f, dtype="float32")
        decoded.append(len(wave) / rate)
    t_decode = time.perf_counter() - t
    assert all(abs(a - b) < 1e-3 for a, b in zip(header, decoded))
    print(f"1. duration scan of {len(files)} files ({sum(header) / 3600:.2f} h), one process each:")
    row("files per second (osum header vs full decode)", len(files) / t_header, len(files) / t_decode, "files/s")
    t = time.perf_counter()
    for f in files:
        sf.info(f)
    t_sfinfo = time.perf_counter() - t
    row("soundfile.info header vs full decode", len(files) / t_sfinfo, len(files) / t_decode, "files/s")
    from osum.data.manifest import fill_durations

    samples = samples_of(data, SETS)
    for s in samples:
        s.duration = None
    t = time.perf_counter()
    fill_durations(samples, Problems(), workers=2)
    t_parallel = time.perf_counter() - t
    row("osum fill_durations, 2 processes, vs full decode", len(files) / t_parallel, len(files) / t_decode, "files/s")


def bench_pack(data: Path, work: Path) -> None:
    samples = samples_of(data, ("an4", "speechocean762_train"))
    sources = [s.audio for s in samples]
    size = sum(os.path.getsize(f) for f in sources)
    for f in sources:
        Path(f).read_bytes()
    copy_dir = work / "copy"
    copy_dir.mkdir()
    t = time.perf_counter()
    for i, f in enumerate(sources):
        shutil.copyfile(f, copy_dir / f"{i}.flac")
    os.sync()
    t_copy = time.perf_counter() - t
    print(f"2. packing {len(samples)} utterances ({size / 1e6:.1f} MB of 16 kHz FLAC) vs a plain copy (1 process):")
    for fmt, workers, verify, label in (
        ("flac", 1, True, "FLAC checked, stored as is, 1 worker"),
        ("flac", 2, True, "FLAC checked, stored as is, 2 workers"),
        ("flac", 1, False, "--headers-only: FLAC stored unchecked, 1 worker"),
        ("wav", 2, True, "decode + encode WAV, 2 workers"),
    ):
        out = work / f"shards_{fmt}_{workers}_{verify}"
        t = time.perf_counter()
        result = pack_shards(samples, out, per_shard=500, workers=workers,
                             options=PackOptions(audio_format=fmt, verify=verify))
        os.sync()
        t_pack = time.perf_counter() - t
        row(f"pack ({label})", size / 1e6 / t_pack, size / 1e6 / t_copy, "MB/s")
        print(f"  {'':46} {result.written / t_pack:.0f} utterances/s, {result.bytes_written / 1e6:.1f} MB written")


def bench_loader(data: Path, work: Path, limit: int) -> None:
    import torch
    from transformers import WhisperFeatureExtractor

    samples = samples_of(data, ("an4", "speechocean762_train"))
    random.Random(0).shuffle(samples)
    samples = samples[:limit]
    audio_seconds = sum(s.duration for s in samples)
    pack_shards(samples, work / "loader_shards", per_shard=100, workers=2, options=PackOptions(audio_format="keep"))

    extractor = WhisperFeatureExtractor(feature_size=80)

    class Naive(torch.utils.data.Dataset):
        def __len__(self):
            return len(samples)

        def __getitem__(self, i):
            wave, rate = sf.read(samples[i].audio, dtype="float32")
            return torch.from_numpy(extractor(wave, sampling_rate=rate, return_tensors="np").input_features[0])

    def run_naive() -> float:
        loader = torch.utils.data.DataLoader(Naive(), batch_size=16, num_workers=2)
        t = time.perf_counter()
        for _ in loader:
            pass
        return time.perf_counter() - t

    def run_osum() -> float:
        loader = SpeechLoader([work / "loader_shards"], LoaderConfig(num_workers=2, max_frames_in_batch=12000))
        t = time.perf_counter()
        count = sum(b.size for b in loader)
        elapsed = time.perf_counter() - t
        loader.close()
        assert count == len(samples), count
        return elapsed

    t_osum, t_naive = run_osum(), run_naive()
    print(f"3. loader with log-mel features, {len(samples)} utterances ({audio_seconds / 60:.1f} min), 2 workers:")
    row("audio seconds per second", audio_seconds / t_osum, audio_seconds / t_naive, "audio s/s")


def osum_sort_batches(lengths: list[int], seed: int = 0, shuffle_size=1500, sort_size=500, budget=3900) -> list[list[int]]:
    """OSUM/WeNet's pipeline: shuffle buffer -> sort buffer -> dynamic batch under max_frames_in_batch."""
    rng = random.Random(seed)

    def shuffled(xs):
        buf = []
        for x in xs:
            buf.append(x)
            if len(buf) >= shuffle_size:
                rng.shuffle(buf)
                yield from buf
                buf = []
        rng.shuffle(buf)
        yield from buf

    def sorted_chunks(xs):
        buf = []
        for x in xs:
            buf.append(x)
            if len(buf) >= sort_size:
                yield from sorted(buf)
                buf = []
        yield from sorted(buf)

    batches, buf, longest = [], [], 0
    for x in sorted_chunks(shuffled(lengths)):
        longest_next = max(longest, x)
        if buf and longest_next * (len(buf) + 1) > budget:
            batches.append(buf)
            buf, longest_next = [], x
        buf.append(x)
        longest = longest_next
    if buf:
        batches.append(buf)
    return batches


def padding_fraction(batches: list[list[int]]) -> float:
    real = sum(sum(b) for b in batches)
    padded = sum(len(b) * max(b) for b in batches)
    return 1 - real / padded


def bench_padding(data: Path) -> None:
    samples = samples_of(data, ("an4", "speechocean762_train"))
    lengths = [int(s.duration * 16000) // 160 for s in samples]
    random.Random(0).shuffle(lengths)
    from osum.data.sample import Sample

    print(f"4. padding on AN4 + speechocean762 ({len(lengths)} utterances):")
    for budget in (3900, 12000):
        theirs = osum_sort_batches(lengths, budget=budget)
        config = LoaderConfig(max_frames_in_batch=budget, shuffle=False)
        items = (Item(Sample(key=str(i), audio=""), n * 160, 0) for i, n in enumerate(lengths))
        ours = [[item.frames for item in batch] for batch in batch_items(items, config)]
        print(f"  max_frames_in_batch {budget}:")
        print(f"    {'duration buckets (osum, default ratio 1.05)':<48} padding {padding_fraction(ours):6.2%} in {len(ours)} batches")
        print(f"    {'sort buffer 500 after shuffle 1500 (OSUM)':<48} padding {padding_fraction(theirs):6.2%} in {len(theirs)} batches")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--only", default="scan,pack,loader,padding")
    parser.add_argument("--loader-utterances", type=int, default=1000)
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "an4" / "manifest.jsonl").is_file():
        print(f"data not found under {data}: pass --data DIR (the shared data folder)", file=sys.stderr)
        return 1
    chosen = args.only.split(",")
    print(f"machine: {os.cpu_count()} cores; data: {data}")
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        work = Path(tmp)
        if "scan" in chosen:
            bench_scan(data)
        if "pack" in chosen:
            bench_pack(data, work)
        if "loader" in chosen:
            bench_loader(data, work, args.loader_utterances)
        if "padding" in chosen:
            bench_padding(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
