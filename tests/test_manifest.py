import json
import subprocess
import sys

import pytest

from osum.data.manifest import (
    ManifestError,
    detect_format,
    fill_durations,
    read_manifest,
    write_manifest,
)
from osum.data.problems import Problems
from osum.data.sample import Word

from conftest import write_tone


def test_osum_jsonl_reads_aliases_and_counts_malformed_lines(tmp_path):
    write_tone(tmp_path / "a.wav", 1.0)
    lines = [
        json.dumps({"key": "k1", "wav": "a.wav", "txt": "HELLO", "task": "<TRANSCRIBE>", "gender": "M", "foo": 1}),
        "{not json",
        json.dumps({"id": "k2", "audio": "a.wav", "text": "HI", "tasks": ["asr", "gender"], "age": 7,
                    "words": [{"word": "hi", "start": 0.1, "end": 0.4}], "extra": {"room": "x"}}),
        json.dumps({"key": "k3", "txt": "no audio"}),
        "[1, 2]",
        "",
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    problems = Problems()
    samples = list(read_manifest(manifest, problems=problems))
    assert [s.key for s in samples] == ["k1", "k2"]
    assert samples[0].audio == str(tmp_path / "a.wav")  # relative to the manifest's folder
    assert samples[0].gender == "male" and samples[0].tasks == ("<TRANSCRIBE>",)
    assert samples[0].extra == {"foo": 1}
    assert samples[1].text == "HI" and samples[1].tasks == ("asr", "gender") and samples[1].age == "7"
    assert samples[1].words == [Word("hi", 0.1, 0.4)] and samples[1].extra == {"room": "x"}
    assert problems.counts == {"malformed_line": 3}
    wheres = [r["where"] for r in problems.records]
    assert wheres == [f"{manifest}:2", f"{manifest}:4", f"{manifest}:5"]
    assert "no 'wav' field" in problems.records[1]["detail"]


def make_kaldi_dir(tmp_path):
    d = tmp_path / "kaldi"
    d.mkdir()
    a = write_tone(tmp_path / "wav" / "rec1.wav", 6.0)
    b = write_tone(tmp_path / "wav" / "rec2.flac", 3.0, 8000)
    (d / "wav.scp").write_text(f"rec1 {a}\nrec2 cat {b} |\n")
    (d / "segments").write_text("u1 rec1 0.00 2.50\nu2 rec1 2.50 6.00\nu3 rec2 0.5 -1\n")
    (d / "text").write_text("u1 HELLO WORLD\nu2 你好 世界\nu3 GOOD MORNING\n")
    (d / "utt2spk").write_text("u1 spkA\nu2 spkA\nu3 spkB\n")
    (d / "spk2gender").write_text("spkA m\nspkB f\n")
    (d / "utt2age").write_text("u1 adult\nu3 child\n")
    (d / "utt2emotion").write_text("u2 happy\n")
    return d


def test_kaldi_dir_with_segments_pipes_and_labels(tmp_path):
    d = make_kaldi_dir(tmp_path)
    assert detect_format(d) == "kaldi"
    problems = Problems()
    samples = {s.key: s for s in read_manifest(d, problems=problems)}
    assert set(samples) == {"u1", "u2", "u3"}
    assert samples["u2"].start == 2.5 and samples["u2"].end == 6.0 and samples["u2"].duration == 3.5
    assert samples["u3"].end is None and samples["u3"].audio.endswith("|")
    assert samples["u1"].gender == "male" and samples["u3"].gender == "female"
    assert samples["u1"].age == "adult" and samples["u2"].emotion == "happy"
    assert samples["u2"].text == "你好 世界"
    # The pipe is run to read the header; with pipes disabled it is a counted, explained problem.
    kept = fill_durations(list(samples.values()), problems)
    assert {s.key: round(s.duration, 2) for s in kept} == {"u1": 2.5, "u2": 3.5, "u3": 2.5}
    refused = Problems()
    s3 = read_manifest(d, problems=Problems())
    kept = fill_durations([s for s in s3 if s.key == "u3"], refused, allow_pipes=False)
    assert kept == [] and refused.counts == {"unreadable_audio": 1}
    assert "running commands is disabled" in refused.records[0]["detail"]


def test_round_trip_kaldi_osum_funasr_kaldi_keeps_shared_fields(tmp_path):
    d = make_kaldi_dir(tmp_path)
    problems = Problems()
    original = fill_durations(list(read_manifest(d, problems=problems)), problems)
    write_manifest(original, tmp_path / "a.jsonl", "osum")
    step1 = list(read_manifest(tmp_path / "a.jsonl", "osum"))
    write_manifest(step1, tmp_path / "b.jsonl", "funasr")
    assert detect_format(tmp_path / "b.jsonl") == "funasr"
    funasr_line = json.loads((tmp_path / "b.jsonl").read_text().splitlines()[0])
    assert set(funasr_line) >= {"key", "source", "source_len", "target", "target_len"}
    assert funasr_line["source_len"] == 250 and funasr_line["target_len"] == 2
    step2 = list(read_manifest(tmp_path / "b.jsonl", "funasr"))
    write_manifest(step2, tmp_path / "kaldi2", "kaldi")
    final = {s.key: s for s in read_manifest(tmp_path / "kaldi2", "kaldi")}
    for s in original:
        f = final[s.key]
        for name in ("audio", "start", "end", "text", "speaker", "gender", "age", "emotion"):
            assert getattr(f, name) == getattr(s, name), (s.key, name)
        assert f.duration == pytest.approx(s.duration, abs=1e-3)
    # The Kaldi files are what Kaldi expects.
    assert (tmp_path / "kaldi2" / "spk2gender").read_text() == "spkA m\nspkB f\n"
    assert (tmp_path / "kaldi2" / "spk2utt").read_text() == "spkA u1 u2\nspkB u3\n"


def test_common_voice_tsv(tmp_path):
    clips = tmp_path / "cv" / "clips"
    write_tone(clips / "common_voice_en_1.wav", 1.2)
    write_tone(clips / "common_voice_en_2.wav", 2.0)
    tsv = tmp_path / "cv" / "test.tsv"
    tsv.write_text(
        "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"
        "abc\tcommon_voice_en_1.wav\tHello there.\t2\t0\ttwenties\tmale_masculine\tUS\ten\t\n"
        "def\tcommon_voice_en_2.wav\tA \"quoted\" line\t2\t0\t\tfemale_feminine\t\ten\t\n"
    )
    samples = list(read_manifest(tsv))
    assert [s.key for s in samples] == ["common_voice_en_1", "common_voice_en_2"]
    assert samples[0].audio == str(clips / "common_voice_en_1.wav")
    assert (samples[0].text, samples[0].gender, samples[0].age, samples[0].lang) == ("Hello there.", "male", "twenties", "en")
    assert samples[1].text == 'A "quoted" line' and samples[1].age is None and samples[1].gender == "female"
    assert samples[0].speaker == "abc" and samples[0].extra["accents"] == "US"
    with pytest.raises(ManifestError, match="train.tsv"):
        list(read_manifest(tmp_path / "cv", "commonvoice"))


def test_durations_in_parallel_processes_match_headers(tmp_path):
    lines = []
    for i in range(80):
        path = write_tone(tmp_path / "w" / f"{i}.wav", 0.5 + i * 0.01)
        lines.append(json.dumps({"key": str(i), "wav": str(path), "txt": "x"}))
    lines.append(json.dumps({"key": "gone", "wav": str(tmp_path / "missing.wav"), "txt": "x"}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    problems = Problems()
    samples = fill_durations(list(read_manifest(tmp_path / "m.jsonl")), problems, workers=2)
    assert len(samples) == 80
    assert [round(s.duration, 3) for s in samples] == [round(0.5 + i * 0.01, 3) for i in range(80)]
    assert problems.counts == {"missing_audio": 1} and problems.records[0]["where"] == "gone"


def test_convert_cli_on_real_clips(tmp_path, ci_small):
    out = subprocess.run(
        [sys.executable, "-m", "osum.cli", "data", "convert", "--from", "osum", "--to", "kaldi", str(ci_small), str(tmp_path / "k")],
        capture_output=True, text=True, check=True,
    )
    summary = json.loads(out.stdout)
    assert summary["written"] == 113 and summary["skipped"] == 0
    assert len((tmp_path / "k" / "wav.scp").read_text().splitlines()) == 113
    out = subprocess.run(
        [sys.executable, "-m", "osum.cli", "data", "convert", "--to", "funasr", str(tmp_path / "k"), str(tmp_path / "f.jsonl")],
        capture_output=True, text=True, check=True,
    )
    records = [json.loads(l) for l in (tmp_path / "f.jsonl").read_text().splitlines()]
    truth = {json.loads(l)["id"]: json.loads(l) for l in ci_small.read_text().splitlines()}
    assert len(records) == 113
    for r in records:
        assert abs(r["source_len"] / 100 - truth[r["key"]]["duration"]) < 0.02
