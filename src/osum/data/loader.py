"""The streaming loader: manifests and shards in, padded feature batches out, resumable mid-epoch.

Pipeline for one epoch on one rank, each step a small generator (WeNet's processor style):

  units (shards, or chunks of a manifest) -> weighted repeat + epoch-seeded shuffle -> this rank's share
  -> samples -> bounded shuffle buffer (compressed audio, not features) -> length from the header
  -> filters -> duration-bucket batching -> [worker processes] decode, resample, log-mel, collate

Everything before the workers is cheap and deterministic for a given (seed, epoch, rank), so the position
in an epoch is one number: batches handed out. Resuming replays the plan without decoding audio.
"""

from __future__ import annotations

import math
import os
import random
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
import yaml

from ..audio import (
    FRAMES_PER_SECOND,
    SAMPLE_RATE,
    AudioError,
    audio_info,
    fit_length,
    load_audio,
    log_mel_spectrogram,
    num_samples_at,
)
from ..lifetime import signal_when_parent_dies
from ..text import count_tokens
from .manifest import detect_format, read_manifest
from .problems import Problems
from .sample import Sample
from .shards import iter_tar_samples, shard_urls
from .spec_augment import SpecAugmentConfig, batch_generator, spec_augment


@dataclass
class LoaderConfig:
    """How samples become batches. Durations in seconds, frames are 10 ms feature frames."""

    n_mels: int = 80  # 80 for Whisper up to large-v2, 128 for large-v3
    min_duration: float = 0.1  # shorter samples are skipped (counted as too_short)
    max_duration: float = 30.0  # longer samples are skipped (counted as too_long); Whisper's window is 30 s
    max_text_tokens: int = 448  # samples with longer transcripts are skipped (text_too_long)
    shuffle: bool = True  # epoch-seeded shuffle of units and a sample shuffle buffer
    shuffle_buffer: int = 1000  # samples held (as compressed audio) for shuffling
    batching: Literal["dynamic", "static"] = "dynamic"  # static = a fixed number of samples per batch
    batch_size: int = 16  # samples per batch for static batching
    max_frames_in_batch: int = 12000  # dynamic: budget of padded frames (batch size x longest)
    max_tokens_in_batch: int = 0  # dynamic: budget of padded text tokens; 0 = no token budget
    max_batch_size: int = 512  # dynamic: never more samples than this in one batch
    bucket_ratio: float = 1.05  # dynamic: neighbouring duration buckets differ by this factor
    manifest_chunk: int = 1000  # a plain manifest is cut into units of this many samples
    num_workers: int = 1  # processes that decode audio and compute features; 0 = in this process
    prefetch: int = 4  # batches decoded ahead of the consumer
    seed: int = 0  # shuffling; each epoch (and rank) gets its own order from it
    allow_pipes: bool = True  # run Kaldi `command |` entries in wav.scp
    # The longest wait for a worker to decode one batch: a worker stuck (a hung `command |`, a dead NFS mount)
    # ends the run with a message naming the batch instead of blocking it for ever.
    worker_timeout: float = 3600.0
    # Masks bands of mel channels and runs of frames in training batches (data/spec_augment.py); off by default.
    # The trainer's dev loader never masks.
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)

    def __post_init__(self) -> None:
        if self.min_duration < 0 or self.max_duration <= self.min_duration:
            raise ValueError("need 0 <= min_duration < max_duration")
        if self.batch_size < 1 or self.max_batch_size < 1 or self.max_frames_in_batch < 1:
            raise ValueError("batch_size, max_batch_size and max_frames_in_batch must be positive")
        if self.bucket_ratio <= 1.0:
            raise ValueError("bucket_ratio must be greater than 1")
        if self.worker_timeout <= 0:
            raise ValueError("worker_timeout must be positive (seconds)")


@dataclass
class DataSource:
    """One data list: a shards.list, a shard, or any manifest; `weight` repeats it per epoch (0.5 = half).

    `tasks`, when given, replaces the samples' own task tags (e.g. train a gender-labelled set on
    `<TRANSCRIBE> <GENDER>` only); a sample with several tags trains on one of them per epoch.
    """

    path: str
    weight: float = 1.0
    name: str = ""
    format: str | None = None
    tasks: list[str] = field(default_factory=list)


