"""Manifests in the formats users already have: read them into Samples, write Samples back out.

Formats:
- `osum`: OSUM/WeNet raw jsonl, one JSON object per line (`key`, `wav`, `txt`, `task`, `lang`, `speaker`,
  `gender`, `age`, `emotion`, `style`, `event`, `words`, `start`, `end`, `duration`, `extra`). Common aliases
  (`id`/`utt`, `audio`/`path`, `text`, `tasks`) are read too; other fields go to `extra`.
- `kaldi`: a data directory (`wav.scp`, optional `segments`, `text`, `utt2spk`, `spk2gender` or `utt2gender`,
  `utt2age`, `utt2emotion`, `utt2dur`, and osum's `utt2lang`, `utt2style`, `utt2event`, `utt2task`).
- `funasr`: FunASR jsonl (`key`, `source`, `source_len` in 10 ms frames, `target`, `target_len`, and
  SenseVoice's `text_language`, `emo_target`, `event_target`).
- `commonvoice`: a Common Voice `train.tsv`/`dev.tsv`/`test.tsv`, clips in `clips/` beside it (input only).
- `shards`: tar shards or a list of them (input only here; see `osum.data.shards`).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..audio import AudioError, audio_duration, is_pipe
from ..errors import OsumError
from ..text import count_tokens
from .problems import Problems
from .sample import (
    Sample,
    label_str,
    normalize_gender,
    tasks_from,
    tasks_to_text,
    words_from_json,
    words_to_json,
)

INPUT_FORMATS = ("osum", "kaldi", "funasr", "commonvoice", "shards")
OUTPUT_FORMATS = ("osum", "kaldi", "funasr")


class ManifestError(ValueError, OsumError):
    """A manifest that cannot be read at all (as opposed to a bad line, which is skipped and counted)."""


# ----------------------------------------------------------------------------------------------- detection


def detect_format(src: str | Path) -> str:
    """Guess the format of a manifest path from its shape and first record."""
    text = str(src)
    if text.startswith(("http://", "https://", "pipe:")) or text.endswith((".tar", ".tar.gz", ".tgz")):
        return "shards"
    path = Path(src)
    if path.is_dir():
        if (path / "wav.scp").is_file():
            return "kaldi"
        if (path / "shards.list").is_file():
            return "shards"
        raise ManifestError(f"{path}: a directory without wav.scp (Kaldi) or shards.list (osum shards)")
    if not path.is_file():
        raise ManifestError(f"{path}: no such file or directory")
    if path.suffix == ".tsv":
        return "commonvoice"
    if path.suffix == ".list" or path.name.endswith("shards.list"):
        return "shards"
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if not line.startswith("{"):
                # A WeNet data.list of tar paths is a plain list, one path per line.
                return "shards" if line.split()[0].endswith((".tar", ".tar.gz", ".tgz")) else "osum"
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                return "osum"
            return "funasr" if "source" in record and "target" in record else "osum"
    return "osum"


def read_manifest(
    src: str | Path, fmt: str | None = None, problems: Problems | None = None, allow_pipes: bool = True
) -> Iterator[Sample]:
    """Samples from any supported manifest; bad records are skipped and counted in `problems`."""
    problems = problems if problems is not None else Problems()
    fmt = fmt or detect_format(src)
    if fmt == "osum":
        return read_osum_jsonl(src, problems)
    if fmt == "kaldi":
        return read_kaldi_dir(src, problems)
    if fmt == "funasr":
        return read_funasr_jsonl(src, problems)
    if fmt == "commonvoice":
        return read_commonvoice_tsv(src, problems)
    if fmt == "shards":
        from .shards import read_shards

        return read_shards(src, problems)
    raise ManifestError(f"unknown manifest format {fmt!r}; choose one of {', '.join(INPUT_FORMATS)}")


def write_manifest(samples: Iterable[Sample], dst: str | Path, fmt: str) -> int:
    """Write samples in `fmt`; returns how many were written."""
    if fmt == "osum":
        return write_osum_jsonl(samples, dst)
    if fmt == "kaldi":
        return write_kaldi_dir(samples, dst)
    if fmt == "funasr":
        return write_funasr_jsonl(samples, dst)
    raise ManifestError(f"cannot write format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")


# --------------------------------------------------------------------------------------------- helpers


def _resolve_audio(value: str, base: Path) -> str:
    """Relative paths are taken relative to the manifest's folder when the file is there, else kept as is."""
    if is_pipe(value) or os.path.isabs(value) or value.startswith(("http://", "https://")):
        return value
    beside = base / value
    return str(beside) if beside.exists() else value


