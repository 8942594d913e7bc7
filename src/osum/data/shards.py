"""Tar shards: pack samples into them, stream samples out of them (ours, OSUM's, WeNet's and MooER's).

Layout, compatible with OSUM's shard_full_data and WeNet: one tar member per field, named `key.<suffix>`:
`key.flac` (or .wav/.mp3/...; the audio), `key.txt`, `key.task`, `key.lang`, `key.speaker`, `key.gender`,
`key.age`, `key.emotion`, `key.style`, `key.event`, `key.duration`, `key.words` (JSON), `key.extra` (JSON).
Only the fields a sample has are written. Members are grouped into samples by the name before the LAST dot,
so keys may contain dots.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import numpy as np
import soundfile as sf

from .. import audio as audio_limits
from ..audio import AudioError, audio_info, is_pipe, load_audio, resample, run_pipe
from ..text import training_text_norm
from .problems import Problems
from .sample import Sample, label_str, normalize_gender, tasks_from, tasks_to_text, words_from_json, words_to_json

AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "ogg", "opus", "sph", "m4a", "aac")
_TEXT_FIELDS = ("lang", "speaker", "gender", "age", "emotion", "style", "event")
SHARD_LIST = "shards.list"


# ------------------------------------------------------------------------------------------------ packing


@dataclass
class PackOptions:
    """How `osum data pack` writes each utterance."""

    audio_format: str = "flac"  # flac | wav | keep (original bytes when no cut or resampling is needed)
    # (FLAC input already at the target rate is stored as it is under "flac" too: re-encoding is lossless.)
    sample_rate: int | None = 16000  # None keeps each file's rate
    text_norm: bool = False
    allow_pipes: bool = True
    # Decode every clip and check it as training will (finite, as long as its header says). Off, audio stored as
    # it is (FLAC at the target rate, or `keep`) is checked from its header only: several times faster, and
    # damage inside such a file is found (and counted) only when training reads it.
    verify: bool = True


@dataclass
class PackResult:
    shards: list[str] = field(default_factory=list)
    written: int = 0  # utterances in shards written by this run
    utterances: int = 0  # utterances in all the shards listed (written now or reused)
    reused: int = 0  # shards already complete from the same inputs and options, left as they were
    stale_removed: int = 0  # shards of an earlier run beyond this run's last one
    bytes_written: int = 0
    problems: Problems = field(default_factory=Problems)


def _read_source(sample: Sample, allow_pipes: bool) -> tuple[bytes, str]:
    """The raw encoded bytes of a sample's audio and their format (extension)."""
    if isinstance(sample.audio, bytes):
        return sample.audio, sample.audio_format or "wav"
    if is_pipe(sample.audio):
        data = run_pipe(sample.audio, allow_pipes)
        try:
            return data, sf.info(io.BytesIO(data)).format.lower()
        except Exception as err:
            raise AudioError(f"output of {sample.audio!r} is not audio: {err}") from err
    path = Path(sample.audio)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}", "missing_audio")
    size, limit = path.stat().st_size, audio_limits.MAX_AUDIO_BYTES
    if size > limit:
        raise AudioError(f"{path}: {size / 2**20:.0f} MiB is more than one utterance may hold "
                         f"({limit / 2**20:.0f} MiB); cut it into segments", "audio_too_large")
    data = path.read_bytes()
    if not data:
        raise AudioError(f"audio file is empty: {path}", "empty_audio")
    return data, path.suffix.lstrip(".").lower() or "wav"


def encode_audio(sample: Sample, options: PackOptions) -> tuple[bytes, str, float]:
    """(encoded bytes, extension, duration in s) for one sample, cut and resampled as asked.

    The audio is decoded through `load_audio` (unless `options.verify` is off and the bytes are stored as they
    are), so a shard holds only audio that passed the checks every other command makes (finite, as long as
    its header says); bytes are stored as they are only when nothing needs to change.
    """
    raw, ext = _read_source(sample, options.allow_pipes)
    frames, rate = audio_info(raw)
    needs_cut = sample.start is not None or sample.end is not None
    needs_rate = options.sample_rate is not None and rate != options.sample_rate
    # FLAC is lossless: a FLAC file already at the target rate is stored as it is, never re-encoded.
    as_is = options.audio_format == "keep" and ext in AUDIO_EXTENSIONS or options.audio_format == ext == "flac"
    if as_is and not needs_cut and not needs_rate and not options.verify:
        return raw, ext, frames / rate
    named = isinstance(sample.audio, str) and not is_pipe(sample.audio)  # errors then name the file
    wave = load_audio(sample.audio if named else raw, None, sample.start, sample.end)
    if as_is and not needs_cut and not needs_rate:
        return raw, ext, wave.shape[0] / rate
    if needs_rate:
        wave = resample(wave, rate, options.sample_rate)
        rate = options.sample_rate
    out_ext = "flac" if options.audio_format == "keep" else options.audio_format
    buffer = io.BytesIO()
    # FLAC tops out at 655 kHz and 16/24-bit; speech never needs more than 16-bit PCM.
    sf.write(buffer, np.clip(wave, -1.0, 1.0), rate, format=out_ext.upper(), subtype="PCM_16")
    return buffer.getvalue(), out_ext, wave.shape[0] / rate