def read_data_config(path: str | Path) -> list[DataSource]:
    """OSUM's multi-list data config: `name: {path: shards.list, weight: 3}` per entry."""
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a mapping of `name: {{path: ..., weight: ...}}` entries")
    sources = []
    for name, entry in data.items():
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or "path" not in entry:
            raise ValueError(f"{path}: entry '{name}' needs a 'path' (and optionally 'weight')")
        unknown = set(entry) - {"path", "weight", "format", "tasks"}
        if unknown:
            raise ValueError(f"{path}: entry '{name}' has unknown keys {sorted(unknown)}; allowed: path, weight, format, tasks")
        list_path = Path(str(entry["path"]))
        if not list_path.is_absolute() and not list_path.exists() and (path.parent / list_path).exists():
            list_path = path.parent / list_path
        weight = float(entry.get("weight", 1.0))
        if weight < 0:
            raise ValueError(f"{path}: entry '{name}' has a negative weight")
        tasks = entry.get("tasks") or []
        sources.append(DataSource(str(list_path), weight, str(name), entry.get("format"),
                                  [tasks] if isinstance(tasks, str) else list(tasks)))
    return sources


@dataclass
class Unit:
    """The smallest piece of data that is shuffled and split: a shard, or a chunk of a manifest."""

    source: int
    url: str | None = None
    samples: list[Sample] | None = None

    @property
    def name(self) -> str:
        return self.url or f"source{self.source}"


@dataclass
class Item:
    """A sample that passed the filters, with its length in 16 kHz samples decided from the header."""

    sample: Sample
    num_samples: int
    tokens: int

    @property
    def frames(self) -> int:
        return self.num_samples // (SAMPLE_RATE // FRAMES_PER_SECOND)


@dataclass
class Batch:
    """A collated batch. `features` [B, T, n_mels] are zero past each length; `mask` is True on real frames."""

    keys: list[str]
    samples: list[Sample]  # metadata (audio bytes dropped), in batch order
    features: torch.Tensor
    lengths: torch.Tensor
    mask: torch.Tensor
    tokens: int = 0
    index: int = 0  # position of this batch in the epoch's plan

    @property
    def size(self) -> int:
        return len(self.keys)

    @property
    def real_frames(self) -> int:
        return int(self.lengths.sum())

    @property
    def padded_frames(self) -> int:
        return int(self.features.shape[0] * self.features.shape[1])


@dataclass
class LoaderStats:
    samples: int = 0
    batches: int = 0
    real_frames: int = 0
    padded_frames: int = 0
    tokens: int = 0
    dropped_for_rank_balance: int = 0

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_frames / self.padded_frames if self.padded_frames else 0.0


# ----------------------------------------------------------------------------------------------- planning


def build_units(sources: list[DataSource], chunk: int, problems: Problems, allow_pipes: bool = True) -> list[Unit]:
    """Shards become one unit each; a plain manifest is read once and cut into chunks."""
    units: list[Unit] = []
    for index, source in enumerate(sources):
        fmt = source.format or detect_format(source.path)
        if fmt == "shards":
            units.extend(Unit(index, url=url) for url in shard_urls(source.path))
        else:
            samples = list(read_manifest(source.path, fmt, problems, allow_pipes))
            problems.samples_in -= len(samples)  # good records are counted each time an epoch hands them out
            units.extend(Unit(index, samples=samples[i : i + chunk]) for i in range(0, len(samples), chunk))
    return units


def epoch_units(units: list[Unit], weights: list[float], epoch: int, seed: int, shuffle: bool) -> list[Unit]:
    """Units for one epoch: each source repeated by its weight (a fraction takes a seeded subset), shuffled."""
    rng = random.Random(f"{seed}/units/{epoch}")
    chosen: list[Unit] = []
    for source, weight in enumerate(weights):
        own = [u for u in units if u.source == source]
        whole, part = int(weight), weight - int(weight)
        chosen.extend(own * whole)
        if part > 0 and own:
            chosen.extend(rng.sample(own, max(1, round(part * len(own)))))
    if shuffle:
        rng.shuffle(chosen)
    return chosen


