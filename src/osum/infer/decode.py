"""`osum decode`: batch decoding of whole data sets, with scores where references exist.

Per data source, under OUT/<name>/:
    result.jsonl   one parsed output per (utterance, task), appended as it is decoded
    text           key TAB answer (text.<task> files when the set is decoded for several tasks)
    summary.json, summary.md, alignments.txt, confusion_*.txt/.png   from `osum.infer.score`
    problems.json  utterances that could not be decoded (unreadable audio, ...), when there are any
Rerunning skips the (utterance, task) pairs already in result.jsonl, so an interrupted decode continues.
"""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
import time
from pathlib import Path
from typing import Any, Iterator

from ..audio import AudioError, load_audio
from ..data.manifest import ManifestError, read_manifest
from ..data.problems import Problems
from ..data.sample import Sample
from ..tasks import DEFAULT_TASK, canonical_task, task_file_stem
from .api import SpeechModel
from .formats import one_line
from .inputs import MIN_SAMPLES, AudioInput
from .score import markdown, references_from_samples, score, write_report


def set_name(src: str) -> str:
    """A directory name for a data source: the manifest's stem, or the directory's name."""
    path = Path(src.rstrip("/"))
    name = path.parent.name if path.name in ("manifest.jsonl", "shards.list", "data.list", "text") else path.stem
    return name or "data"


def _text_file(out: Path, task: str, several: bool) -> Path:
    return out / ("text." + task_file_stem(task) if several else "text")


def _chunks(jobs: list[tuple[Any, str]], size: int) -> Iterator[list[tuple[Any, str]]]:
    for i in range(0, len(jobs), size):
        yield jobs[i : i + size]


def decode_set(
    model: SpeechModel,
    src: str,
    out: Path,
    task: str | None = None,
    normalizer: str = "basic",
    chunk: int = 64,
    plots: bool = True,
    **decoding: Any,
) -> dict[str, Any]:
    """Decode one data source into `out` and score it; returns the score summary plus decoding figures."""
    out.mkdir(parents=True, exist_ok=True)
    problems = Problems(warn=False)
    samples = unique_keys(read_manifest(src, problems=problems), problems)
    wanted = (canonical_task(task),) if task else None
    jobs = [(s, canonical_task(t)) for s in samples for t in (wanted or s.tasks or (DEFAULT_TASK,))]
    jobs = list(dict(((s.key, t), (s, t)) for s, t in jobs).values())  # a sample listing a task twice: once
    result_path = out / "result.jsonl"
    done: set[tuple[str, str]] = set()
    if result_path.exists():
        for line in result_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done.add((str(row["key"]), row["task"]))
    todo = [(s, t) for s, t in jobs if (s.key, t) not in done]
    several = len({t for _, t in jobs}) > 1
    audio_seconds, started, decoded = 0.0, time.perf_counter(), 0
    progress = _progress(len(todo), f"decode {set_name(src)}")
    texts: dict[Path, Any] = {}  # open text files, one per task when several
    failed: set[str] = set()
    with open(result_path, "a", encoding="utf-8") as results, ExitStack() as files:
        for group in _chunks(todo, chunk):
            audios, tasks = [], []
            waves: dict[str, Any] = {}  # a sample asked for several tasks is read once
            for sample, t in group:
                try:
                    if sample.key not in waves:
                        waves[sample.key] = load_audio(sample.audio, start=sample.start, end=sample.end)
                    if len(waves[sample.key]) < MIN_SAMPLES:
                        raise AudioError(f"{len(waves[sample.key])} samples: too short to decode", "too_short")
                except AudioError as err:
                    if sample.key not in failed:  # a sample asked for several tasks is counted once
                        problems.add(err.reason, sample.key, str(err))
                    failed.add(sample.key)
                    progress.update(1)
                    continue
                audios.append(AudioInput(sample.key, waves[sample.key]))
                tasks.append(t)
            if not audios:
                continue
            for result in model.generate_audio(audios, tasks, **decoding):
                results.write(json.dumps(result, ensure_ascii=False) + "\n")
                path = _text_file(out, result["task"], several)
                if path not in texts:
                    texts[path] = files.enter_context(open(path, "a", encoding="utf-8"))
                texts[path].write(f"{result['key']}\t{one_line(result)}\n")
            results.flush()
            decoded += len(audios)
            audio_seconds += sum(a.duration for a in audios)
            progress.update(len(group))
            progress.set_postfix(rtf=f"{(time.perf_counter() - started) / max(audio_seconds, 1e-9):.3f}")
    progress.close()
    elapsed = time.perf_counter() - started
    hypotheses = [json.loads(line) for line in result_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    references, bad_labels = references_from_samples(samples, model.labels)
    # Only the tasks decoded now count: references of other tasks are not "missing outputs".
    asked: dict[str, set[str]] = {}
    for sample, t in jobs:
        asked.setdefault(sample.key, set()).add(t)
    for key, ref in references.items():
        ref.tasks = tuple(sorted(asked.get(key, ())))
    summary, details = score(references, hypotheses, normalizer, model.labels)
    summary.update(source=src, decoded_now=decoded, already_decoded=len(jobs) - len(todo),
                   audio_seconds=round(audio_seconds, 2), seconds=round(elapsed, 2),
                   real_time_factor=round(elapsed / audio_seconds, 4) if audio_seconds else None,
                   skipped=problems.summary(), unreadable_reference_labels=bad_labels,
                   account=problems.account(len(samples) - len(failed)))
    write_report(summary, details, out, plots=plots)
    if problems.total:
        problems.write_report(out / "problems.json")
    return summary


def unique_keys(samples: Iterator[Sample], problems: Problems) -> list[Sample]:
    """The samples with the first record of each key; a repeated key is counted, as `osum data pack` does."""
    kept: dict[str, Sample] = {}
    for sample in samples:
        if sample.key in kept:
            problems.add("duplicate_key", sample.key, "the key appears more than once; the first record is decoded")
            continue
        kept[sample.key] = sample
    return list(kept.values())


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="utt", disable=not sys.stderr.isatty(), file=sys.stderr)


