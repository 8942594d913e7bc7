"""Fault injection for the data layer: every bad input ends in a named, counted outcome and the job goes on.

Each data command keeps one account (samples in = samples out + samples skipped by reason); these tests
plant one fault among good clips and read that account, the reason and where it points.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import osum.audio
from osum.audio import AudioError, audio_info, load_audio, run_pipe
from osum.cli import main
from osum.data.check import check_manifest
from osum.data.manifest import read_manifest
from osum.data.problems import REASONS, Problems
from osum.data.shards import read_shards

from conftest import tone, write_tone


def run(capsys, *argv: str) -> tuple[int, dict]:
    """Run an `osum` command in-process; (exit status, its last JSON line)."""
    status = main(list(argv))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return status, json.loads(lines[-1]) if lines else {}


def balanced(account: dict) -> bool:
    """The promise: every sample in comes out or is counted under a reason; nothing is left unexplained."""
    return (account["samples_in"] == account["samples_out"] + account["skipped"]
            and sum(account["skipped_by_reason"].values()) == account["skipped"] and "not_reached" not in account)


def wav_bytes(wave: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def good_rows(folder: Path, count: int = 4) -> list[dict]:
    return [{"key": f"good{i}", "wav": str(write_tone(folder / f"good{i}.wav", 1.0 + 0.2 * i, seed=i)),
             "txt": f"GOOD {i}", "task": "<TRANSCRIBE>"} for i in range(count)]


def write_jsonl(path: Path, rows: list[dict], raw_lines: list[bytes] = ()) -> Path:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + b"".join(raw_lines))
    return path


@pytest.fixture
def faults(tmp_path) -> dict[str, Path]:
    """One file per fault: NaN samples, a WAV shorter than its header, a FLAC that states no length."""
    folder = tmp_path / "faults"
    folder.mkdir()
    nan = tone(1.0)
    nan[100:200] = np.nan
    (folder / "nan.wav").write_bytes(wav_bytes(nan, subtype="FLOAT"))
    whole = wav_bytes(tone(2.5))
    (folder / "short.wav").write_bytes(whole[: 44 + int(0.3 * 16000) * 2])  # header says 2.5 s, holds 0.3 s
    buffer = io.BytesIO()
    sf.write(buffer, tone(3.0), 16000, format="FLAC")
    streamed = bytearray(buffer.getvalue())
    info = int.from_bytes(streamed[18:26], "big") & ~((1 << 36) - 1)  # STREAMINFO total samples = 0: unknown
    streamed[18:26] = info.to_bytes(8, "big")
    (folder / "streamed.flac").write_bytes(bytes(streamed))
    return {name: folder / f"{name}.{'flac' if name == 'streamed' else 'wav'}" for name in ("nan", "short", "streamed")}


# ------------------------------------------------------------------------------------------- audio itself


def test_one_validation_names_each_fault_with_its_reason(faults, tmp_path):
    cases = {
        faults["nan"]: "non_finite_audio",
        faults["short"]: "truncated_audio",
        tmp_path / "absent.wav": "missing_audio",
        (tmp_path / "empty.wav"): "empty_audio",
        (tmp_path / "noise.wav"): "unreadable_audio",
    }
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "noise.wav").write_bytes(b"RIFF....WAVEjunkjunkjunk" * 10)
    for path, reason in cases.items():
        with pytest.raises(AudioError) as caught:
            load_audio(path)
        assert caught.value.reason == reason and str(path.name) in str(caught.value)
        assert "0x" not in str(caught.value)  # no object addresses in messages
    # The same checks on bytes (an upload, a shard member) and after a pipe.
    with pytest.raises(AudioError) as caught:
        load_audio(faults["short"].read_bytes())
    assert caught.value.reason == "truncated_audio"
    with pytest.raises(AudioError) as caught:
        load_audio(f"cat {faults['nan']} |")
    assert caught.value.reason == "non_finite_audio"
    # A reason survives the trip from a worker process (pickling).
    import pickle

    assert pickle.loads(pickle.dumps(AudioError("x", "truncated_audio"))).reason == "truncated_audio"
    assert set(cases.values()) <= set(REASONS)


def test_a_flac_that_states_no_length_is_measured_not_taken_as_endless(faults):
    frames, rate = audio_info(faults["streamed"])
    assert (frames, rate) == (48000, 16000)  # libsndfile alone reports 2**63 frames here
    wave = load_audio(faults["streamed"])
    assert wave.shape == (48000,) and np.allclose(wave, tone(3.0), atol=1e-4)
    assert load_audio(faults["streamed"], start=1.0, end=2.0).shape == (16000,)
    assert audio_info(faults["streamed"].read_bytes()) == (48000, 16000)


def test_pipes_are_bounded_in_bytes_and_time_and_a_chatty_stderr_cannot_block(tmp_path, monkeypatch):
    monkeypatch.setattr(osum.audio, "MAX_AUDIO_BYTES", 1 << 20)
    with pytest.raises(AudioError) as caught:
        run_pipe("head -c 50000000 /dev/zero |")
    assert caught.value.reason == "audio_too_large" and "1 MiB" in str(caught.value)
    with pytest.raises(AudioError) as caught:
        run_pipe("sleep 30; echo late |", timeout=1)  # the whole pipeline is stopped, not only the shell
    assert "did not finish within 1 s" in str(caught.value)
    clip = write_tone(tmp_path / "a.wav", 0.5)
    noisy = f"python3 -c \"import sys; sys.stderr.write('x' * 300000)\"; cat {clip} |"
    assert run_pipe(noisy) == clip.read_bytes()
    with pytest.raises(AudioError) as caught:
        run_pipe("echo broken >&2; exit 3 |")
    assert "exit 3" in str(caught.value) and "broken" in str(caught.value)


# ---------------------------------------------------------------------------------------------- manifests


def test_a_non_utf8_byte_costs_one_counted_line_in_every_reader(tmp_path, capsys):
    rows = good_rows(tmp_path)
    manifest = write_jsonl(tmp_path / "m.jsonl", rows[:2], [b'{"key": "caf\xe9", "wav": "x.wav"}\n'])
    manifest.write_bytes(manifest.read_bytes() + b"".join(json.dumps(r).encode() + b"\n" for r in rows[2:]))
    problems = Problems()
    keys = [s.key for s in read_manifest(manifest, problems=problems)]
    assert keys == ["good0", "good1", "good2", "good3"]
    assert problems.counts == {"malformed_line": 1}
    record = problems.records[0]
    assert record["where"] == f"{manifest}:3" and "not UTF-8" in record["detail"] and "0xe9" in record["detail"]
    # check, convert, pack and batches all go on and count it, and --strict fails on it.
    status, summary = run(capsys, "data", "check", str(manifest))
    assert status == 0 and summary["good"] == 4 and summary["skipped_by_reason"] == {"malformed_line": 1}
    assert balanced(summary)
    status, summary = run(capsys, "data", "convert", "--to", "kaldi", str(manifest), str(tmp_path / "kaldi"))
    assert status == 0 and summary["written"] == 4 and balanced(summary)
    status, summary = run(capsys, "data", "pack", str(manifest), "--out", str(tmp_path / "shards"))
    assert status == 0 and summary["samples_out"] == 4 and balanced(summary)
    status, summary = run(capsys, "data", "batches", str(manifest), "num_workers=0")
    assert status == 0 and summary["samples"] == 4 and balanced(summary)
    assert run(capsys, "data", "batches", str(manifest), "num_workers=0", "--strict")[0] == 1
    # A BOM at the start of a file (Windows editors) is not a fault.
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    problems = Problems()
    assert len(list(read_manifest(bom, problems=problems))) == 4 and problems.counts == {"malformed_line": 1}


def test_kaldi_and_common_voice_readers_count_bad_lines(tmp_path):
    clips = [write_tone(tmp_path / f"u{i}.wav", 0.5) for i in range(3)]
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_bytes(b"".join(f"u{i} {c}\n".encode() for i, c in enumerate(clips))
                                    + b"u\xff9 nowhere.wav\n" + f"u0 {clips[1]}\n".encode())
    (kaldi / "text").write_bytes(b"u0 HELLO\nu1 CAF\xc9\nu2 BYE\n")
    problems = Problems()
    samples = list(read_manifest(kaldi, problems=problems))
    assert [s.key for s in samples] == ["u0", "u1", "u2"]
    assert samples[0].audio == str(clips[0]) and samples[1].text is None and samples[2].text == "BYE"
    # wav.scp lines are utterances (skipped, counted); a bad line of `text` loses a transcript (a note).
    assert problems.counts == {"malformed_line": 1, "duplicate_key": 1} and problems.notes == {"malformed_line": 1}
    assert problems.account(len(samples))["samples_in"] == 5 and balanced(problems.account(len(samples)))

    tsv = tmp_path / "cv" / "train.tsv"
    (tsv.parent / "clips").mkdir(parents=True)
    tsv.write_bytes(b"client_id\tpath\tsentence\n" b"a\tone.mp3\tHELLO\n" b"b\ttwo.mp3\tCAF\xe9\n" b"c\t\tNO PATH\n")
    problems = Problems()
    samples = list(read_manifest(tsv, problems=problems))
    assert [s.key for s in samples] == ["one"] and problems.counts == {"malformed_line": 2}
    assert {r["where"] for r in problems.records} == {f"{tsv}:3", f"{tsv}:4"}


# ------------------------------------------------------------------------------------- check, pack, batches


def test_check_pack_and_batches_agree_on_each_fault(faults, tmp_path, capsys):
    rows = good_rows(tmp_path) + [
        {"key": "nan", "wav": str(faults["nan"]), "txt": "NAN"},
        {"key": "short", "wav": str(faults["short"]), "txt": "A WHOLE SENTENCE OF TWO AND A HALF SECONDS"},
        {"key": "streamed", "wav": str(faults["streamed"]), "txt": "FINE"},
        {"key": "good0", "wav": str(faults["streamed"]), "txt": "SAME KEY AGAIN"},
    ]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    expected = {"non_finite_audio": 1, "truncated_audio": 1, "duplicate_key": 1}

    status, summary = run(capsys, "data", "check", str(manifest), "--report", str(tmp_path / "report.jsonl"))
    assert status == 0 and summary["skipped_by_reason"] == expected and summary["good"] == 5 and balanced(summary)
    report = [json.loads(line) for line in (tmp_path / "report.jsonl").read_text().splitlines()]
    assert {(r["reason"], r["where"]) for r in report} == {
        ("non_finite_audio", "nan"), ("truncated_audio", "short"), ("duplicate_key", "good0")}
    # Only the headers: fast, and then the NaN clip (whose header is fine) goes unnoticed, as documented.
    assert run(capsys, "data", "check", str(manifest), "--headers-only")[1]["skipped_by_reason"] == {
        "truncated_audio": 1, "duplicate_key": 1}
    assert run(capsys, "data", "check", str(manifest), "--strict")[0] == 1

    # pack writes its shards and list, skips the same samples for the same reasons, and a rerun agrees.
    out = tmp_path / "shards"
    for attempt in range(2):
        status, summary = run(capsys, "data", "pack", str(manifest), "--out", str(out), "--per-shard", "3")
        assert status == 0 and summary["skipped_by_reason"] == expected and balanced(summary)
        assert summary["samples_out"] == 5 and summary["shards_reused"] == (0, 3)[attempt]
    problems = Problems()
    packed = list(read_shards(out, problems))
    assert sorted(s.key for s in packed) == ["good0", "good1", "good2", "good3", "streamed"]
    assert next(s for s in packed if s.key == "streamed").duration == pytest.approx(3.0)
    assert problems.total == 0

    # The loader on the raw manifest counts the same faults under the same names.
    status, summary = run(capsys, "data", "batches", str(manifest), "num_workers=0", "shuffle=false")
    assert status == 0 and summary["skipped_by_reason"] == {"non_finite_audio": 1, "truncated_audio": 1}
    assert summary["samples"] == 6 and balanced(summary)  # the loader trains on a repeated key's both records


def test_pack_reuses_a_shard_only_when_its_inputs_and_options_are_the_same(tmp_path, capsys):
    rows = good_rows(tmp_path, 6)
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    out = tmp_path / "shards"

    def pack(*options: str) -> dict:
        status, summary = run(capsys, "data", "pack", str(manifest), "--out", str(out), *options)
        assert status == 0 and balanced(summary)
        return summary

    def packed() -> list[tuple[str, str]]:
        return sorted((s.key, s.text) for s in read_shards(out, Problems()))

    assert pack("--per-shard", "2")["shards_reused"] == 0
    assert pack("--per-shard", "2")["shards_reused"] == 3
    # The crash-then-fix case: a manifest edited between runs (one sample changed, one replaced) must not
    # leave a reused shard holding a sample twice or lacking another.
    rows[3] = dict(rows[3], txt="FIXED")
    rows[4] = dict(rows[4], key="renamed")
    write_jsonl(manifest, rows)
    summary = pack("--per-shard", "2")
    assert summary["shards_reused"] == 1 and summary["utterances_written"] == 4
    assert packed() == sorted((r["key"], r["txt"]) for r in rows)
    # A changed audio file, and each packing option, rewrites what it touches.
    write_tone(Path(rows[0]["wav"]), 2.0, seed=99)
    assert pack("--per-shard", "2")["shards_reused"] == 2
    for options in (["--per-shard", "3"], ["--per-shard", "3", "--format", "wav"],
                    ["--per-shard", "3", "--format", "wav", "--resample", "8000"]):
        summary = pack(*options)
        assert summary["shards_reused"] == 0 and summary["utterances_written"] == 6
    assert {s.audio_format for s in read_shards(out, Problems())} == {"wav"}
    assert sf.info(io.BytesIO(next(read_shards(out, Problems())).audio)).samplerate == 8000
    # Fewer shards than before: the old tail is removed, not left beside the list.
    summary = pack("--per-shard", "6", "--format", "wav", "--resample", "8000")
    assert summary["stale_shards_removed"] == 1 and sorted(p.name for p in out.glob("shard_*.tar")) == [
        "shard_000000.tar"]
    assert packed() == sorted((r["key"], r["txt"]) for r in rows)


def test_a_shard_that_breaks_mid_sample_counts_that_sample(tmp_path):
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(3):
            for name, data in ((f"k{i}.txt", b"HI"), (f"k{i}.wav", wav_bytes(tone(0.5)))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("k3.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"\xff\xfe\x00"))  # not UTF-8: a malformed sample
        info = tarfile.TarInfo("k3.wav")
        data = wav_bytes(tone(0.5))
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    problems = Problems()
    assert [s.key for s in read_shards(path, problems)] == ["k0", "k1", "k2"]
    assert problems.counts == {"malformed_sample": 1}
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[:20000])  # inside the audio of k1
    problems = Problems()
    assert [s.key for s in read_shards(cut, problems)] == ["k0"]
    assert problems.counts == {"truncated_tar": 1} and problems.records[0]["where"].endswith(":k1")
    assert balanced(problems.account(1))


def test_large_and_streamed_inputs_in_a_kaldi_dir(faults, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(osum.audio, "MAX_AUDIO_BYTES", 1 << 20)
    clip = write_tone(tmp_path / "ok.wav", 1.0)
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text(f"ok {clip}\nstreamed {faults['streamed']}\n"
                                   f"flood head -c 9000000 /dev/zero |\nfails false |\n")
    (kaldi / "text").write_text("ok A\nstreamed B\nflood C\nfails D\n")
    status, summary = run(capsys, "data", "check", str(kaldi))
    assert status == 0 and summary["good"] == 2 and balanced(summary)
    assert summary["skipped_by_reason"] == {"audio_too_large": 1, "unreadable_audio": 1}


def test_every_reason_used_in_the_code_is_declared():
    import re

    source = "\n".join(p.read_text() for p in Path(osum.audio.__file__).parent.rglob("*.py"))
    used = set(re.findall(r"(?:add|note)\(\s*\"([a-z_]+)\"", source))
    used |= set(re.findall(r"AudioError\([^)]*?,\s*\"([a-z_]+)\"\)", source))
    assert used and used <= set(REASONS), used - set(REASONS)
    with pytest.raises(ValueError, match="unknown problem reason"):
        Problems().add("made_up", "here")


# ---------------------------------------------------------------------------------------------- decode


def test_decode_counts_duplicates_and_bad_audio_and_goes_on(trained_model, faults, tmp_path, capsys):
    model_dir, rows = trained_model
    first, second = rows[0], rows[1]
    records = [
        dict(first, tasks=["<TRANSCRIBE>"]),
        dict(second, id=first["id"], tasks=["<TRANSCRIBE>"]),  # the same key again, other audio
        {"id": "nan", "audio": str(faults["nan"]), "text": "NAN", "tasks": ["<TRANSCRIBE>"]},
        {"id": "short", "audio": str(faults["short"]), "text": "SHORT", "tasks": ["<TRANSCRIBE>"]},
    ]
    manifest = write_jsonl(tmp_path / "eval.jsonl", records, [b'{"id": "caf\xe9"}\n'])
    missing_set = tmp_path / "absent.jsonl"
    out = tmp_path / "decode"
    status = main(["decode", "--model", str(model_dir), "--data", str(missing_set), str(manifest), "--out", str(out)])
    printed = capsys.readouterr()
    assert status == 2 and "absent" in printed.err  # the unreadable set is named, the next set still decoded
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["skipped"] == {"duplicate_key": 1, "non_finite_audio": 1, "truncated_audio": 1,
                                  "malformed_line": 1}
    assert balanced(summary["account"]) and summary["account"]["samples_out"] == 1
    results = [json.loads(line) for line in (out / "eval" / "result.jsonl").read_text().splitlines()]
    assert [r["key"] for r in results] == [first["id"]]
    assert results[0]["text"] == first["text"]  # the first record's audio, not the repeated key's
    problems = [json.loads(line) for line in (out / "eval" / "problems.json").read_text().splitlines()]
    assert {p["reason"] for p in problems} == set(summary["skipped"])
    assert main(["decode", "--model", str(model_dir), "--data", str(manifest), "--out", str(out), "--strict"]) == 1


def test_the_readme_lists_every_reason():
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("| reason | meaning, and what to do |")[1].split("\n\n")[0]
    assert dict(re.findall(r"^\| `([a-z_]+)` \| (.+) \|$", table, flags=re.M)) == REASONS


def test_a_hung_worker_ends_the_epoch_with_a_message_not_a_wait_for_ever(tmp_path, monkeypatch):
    import time

    import osum.data.loader as loader_module
    from osum.data.loader import LoaderConfig, SpeechLoader

    manifest = write_jsonl(tmp_path / "m.jsonl", good_rows(tmp_path, 2))
    real = loader_module.load_audio

    def hangs(source, *args, **kwargs):  # a stuck NFS read, as the forked worker sees it
        if str(source).endswith("good1.wav"):
            time.sleep(120)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(loader_module, "load_audio", hangs)
    loader = SpeechLoader([str(manifest)], LoaderConfig(num_workers=1, worker_timeout=2, batching="static",
                                                        batch_size=1, shuffle=False))
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="good1.*worker_timeout"):
        list(loader)
    assert time.monotonic() - started < 60
    loader.close()


def test_pack_headers_only_stores_flac_unchecked_and_the_loader_counts_it(tmp_path, capsys):
    rows = good_rows(tmp_path, 2)
    whole = io.BytesIO()
    sf.write(whole, tone(3.0), 16000, format="FLAC")
    (tmp_path / "cut.flac").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])  # a broken-off copy
    rows.append({"key": "cut", "wav": str(tmp_path / "cut.flac"), "txt": "CUT"})
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    status, checked = run(capsys, "data", "pack", str(manifest), "--out", str(tmp_path / "checked"))
    assert status == 0 and checked["samples_out"] == 2 and list(checked["skipped_by_reason"]) in (
        ["truncated_audio"], ["unreadable_audio"])
    status, fast = run(capsys, "data", "pack", str(manifest), "--out", str(tmp_path / "fast"), "--headers-only")
    assert status == 0 and fast["samples_out"] == 3 and fast["skipped"] == 0
    status, summary = run(capsys, "data", "batches", str(tmp_path / "fast"), "num_workers=0")
    assert status == 0 and summary["samples"] == 2 and summary["skipped_by_reason"] == checked["skipped_by_reason"]
    assert balanced(summary)