def split_for_rank(units: list[Unit], rank: int, world_size: int) -> tuple[list[Unit], int, int]:
    """(units this rank reads, sample stride, sample offset).

    With at least one unit per rank, ranks take every world_size-th unit. With fewer units than ranks
    (a small dev list), every rank reads all units and keeps every world_size-th sample, so none idles.
    """
    if world_size <= 1:
        return units, 1, 0
    if len(units) >= world_size:
        return units[rank::world_size], 1, 0
    return units, world_size, rank


def iter_unit_samples(
    units: list[Unit], problems: Problems, stride: int = 1, offset: int = 0,
    tasks_by_source: dict[int, tuple[str, ...]] | None = None,
) -> Iterator[Sample]:
    """The samples of the units in order, keeping every `stride`-th one starting at `offset`.

    `tasks_by_source` replaces the task tags of the samples of the sources it names.
    """
    position = 0
    for unit in units:
        stream = iter_tar_samples(unit.url, problems) if unit.url else iter(unit.samples or [])
        tasks = (tasks_by_source or {}).get(unit.source)
        for sample in stream:
            mine = position % stride == offset
            position += 1
            # Every sample handed out is counted in once: shards count as they are read, manifests here.
            problems.samples_in += (0 if unit.url else 1) if mine else (-1 if unit.url else 0)
            if mine:
                if tasks:
                    sample.tasks = tasks
                yield sample


def shuffle_buffer(samples: Iterator[Sample], size: int, rng: random.Random) -> Iterator[Sample]:
    """A bounded random reorder: hold `size` samples, hand out a random one for each new one."""
    buffer: list[Sample] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        pick = rng.randrange(size)
        yield buffer[pick]
        buffer[pick] = sample
    rng.shuffle(buffer)
    yield from buffer


def measure(samples: Iterator[Sample], config: LoaderConfig, problems: Problems) -> Iterator[Item]:
    """Length from the audio header (exact, no decoding) and text tokens; filters by both."""
    for sample in samples:
        try:
            frames, rate = audio_info(sample.audio, config.allow_pipes)
        except AudioError as err:
            problems.add(err.reason, sample.key, str(err))
            continue
        first = int(round((sample.start or 0.0) * rate))
        last = frames if sample.end is None else min(frames, int(round(sample.end * rate)))
        num_samples = num_samples_at(max(0, last - first), rate)
        duration = num_samples / SAMPLE_RATE
        if duration < config.min_duration:
            problems.add("too_short", sample.key, f"{duration:.3f} s < min_duration {config.min_duration}")
            continue
        if duration > config.max_duration:
            problems.add("too_long", sample.key, f"{duration:.2f} s > max_duration {config.max_duration}")
            continue
        tokens = count_tokens(sample.text)
        if tokens > config.max_text_tokens:
            problems.add("text_too_long", sample.key, f"{tokens} tokens > max_text_tokens {config.max_text_tokens}")
            continue
        yield Item(sample, num_samples, tokens)


def bucket_bounds(config: LoaderConfig) -> list[int]:
    """Upper frame bounds of the duration buckets: geometric from min to max duration."""
    bounds = []
    edge = max(config.min_duration, 0.5)
    while edge < config.max_duration:
        bounds.append(int(math.ceil(edge * FRAMES_PER_SECOND)))
        edge *= config.bucket_ratio
    bounds.append(int(math.ceil(config.max_duration * FRAMES_PER_SECOND)) + 1)
    return bounds


def batch_items(items: Iterator[Item], config: LoaderConfig) -> Iterator[list[Item]]:
    """Group items into batches: fixed size, or duration buckets under frame/token/size budgets."""
    if config.batching == "static":
        batch: list[Item] = []
        for item in items:
            batch.append(item)
            if len(batch) == config.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
        return
    bounds = bucket_bounds(config)
    buckets: list[list[Item]] = [[] for _ in bounds]
    for item in items:
        slot = next(i for i, bound in enumerate(bounds) if item.frames <= bound or i == len(bounds) - 1)
        bucket = buckets[slot]
        if bucket and not _fits(bucket, item, config):
            yield bucket
            bucket = buckets[slot] = []
        bucket.append(item)
    for bucket in buckets:
        if bucket:
            yield bucket


