"""The `osum data` commands as plain functions: each does the work and returns the summary the command prints.

They return the Problems account too, so the caller decides what a skipped sample means (`--strict`,
`--report`). Nothing here imports torch except the loader dry run, which needs the loader.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from .manifest import fill_durations, read_manifest, write_manifest
from .problems import Problems
from .shards import PackOptions, pack_shards


def convert(
    src: str, dst: str, src_format: str | None, dst_format: str, workers: int = 0, allow_pipes: bool = True,
    durations: bool = True,
) -> tuple[dict[str, Any], Problems]:
    """Convert a manifest between formats; durations are read from the audio when asked (always for FunASR)."""
    problems = Problems()
    started = time.perf_counter()
    samples = list(read_manifest(src, src_format, problems, allow_pipes))
    if dst_format == "funasr" or durations:
        samples = fill_durations(samples, problems, workers, allow_pipes)
    written = write_manifest(samples, dst, dst_format)
    segments = sum(1 for s in samples if s.start is not None or s.end is not None)
    summary: dict[str, Any] = {
        "written": written,
        **problems.account(written),
        "seconds": round(time.perf_counter() - started, 2),
        "dst": str(dst),
    }
    if segments and dst_format == "funasr":
        summary["note"] = (
            f"{segments} samples are segments of longer files; FunASR's own loader reads whole files "
            "(osum reads the start/end fields; `osum data pack` cuts them into shards)"
        )
    return summary, problems


def pack(
    src: str, out: str, src_format: str | None, options: PackOptions, per_shard: int = 1000, workers: int = 1,
    shuffle: bool = False, seed: int = 0,
) -> tuple[dict[str, Any], Problems]:
    """Pack a manifest into tar shards under `out` (with shards.list); reusable shards are kept."""
    problems = Problems()
    samples = list(read_manifest(src, src_format, problems, options.allow_pipes))
    started = time.perf_counter()
    result = pack_shards(samples, out, per_shard, workers, options, shuffle, seed, problems)
    seconds = time.perf_counter() - started
    summary = {
        "shards": len(result.shards),
        "shards_reused": result.reused,
        "stale_shards_removed": result.stale_removed,
        "utterances_written": result.written,
        "megabytes_written": round(result.bytes_written / 1e6, 2),
        "seconds": round(seconds, 2),
        **problems.account(result.utterances),
        "list": str(Path(out) / "shards.list"),
    }
    return summary, problems


def batches(
    items: list[str], config_file: str | None, emit: Callable[[dict[str, Any]], None], epoch: int = 0,
    max_batches: int = 0,
) -> Problems:
    """Dry-run the loader: `emit` one dict per batch, then a summary; under torchrun each rank runs its share.

    `items` are sources (shard lists, manifests, data configs .yaml) and key=value loader overrides.
    """
    from ..config import load_config
    from .loader import LoaderConfig, SpeechLoader, env_rank_world, read_data_config

    overrides = [a for a in items if "=" in a and not Path(a).exists()]
    config = load_config(LoaderConfig, config_file, overrides)
    sources: list = []
    for src in (a for a in items if a not in overrides):
        sources.extend(read_data_config(src) if str(src).endswith((".yaml", ".yml")) else [src])
    rank, world_size = env_rank_world()
    loader = SpeechLoader(sources, config, rank=rank, world_size=world_size)
    loader.set_epoch(epoch)
    started = time.perf_counter()
    try:
        for count, batch in enumerate(loader, 1):
            emit({"batch": batch.index, "size": batch.size, "real_frames": batch.real_frames,
                  "padded_frames": batch.padded_frames, "tokens": batch.tokens, "keys": batch.keys})
            if max_batches and count >= max_batches:
                break
    finally:
        loader.close()
    seconds = time.perf_counter() - started
    stats = loader.stats
    audio_seconds = stats.real_frames / 100
    emit(
        {
            "summary": True,
            "samples": stats.samples,
            "batches": stats.batches,
            "real_frames": stats.real_frames,
            "padded_frames": stats.padded_frames,
            "padding_fraction": round(stats.padding_fraction, 4),
            "audio_hours": round(audio_seconds / 3600, 4),
            "seconds": round(seconds, 2),
            "audio_seconds_per_second": round(audio_seconds / seconds, 1) if seconds else None,
            **loader.problems.account(stats.samples),
        }
    )
    return loader.problems


def synth(out: str, count: int, seed: int = 0, mandarin: float = 0.0, held_out: float = 0.0,
          workers: int = 2) -> dict[str, Any]:
    """Synthesize `count` labelled clips with espeak-ng into `out`; returns the manifest written."""
    from .synth import synthesize

    started = time.perf_counter()
    manifest = synthesize(out, count, seed, mandarin=mandarin, held_out=held_out, workers=workers)
    return {"manifest": str(manifest), "clips": count, "seconds": round(time.perf_counter() - started, 2)}