def sample_members(sample: Sample, audio: bytes, ext: str, duration: float, text_norm: bool) -> list[tuple[str, bytes]]:
    """The (member name, content) pairs of one utterance, metadata first, audio last."""
    key = sample.key
    members: list[tuple[str, bytes]] = []
    if sample.text is not None:
        text = training_text_norm(sample.text) if text_norm else sample.text
        members.append((f"{key}.txt", text.encode("utf-8")))
    if sample.tasks:
        members.append((f"{key}.task", tasks_to_text(sample.tasks, "\n").encode("utf-8")))
    for name in _TEXT_FIELDS:
        value = getattr(sample, name)
        if value is not None:
            members.append((f"{key}.{name}", str(value).encode("utf-8")))
    members.append((f"{key}.duration", f"{duration:.4f}".encode()))
    if sample.words:
        members.append((f"{key}.words", json.dumps(words_to_json(sample.words), ensure_ascii=False).encode("utf-8")))
    if sample.extra:
        members.append((f"{key}.extra", json.dumps(sample.extra, ensure_ascii=False, sort_keys=True).encode("utf-8")))
    members.append((f"{key}.{ext}", audio))
    return members


def _tar_header(name: bytes, size: int, typeflag: bytes) -> bytes:
    """One 512-byte GNU tar header for a regular file owned by root, mode 644, mtime 0."""
    header = bytearray(512)
    header[0:100] = name[:100].ljust(100, b"\0")
    header[100:108] = b"0000644\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"
    header[148:156] = b" " * 8  # the checksum counts its own field as spaces
    header[156:157] = typeflag
    header[257:265] = b"ustar  \0"  # GNU magic and version
    header[265:269] = b"root"
    header[297:301] = b"root"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def tar_member(name: str, data: bytes) -> bytes:
    """A complete tar member (header, data, padding); long names get a GNU ././@LongLink record.

    Written by hand because tarfile spends ~150 us per member building headers, more than all the other
    work of packing a short utterance; the output is plain GNU tar that tarfile, GNU tar and WeNet read.
    """
    encoded = name.encode("utf-8")
    parts = []
    if len(encoded) > 100:
        long_name = encoded + b"\0"
        parts += [_tar_header(b"././@LongLink", len(long_name), b"L"), long_name, b"\0" * (-len(long_name) % 512)]
    parts += [_tar_header(encoded, len(data), b"0"), data, b"\0" * (-len(data) % 512)]
    return b"".join(parts)