def _fits(bucket: list[Item], item: Item, config: LoaderConfig) -> bool:
    size = len(bucket) + 1
    if size > config.max_batch_size:
        return False
    longest = max(item.frames, max(i.frames for i in bucket))
    if size * longest > config.max_frames_in_batch:
        return False
    if config.max_tokens_in_batch:
        most_tokens = max(item.tokens, max(i.tokens for i in bucket))
        if size * most_tokens > config.max_tokens_in_batch:
            return False
    return True


# ---------------------------------------------------------------------------------------------- decoding


def _init_worker() -> None:
    torch.set_num_threads(1)  # workers are processes; threads inside them would fight over the cores
    _die_with_parent()


def _die_with_parent() -> None:
    """A worker is killed when its parent dies, so `kill -9` of a trainer leaves no orphan behind."""
    import signal

    if not signal_when_parent_dies(signal.SIGKILL):
        os._exit(1)


def decode_batch(items: list[tuple[str, Any, float | None, float | None, int]], n_mels: int, allow_pipes: bool,
                 augment: tuple[SpecAugmentConfig, tuple[int, int, int, int]] | None = None):
    """Decode, resample and featurize one planned batch (runs in a worker). Failed samples are reported.
    `augment`: SpecAugment settings and the batch's (seed, epoch, rank, index), which seed its masks."""
    waves, kept, errors = [], [], []
    for index, (key, audio, start, end, length) in enumerate(items):
        try:
            wave = load_audio(audio, SAMPLE_RATE, start, end, allow_pipes)
        except AudioError as err:
            errors.append((key, err.reason, str(err)))
            continue
        # Resampling may differ from the header's length by a sample or two; a file whose data ends well
        # before its header says is damaged, and padding it with silence would teach the model nonsense.
        if wave.shape[0] < length - SAMPLE_RATE // 100:
            errors.append((key, "truncated_audio", f"{wave.shape[0] / SAMPLE_RATE:.2f} s decoded, header says "
                                                   f"{length / SAMPLE_RATE:.2f} s"))
            continue
        waves.append(fit_length(wave, length))
        kept.append(index)
    if not waves:
        return kept, None, None, errors
    features, lengths = log_mel_spectrogram(waves, n_mels)
    if augment is not None:
        spec_augment(features, lengths, augment[0], batch_generator(*augment[1]))
    return kept, features, lengths, errors


def collate(items: list[Item], kept: list[int], features: torch.Tensor, lengths: torch.Tensor, index: int) -> Batch:
    """A Batch from decoded features; sample metadata travels without its audio bytes."""
    samples = [items[i].sample for i in kept]
    light = [s.replace(audio=b"") if isinstance(s.audio, bytes) else s for s in samples]  # keep batches small
    mask = torch.arange(features.shape[1])[None, :] < lengths[:, None]
    tokens = max(items[i].tokens for i in kept) * len(kept)
    return Batch([s.key for s in samples], light, features, lengths, mask, tokens, index)


# ------------------------------------------------------------------------------------------------ loader