def decode(model_dir: str, sources: list[str], out_dir: str, task: str | None = None, device: str = "cpu",
           normalizer: str = "basic", plots: bool = True, max_frames_in_batch: int = 8000, engine: str = "torch",
           engine_options: dict[str, Any] | None = None, **decoding: Any) -> dict[str, dict[str, Any]]:
    """Decode every source into OUT/<name>/ with the engine chosen (osum.infer.engines); prints each set's score
    table; returns the summaries."""
    with SpeechModel.load(model_dir, device, max_frames_in_batch=max_frames_in_batch, engine=engine,
                          engine_options=engine_options) as model:
        return decode_sets(model, sources, out_dir, task, normalizer, plots, **decoding)


def decode_sets(model: SpeechModel, sources: list[str], out_dir: str, task: str | None = None,
                normalizer: str = "basic", plots: bool = True, **decoding: Any) -> dict[str, dict[str, Any]]:
    """`decode` with a model already loaded."""
    summaries = {}
    names: dict[str, int] = {}
    for src in sources:
        name = set_name(src)
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:
            name = f"{name}-{names[name]}"
        try:
            summary = decode_set(model, src, Path(out_dir) / name, task, normalizer, plots=plots, **decoding)
        except (ManifestError, FileNotFoundError) as err:  # one unreadable set does not stop the others
            print(f"## {name}: not decoded: {err}", file=sys.stderr, flush=True)
            summaries[name] = {"source": src, "error": str(err), "skipped": {}}
            continue
        summaries[name] = summary
        rtf = summary["real_time_factor"]
        print(f"## {name}: {summary['decoded_now']} decoded, {summary['already_decoded']} already done, "
              f"{sum(summary['skipped'].values())} skipped" + (f", real-time factor {rtf:.3f}" if rtf else ""))
        print(markdown(summary) + "\n", flush=True)
    return summaries