def _float_or_none(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


def _text_lines(path: Path, problems: Problems, counted: bool = True) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of each non-empty line; a line that is not UTF-8 is reported and left out.

    `counted`: each line is a sample (its record arrives at the command), so a bad one is a skipped sample;
    otherwise (a side table such as utt2spk) a bad line is a note.
    """
    try:
        f = open(path, "rb")
    except OSError as err:
        raise ManifestError(f"cannot open manifest {path}: {err}") from err
    with f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()  # a BOM from Windows editors
            except UnicodeDecodeError as err:
                if counted:
                    problems.samples_in += 1
                report = problems.add if counted else problems.note
                report("malformed_line", f"{path}:{number}",
                       f"not UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); re-save the file as UTF-8")
                continue
            if line:
                yield number, line


def _json_lines(path: Path, problems: Problems) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line; every line is counted in, malformed ones as skipped."""
    for number, line in _text_lines(path, problems):
        problems.samples_in += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            problems.add("malformed_line", f"{path}:{number}", f"not JSON: {err.msg}")
            continue
        if not isinstance(record, dict):
            problems.add("malformed_line", f"{path}:{number}", "not a JSON object")
            continue
        yield number, record


def _pick(record: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in record and record[name] is not None:
            return record.pop(name)
    for name in names:
        record.pop(name, None)
    return None


# ------------------------------------------------------------------------------------------ osum jsonl

_OSUM_KEY = ("key", "id", "utt", "utt_id")
_OSUM_AUDIO = ("wav", "audio", "path", "audio_filepath")
_OSUM_TEXT = ("txt", "text", "sentence")


def sample_from_osum_record(record: dict[str, Any], base: Path) -> Sample:
    """One OSUM/WeNet jsonl object -> Sample (KeyError/ValueError on a record without key or audio)."""
    record = dict(record)
    key = _pick(record, *_OSUM_KEY)
    audio = _pick(record, *_OSUM_AUDIO)
    if key is None or str(key).strip() == "":
        raise KeyError("no 'key' field (also accepted: id, utt, utt_id)")
    if audio is None or str(audio).strip() == "":
        raise KeyError("no 'wav' field (also accepted: audio, path, audio_filepath)")
    text = _pick(record, *_OSUM_TEXT)
    tasks = tasks_from(_pick(record, "task", "tasks"))
    extra = record.pop("extra", None) or {}
    if isinstance(extra, str):
        extra = json.loads(extra) if extra.strip().startswith("{") else {"extra": extra}
    sample = Sample(
        key=str(key),
        audio=_resolve_audio(str(audio), base),
        start=_float_or_none(_pick(record, "start", "offset")),
        end=_float_or_none(_pick(record, "end")),
        duration=_float_or_none(_pick(record, "duration")),
        text=None if text is None else str(text),
        tasks=tasks,
        lang=label_str(_pick(record, "lang", "language", "locale")),
        speaker=label_str(_pick(record, "speaker", "spk")),
        gender=normalize_gender(_pick(record, "gender")),
        age=label_str(_pick(record, "age")),
        emotion=label_str(_pick(record, "emotion")),
        style=label_str(_pick(record, "style")),
        event=label_str(_pick(record, "event")),
        words=words_from_json(_pick(record, "words", "timestamps")),
    )
    sample.extra = {**record, **extra}
    return sample


def read_osum_jsonl(src: str | Path, problems: Problems) -> Iterator[Sample]:
    """OSUM/WeNet raw jsonl (and the same with common aliases, e.g. ../shared/data manifests)."""
    path = Path(src)
    for number, record in _json_lines(path, problems):
        try:
            yield sample_from_osum_record(record, path.parent)
        except (KeyError, ValueError, TypeError) as err:
            problems.add("malformed_line", f"{path}:{number}", str(err).strip("'\""))


def osum_record(sample: Sample) -> dict[str, Any]:
    """Sample -> OSUM/WeNet jsonl object; only fields the sample has."""
    if isinstance(sample.audio, bytes):
        raise ManifestError(f"{sample.key}: audio is held in memory (from a shard); a jsonl needs a path")
    record: dict[str, Any] = {"key": sample.key, "wav": sample.audio}
    if sample.text is not None:
        record["txt"] = sample.text
    if len(sample.tasks) == 1:
        record["task"] = sample.tasks[0]
    elif sample.tasks:
        record["tasks"] = list(sample.tasks)
    if sample.lang:
        record["lang"] = sample.lang
    record.update(sample.labels)
    if sample.words:
        record["words"] = words_to_json(sample.words)
    for name in ("start", "end", "duration"):
        value = getattr(sample, name)
        if value is not None:
            record[name] = round(value, 4)
    if sample.extra:
        record["extra"] = sample.extra
    return record


def write_osum_jsonl(samples: Iterable[Sample], dst: str | Path) -> int:
    return _write_jsonl((osum_record(s) for s in samples), dst)


def _write_jsonl(records: Iterable[dict[str, Any]], dst: str | Path) -> int:
    path = Path(dst)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, path)
    return count


# ---------------------------------------------------------------------------------------- funasr jsonl


def _strip_special(value: Any) -> str | None:
    """'<|en|>' -> 'en', '<|HAPPY|>' -> 'happy'."""
    if value is None:
        return None
    text = str(value).strip()
    if text.startswith("<|") and text.endswith("|>"):
        text = text[2:-2]
    return text.lower() or None


def read_funasr_jsonl(src: str | Path, problems: Problems) -> Iterator[Sample]:
    """FunASR jsonl: key, source, source_len (10 ms frames), target, target_len, SenseVoice label fields."""
    path = Path(src)
    for number, record in _json_lines(path, problems):
        record = dict(record)
        key, source = _pick(record, "key"), _pick(record, "source")
        if not key or not source:
            problems.add("malformed_line", f"{path}:{number}", "needs 'key' and 'source'")
            continue
        source_len = _pick(record, "source_len")
        record.pop("target_len", None)
        record.pop("with_or_wo_itn", None)
        try:
            yield Sample(
                key=str(key),
                audio=_resolve_audio(str(source), path.parent),
                duration=None if source_len is None else float(source_len) / 100.0,
                start=_float_or_none(_pick(record, "start")),
                end=_float_or_none(_pick(record, "end")),
                text=_pick(record, "target"),
                tasks=tasks_from(_pick(record, "task", "tasks")),
                lang=_strip_special(_pick(record, "text_language", "lang")),
                emotion=_strip_special(_pick(record, "emo_target", "emotion")),
                event=_strip_special(_pick(record, "event_target", "event")),
                speaker=label_str(_pick(record, "speaker")),
                gender=normalize_gender(_pick(record, "gender")),
                age=label_str(_pick(record, "age")),
                style=label_str(_pick(record, "style")),
                words=words_from_json(_pick(record, "words")),
                extra=record,
            )
        except (KeyError, ValueError, TypeError) as err:
            problems.add("malformed_line", f"{path}:{number}", str(err))


def funasr_record(sample: Sample) -> dict[str, Any]:
    """Sample -> FunASR jsonl object; osum's extra fields ride along (FunASR ignores unknown keys)."""
    if isinstance(sample.audio, bytes):
        raise ManifestError(f"{sample.key}: audio is held in memory (from a shard); a jsonl needs a path")
    if sample.duration is None:
        raise ManifestError(f"{sample.key}: FunASR needs source_len; duration is unknown")
    record: dict[str, Any] = {
        "key": sample.key,
        "source": sample.audio,
        "source_len": int(round(sample.duration * 100)),
        "target": sample.text or "",
        "target_len": count_tokens(sample.text),
    }
    if sample.lang:
        record["text_language"] = f"<|{sample.lang}|>"
    if sample.emotion:
        record["emo_target"] = f"<|{sample.emotion.upper()}|>"
    if sample.event:
        record["event_target"] = f"<|{sample.event}|>"
    for name in ("speaker", "gender", "age", "style"):
        if getattr(sample, name) is not None:
            record[name] = getattr(sample, name)
    if sample.tasks:
        record["task"] = sample.tasks[0] if len(sample.tasks) == 1 else list(sample.tasks)
    if sample.start is not None:
        record["start"] = sample.start
    if sample.end is not None:
        record["end"] = sample.end
    if sample.words:
        record["words"] = words_to_json(sample.words)
    record.update(sample.extra)
    return record


def write_funasr_jsonl(samples: Iterable[Sample], dst: str | Path) -> int:
    return _write_jsonl((funasr_record(s) for s in samples), dst)


# ------------------------------------------------------------------------------------------ kaldi dirs

# Per-utterance files osum reads and writes beside the Kaldi standard ones, and the Sample field each holds.
_UTT2_FIELDS = {
    "utt2age": "age",
    "utt2emotion": "emotion",
    "utt2lang": "lang",
    "utt2style": "style",
    "utt2event": "event",
}


def _read_table(path: Path, problems: Problems, required: bool = False, counted: bool = False) -> dict[str, str]:
    """A Kaldi `key value...` table; the value is the rest of the line.

    `counted`: each line is an utterance (wav.scp without segments, segments), so a bad or repeated line is a
    skipped sample; in side tables (text, utt2spk...) it is a note and the utterance keeps its first value.
    """
    if not path.is_file():
        if required:
            raise ManifestError(f"{path} is missing: a Kaldi data directory needs it")
        return {}
    table: dict[str, str] = {}
    report = problems.add if counted else problems.note
    for number, line in _text_lines(path, problems, counted):
        parts = line.split(maxsplit=1)
        if parts[0] in table:
            if counted:
                problems.samples_in += 1
            report("duplicate_key", f"{path}:{number}", f"{parts[0]} appears twice; the first is kept")
            continue
        table[parts[0]] = parts[1] if len(parts) > 1 else ""
    return table


def read_kaldi_dir(src: str | Path, problems: Problems) -> Iterator[Sample]:
    """A Kaldi data dir; utterances are segments when `segments` exists, else wav.scp entries."""
    d = Path(src)
    seg_path = d / "segments"
    wavs = _read_table(d / "wav.scp", problems, required=True, counted=not seg_path.is_file())
    texts = _read_table(d / "text", problems)
    utt2spk = _read_table(d / "utt2spk", problems)
    spk2gender = _read_table(d / "spk2gender", problems)
    utt2gender = _read_table(d / "utt2gender", problems)
    utt2dur = _read_table(d / "utt2dur", problems)
    utt2task = _read_table(d / "utt2task", problems)
    extras = {name: _read_table(d / name, problems) for name in _UTT2_FIELDS}

    segments: dict[str, tuple[str, float, float | None]] = {}
    if seg_path.is_file():
        for utt, rest in _read_table(seg_path, problems, counted=True).items():
            problems.samples_in += 1
            parts = rest.split()
            try:
                reco, start, end = parts[0], float(parts[1]), float(parts[2])
            except (IndexError, ValueError):
                problems.add("malformed_line", f"{seg_path}:{utt}", "expected: utt recording start end")
                continue
            segments[utt] = (reco, start, None if end < 0 else end)  # end -1: to the end of the recording

    utts = list(segments) if seg_path.is_file() else list(wavs)
    if not seg_path.is_file():
        problems.samples_in += len(utts)
    for utt in utts:
        start = end = None
        reco = utt
        if seg_path.is_file():
            reco, start, end = segments[utt]
        if reco not in wavs:
            problems.add("missing_audio", utt, f"recording {reco} is not in {d / 'wav.scp'}")
            continue
        speaker = utt2spk.get(utt)
        gender = utt2gender.get(utt) or (spk2gender.get(speaker) if speaker else None)
        sample = Sample(
            key=utt,
            audio=_resolve_audio(wavs[reco], d),
            start=start,
            end=end,
            duration=_float_or_none(utt2dur.get(utt)),
            text=texts.get(utt),
            tasks=tasks_from(utt2task.get(utt)),
            speaker=speaker,
            gender=normalize_gender(gender),
        )
        for name, field_name in _UTT2_FIELDS.items():
            value = extras[name].get(utt)
            if value:
                setattr(sample, field_name, value)
        if segments:
            sample.extra["recording"] = reco
        if sample.duration is None and start is not None and end is not None:
            sample.duration = end - start
        yield sample


def write_kaldi_dir(samples: Iterable[Sample], dst: str | Path) -> int:
    """Write a Kaldi data dir, sorted by key (C locale) as Kaldi's tools require."""
    d = Path(dst)
    d.mkdir(parents=True, exist_ok=True)
    rows = sorted(samples, key=lambda s: s.key.encode())
    has_segments = any(s.start is not None or s.end is not None for s in rows)
    tables: dict[str, list[str]] = defaultdict(list)
    recordings: dict[str, str] = {}  # recording id -> audio
    reco_of_audio: dict[str, str] = {}
    speakers: dict[str, set[str]] = defaultdict(set)
    for s in rows:
        if isinstance(s.audio, bytes):
            raise ManifestError(f"{s.key}: audio is held in memory (from a shard); wav.scp needs a path")
        if any(ch.isspace() for ch in s.key):
            raise ManifestError(f"{s.key!r}: Kaldi keys cannot contain whitespace")
        if has_segments:
            reco = s.extra.get("recording") or reco_of_audio.get(s.audio) or f"{s.key}-rec"
            reco_of_audio.setdefault(s.audio, reco)
            recordings.setdefault(reco, s.audio)
            end = "-1" if s.end is None else f"{s.end:.3f}"
            tables["segments"].append(f"{s.key} {reco} {s.start or 0.0:.3f} {end}")
        else:
            recordings[s.key] = s.audio
        if s.text is not None:
            tables["text"].append(f"{s.key} {s.text}".rstrip())
        speaker = s.speaker or s.key  # Kaldi needs a speaker per utterance; the key stands in for it
        tables["utt2spk"].append(f"{s.key} {speaker}")
        if s.gender:
            speakers[speaker].add(s.gender)
        if s.duration is not None:
            tables["utt2dur"].append(f"{s.key} {s.duration:.3f}")
        if s.tasks:
            tables["utt2task"].append(f"{s.key} {tasks_to_text(s.tasks)}")
        for name, field_name in _UTT2_FIELDS.items():
            value = getattr(s, field_name)
            if value:
                tables[name].append(f"{s.key} {value}")
    tables["wav.scp"] = [f"{reco} {audio}" for reco, audio in sorted(recordings.items(), key=lambda r: r[0].encode())]
    # Kaldi's gender is per speaker (m/f); when a speaker's utterances disagree, keep it per utterance.
    if speakers and all(len(g) == 1 for g in speakers.values()):
        short = {"male": "m", "female": "f"}
        tables["spk2gender"] = [f"{spk} {short.get(next(iter(g)), next(iter(g)))}" for spk, g in sorted(speakers.items())]
    else:
        tables["utt2gender"] = [f"{s.key} {s.gender}" for s in rows if s.gender]
    spk2utt: dict[str, list[str]] = defaultdict(list)
    for line in tables["utt2spk"]:
        utt, spk = line.split()
        spk2utt[spk].append(utt)
    tables["spk2utt"] = [f"{spk} {' '.join(utts)}" for spk, utts in sorted(spk2utt.items(), key=lambda r: r[0].encode())]
    for name, lines in tables.items():
        if lines:
            tmp = d / f".{name}.tmp"
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
            os.replace(tmp, d / name)
    return len(rows)


# ------------------------------------------------------------------------------------------ common voice


def read_commonvoice_tsv(src: str | Path, problems: Problems) -> Iterator[Sample]:
    """A Common Voice split (train.tsv, test.tsv, ...): clip path, sentence, client_id, age, gender, locale."""
    path = Path(src)
    if path.is_dir():
        raise ManifestError(f"{path} is a directory: pass the split's file, e.g. {path / 'train.tsv'}")
    clips = path.parent / "clips"
    lines = _text_lines(path, problems)
    header = next(lines, (0, ""))[1]
    columns = header.split("\t")
    if "path" not in columns or "sentence" not in columns:
        raise ManifestError(f"{path}: not a Common Voice tsv (needs columns 'path' and 'sentence')")
    known = {"path", "sentence", "client_id", "age", "gender", "locale"}
    for number, line in lines:
        problems.samples_in += 1
        row = dict(zip(columns, line.split("\t")))
        clip = (row.get("path") or "").strip()
        if not clip:
            problems.add("malformed_line", f"{path}:{number}", "empty 'path'")
            continue
        audio = clips / clip if (clips / clip).exists() or not (path.parent / clip).exists() else path.parent / clip
        yield Sample(
            key=Path(clip).stem,
            audio=str(audio),
            text=row.get("sentence"),
            speaker=label_str(row.get("client_id")),
            age=label_str(row.get("age")),
            gender=normalize_gender(row.get("gender")),
            lang=label_str(row.get("locale")),
            extra={k: v for k, v in row.items() if k not in known and v not in (None, "")},
        )


# ------------------------------------------------------------------------------------------- durations


def _probe(args: tuple[str, bool]) -> tuple[float | None, AudioError | None]:
    source, allow_pipes = args
    try:
        return audio_duration(source, allow_pipes), None
    except AudioError as err:
        return None, err


def fill_durations(
    samples: list[Sample], problems: Problems, workers: int = 0, allow_pipes: bool = True
) -> list[Sample]:
    """Set missing durations from file headers (never decoding samples), in parallel processes.

    Samples whose audio cannot be opened are dropped and counted (reason missing_audio or
    unreadable_audio). Segments with both ends known need no file access at all.
    """
    todo = [s for s in samples if s.duration is None and not (s.start is not None and s.end is not None)]
    for s in samples:
        if s.duration is None and s.start is not None and s.end is not None:
            s.duration = s.end - s.start
    sources = sorted({s.audio for s in todo if isinstance(s.audio, str)})
    workers = workers or min(os.cpu_count() or 1, 8)
    jobs = [(src, allow_pipes) for src in sources]
    if workers > 1 and len(jobs) > 64:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_probe, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
    else:
        results = [_probe(job) for job in jobs]
    found = dict(zip(sources, results))
    kept = []
    for s in samples:
        if s.duration is None and isinstance(s.audio, str):
            duration, error = found[s.audio]
            if error is not None:
                problems.add(error.reason, s.key, str(error))
                continue
            s.duration = duration - (s.start or 0.0)
        kept.append(s)
    return kept