class SpeechLoader:
    """Iterate batches of one rank for the current epoch; `state_dict()` captures the exact position."""

    def __init__(
        self,
        sources: list[DataSource] | list[str],
        config: LoaderConfig | None = None,
        rank: int = 0,
        world_size: int = 1,
        problems: Problems | None = None,
    ):
        self.config = config or LoaderConfig()
        self.sources = [s if isinstance(s, DataSource) else DataSource(str(s)) for s in sources]
        if not self.sources:
            raise ValueError("no data sources given")
        self.rank, self.world_size = rank, world_size
        self.problems = problems if problems is not None else Problems()
        self.units = build_units(self.sources, self.config.manifest_chunk, self.problems, self.config.allow_pipes)
        self.epoch = 0
        self.consumed = 0  # batches of the current epoch already handed out
        self.stats = LoaderStats()
        self._pool: ProcessPoolExecutor | None = None

    # -- position -----------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning (call before iterating each epoch)."""
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self.consumed, "seed": self.config.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("world_size", self.world_size) != self.world_size:
            raise ValueError(
                f"loader state was saved with {state['world_size']} ranks, this run has {self.world_size}: "
                "the data position cannot be carried over; resume with the same number of processes"
            )
        self.epoch, self.consumed = int(state["epoch"]), int(state["batches"])

    # -- plan -----------------------------------------------------------------------------------------------
    def plan(self) -> Iterator[list[Item]]:
        """The batches of this rank for the current epoch, before decoding (deterministic)."""
        c = self.config
        weights = [s.weight for s in self.sources]
        units = epoch_units(self.units, weights, self.epoch, c.seed, c.shuffle)
        mine, stride, offset = split_for_rank(units, self.rank, self.world_size)
        tasks = {i: tuple(s.tasks) for i, s in enumerate(self.sources) if s.tasks}
        samples = iter_unit_samples(mine, self.problems, stride, offset, tasks)
        if c.shuffle and c.shuffle_buffer > 1:
            samples = shuffle_buffer(samples, c.shuffle_buffer, random.Random(f"{c.seed}/samples/{self.epoch}/{self.rank}"))
        return batch_items(measure(samples, c, self.problems), c)

    # -- iteration --------------------------------------------------------------------------------------------
    def _submit(self, items: list[Item], index: int) -> Future | tuple:
        c = self.config
        payload = [(i.sample.key, i.sample.audio, i.sample.start, i.sample.end, i.num_samples) for i in items]
        augment = (c.spec_augment, (c.seed, self.epoch, self.rank, index)) if c.spec_augment.enabled else None
        if c.num_workers <= 0:
            return decode_batch(payload, c.n_mels, c.allow_pipes, augment)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(c.num_workers, initializer=_init_worker)
        return self._pool.submit(decode_batch, payload, c.n_mels, c.allow_pipes, augment)

    def __iter__(self) -> Iterator[Batch]:
        plan = self.plan()
        for _ in range(self.consumed):  # resume: replay the plan without decoding anything
            if next(plan, None) is None:
                break
        pending: deque[tuple[int, list[Item], Any]] = deque()
        index = self.consumed
        depth = max(1, self.config.prefetch)
        for items in plan:
            pending.append((index, items, self._submit(items, index)))
            index += 1
            if len(pending) >= depth:
                batch = self._finish(*pending.popleft())
                if batch is not None:
                    yield batch
        while pending:
            batch = self._finish(*pending.popleft())
            if batch is not None:
                yield batch

    def _finish(self, index: int, items: list[Item], job: Any) -> Batch | None:
        kept, features, lengths, errors = self._wait(job, items) if isinstance(job, Future) else job
        self.consumed = index + 1
        for key, reason, error in errors:
            self.problems.add(reason, key, error)
        if features is None:
            return None
        batch = collate(items, kept, features, lengths, index)
        self.stats.samples += batch.size
        self.stats.batches += 1
        self.stats.real_frames += batch.real_frames
        self.stats.padded_frames += batch.padded_frames
        self.stats.tokens += batch.tokens
        return batch

    def _wait(self, job: Future, items: list[Item]) -> tuple:
        try:
            return job.result(timeout=self.config.worker_timeout)
        except FuturesTimeout:
            self.close(kill=True)
            keys = ", ".join(i.sample.key for i in items[:5]) + (" ..." if len(items) > 5 else "")
            raise TimeoutError(f"a data worker did not finish decoding a batch ({keys}) within "
                               f"{self.config.worker_timeout:.0f} s (data.loader.worker_timeout): a hung "
                               "`command |` or storage; check these samples with `osum data check`") from None

    def close(self, kill: bool = False) -> None:
        if self._pool is not None and kill:
            for process in list(getattr(self._pool, "_processes", {}).values()):  # a hung worker ignores shutdown
                process.kill()
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def stop_together(batches: Iterator[Batch], loader: SpeechLoader | None = None) -> Iterator[Batch]:
    """Under torch.distributed, end the epoch on every rank as soon as one rank runs out of batches.

    Ranks read different shards, so their batch counts differ by a few; a rank that stopped early would
    leave the others blocked in their next collective. One tiny all-reduce per step keeps them in step;
    the few batches left over on longer ranks are counted in `loader.stats.dropped_for_rank_balance`.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        yield from batches
        return
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        flag = torch.tensor([0 if batch is None else 1], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if flag.item() == 0:
            if batch is not None and loader is not None:
                loader.stats.dropped_for_rank_balance += 1 + sum(1 for _ in iterator)
            return
        yield batch


def env_rank_world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialized, else from torchrun's environment."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