def _write_shard(job: tuple[str, list[Sample], PackOptions, str]) -> tuple[int, int, Problems]:
    """Write one shard atomically, then its record; returns (utterances, bytes, problems)."""
    path, samples, options, fingerprint = job
    problems = Problems(warn=False)
    record = Path(path).with_suffix(".json")
    record.unlink(missing_ok=True)  # a shard being rewritten is never taken for the one it replaces
    tmp = f"{path}.tmp{os.getpid()}"
    count = 0
    try:
        with open(tmp, "wb") as tar:
            for sample in samples:
                try:
                    audio, ext, duration = encode_audio(sample, options)
                except AudioError as err:
                    problems.add(err.reason, sample.key, str(err))
                    continue
                for name, data in sample_members(sample, audio, ext, duration, options.text_norm):
                    tar.write(tar_member(name, data))
                count += 1
            tar.write(b"\0" * 1024)  # end-of-archive marker: two zero blocks
            tar.write(b"\0" * (-tar.tell() % tarfile.RECORDSIZE))  # pad to a whole record, as tar does
        size = os.path.getsize(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _write_json_atomic(record, {"fingerprint": fingerprint, "utterances": count, "bytes": size,
                                "problems": problems.records})
    return count, size, problems


def _write_json_atomic(path: Path, content: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def shard_fingerprint(samples: list[Sample], options: PackOptions) -> str:
    """What a shard is made from: every field of its samples (in order), their audio files' size and time of
    change (or the bytes' hash), and the packing options. Equal fingerprints mean an equal shard."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(options), sort_keys=True).encode())
    for sample in samples:
        fields = dataclasses.asdict(sample.replace(audio=""))
        if isinstance(sample.audio, bytes):
            fields["audio"] = hashlib.sha256(sample.audio).hexdigest()
        else:
            try:
                stat = os.stat(sample.audio)
                fields["audio"] = [sample.audio, stat.st_size, stat.st_mtime_ns]
            except OSError:
                fields["audio"] = [sample.audio, None]  # a pipe, or a missing file
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _reusable(path: Path, fingerprint: str) -> dict | None:
    """The record of a finished shard made from exactly these inputs, or None."""
    try:
        record = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        if record.get("fingerprint") == fingerprint and path.stat().st_size == record.get("bytes"):
            return record
    except (OSError, ValueError):
        pass
    return None


def pack_shards(
    samples: list[Sample],
    out_dir: str | Path,
    per_shard: int = 1000,
    workers: int = 1,
    options: PackOptions | None = None,
    shuffle: bool = False,
    seed: int = 0,
    problems: Problems | None = None,
) -> PackResult:
    """Pack samples into `out_dir/shard_NNNNNN.tar` plus `out_dir/shards.list`.

    Deterministic (the same samples, order and options give the same shards) and atomic per shard. Each
    shard has a record beside it (shard_NNNNNN.json: the fingerprint of its inputs and options, and what was
    skipped); a rerun keeps a shard only when its fingerprint matches, so a changed manifest, audio file or
    option rewrites exactly the shards it touches.
    """
    if per_shard < 1:
        raise ValueError("per_shard must be at least 1")
    options = options or PackOptions()
    if options.audio_format not in ("flac", "wav", "keep"):
        raise ValueError(f"audio format {options.audio_format!r}: choose flac, wav or keep")
    result = PackResult(problems=problems if problems is not None else Problems())
    seen: set[str] = set()
    unique = []
    for s in samples:
        if s.key in seen:
            result.problems.add("duplicate_key", s.key, "the first one is packed")
            continue
        seen.add(s.key)
        unique.append(s)
    if shuffle:
        random.Random(seed).shuffle(unique)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs, outcomes = [], []
    for index, first in enumerate(range(0, len(unique), per_shard)):
        path = out / f"shard_{index:06d}.tar"
        result.shards.append(str(path.resolve()))
        chunk = unique[first : first + per_shard]
        fingerprint = shard_fingerprint(chunk, options)
        record = _reusable(path, fingerprint)
        if record is not None:
            result.reused += 1
            outcomes.append((record["utterances"], 0, _problems_from(record["problems"])))
            continue
        jobs.append((str(path), chunk, options, fingerprint))
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            written = list(pool.map(_write_shard, jobs))
    else:
        written = [_write_shard(job) for job in jobs]
    for count, size, _ in written:
        result.written += count
        result.bytes_written += size
    for count, _, shard_problems in outcomes + written:
        result.utterances += count
        for record in shard_problems.records:
            result.problems.add(record["reason"], record["where"], record["detail"])
    result.stale_removed = _remove_stale_shards(out, len(result.shards))
    list_tmp = out / f".{SHARD_LIST}.tmp"
    list_tmp.write_text("".join(f"{p}\n" for p in result.shards), encoding="utf-8")
    os.replace(list_tmp, out / SHARD_LIST)
    return result


def _problems_from(records: list[dict]) -> Problems:
    problems = Problems(warn=False)
    problems.records = list(records)
    return problems


def _remove_stale_shards(out: Path, count: int) -> int:
    """Shards of an earlier, longer run beyond this run's last one: not in shards.list, so removed."""
    removed = 0
    for path in out.glob("shard_*.tar"):
        suffix = path.stem[len("shard_"):]
        if suffix.isdigit() and int(suffix) >= count:
            path.unlink()
            path.with_suffix(".json").unlink(missing_ok=True)
            removed += 1
    return removed


# ------------------------------------------------------------------------------------------------ reading


def shard_urls(src: str | Path) -> list[str]:
    """The shard sources behind a shards.list file, a directory holding one, or a single shard/URL/pipe."""
    text = str(src)
    if text.startswith(("http://", "https://", "pipe:")) or text.endswith((".tar", ".tar.gz", ".tgz")):
        return [text]
    path = Path(src)
    if path.is_dir():
        path = path / SHARD_LIST
    if not path.is_file():
        raise FileNotFoundError(f"shard list not found: {path}")
    urls = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        urls.append(_resolve_shard(line, path.parent))
    return urls


def _resolve_shard(entry: str, base: Path) -> str:
    """Relative entries are relative to the list; a moved shard directory is found by file name."""
    if entry.startswith(("http://", "https://", "pipe:")):
        return entry
    p = Path(entry)
    if not p.is_absolute():
        return str(base / p)
    if not p.exists() and (base / p.name).exists():
        return str(base / p.name)
    return entry


def open_stream(url: str) -> tuple[IO[bytes], subprocess.Popen | None]:
    """A readable byte stream for a local path, an http(s) URL or a `pipe:COMMAND`."""
    if url.startswith("pipe:"):
        proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        return proc.stdout, proc
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=60), None
    return open(url, "rb"), None


def sample_from_members(key: str, members: dict[str, bytes]) -> Sample:
    """Build a Sample from the members of one key (suffix -> content)."""
    audio_ext = next((ext for ext in AUDIO_EXTENSIONS if ext in members), None)
    if audio_ext is None:
        raise KeyError(f"no audio member (one of .{', .'.join(AUDIO_EXTENSIONS)})")

    def text(name: str) -> str | None:
        # OSUM's shard writer stores a missing label as "none"; that means absent, not a label.
        value = members[name].decode("utf-8").strip() if name in members else None
        return None if value is not None and name != "txt" and value.lower() in ("none", "<none>") else value

    extra = json.loads(members["extra"]) if "extra" in members else {}
    duration = text("duration")
    return Sample(
        key=key,
        audio=members[audio_ext],
        audio_format=audio_ext,
        duration=float(duration) if duration and float(duration) > 0 else None,  # OSUM writes 0 when unknown
        text=text("txt"),
        tasks=tasks_from(text("task")),
        lang=label_str(text("lang")),
        speaker=label_str(text("speaker")),
        gender=normalize_gender(text("gender")),
        age=label_str(text("age")),
        emotion=label_str(text("emotion")),
        style=label_str(text("style")),
        event=label_str(text("event")),
        words=words_from_json(json.loads(members["words"])) if "words" in members else None,
        extra=extra if isinstance(extra, dict) else {"extra": extra},
    )


def iter_tar_samples(url: str, problems: Problems) -> Iterator[Sample]:
    """Stream the samples of one shard; a truncated or corrupt tar ends the shard with a counted problem."""
    try:
        stream, proc = open_stream(url)
    except OSError as err:
        problems.note("unreadable_shard", url, str(err))
        return
    key: str | None = None
    members: dict[str, bytes] = {}

    def finish() -> Iterator[Sample]:
        if key is None:
            return
        problems.samples_in += 1
        try:
            yield sample_from_members(key, members)
        except (KeyError, ValueError, UnicodeDecodeError) as err:
            reason = "missing_audio" if isinstance(err, KeyError) else "malformed_sample"
            problems.add(reason, f"{url}:{key}", str(err).strip("'\""))

    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                name = info.name
                dot = name.rfind(".")
                if dot <= 0:
                    continue
                prefix, suffix = name[:dot], name[dot + 1 :]
                if prefix != key:
                    yield from finish()
                    key, members = prefix, {}
                handle = tar.extractfile(info)
                members[suffix.lower()] = handle.read() if handle else b""
        yield from finish()
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        detail = f"{type(err).__name__}: {err}; the samples before it were kept"
        if key is not None:  # the sample being read when the shard broke off: counted, not lost
            problems.samples_in += 1
            problems.add("truncated_tar", f"{url}:{key}", detail)
        else:
            problems.note("truncated_tar", url, detail)
    finally:
        stream.close()
        if proc is not None:
            proc.wait()


def read_shards(src: str | Path, problems: Problems) -> Iterator[Sample]:
    """All samples of all shards behind `src`, in order."""
    for url in shard_urls(src):
        yield from iter_tar_samples(url, problems)

