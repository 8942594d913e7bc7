"""Using a trained model: the Python API, long audio, `osum infer` and `osum decode` with scores.

The model (conftest.trained_model) is a tiny speech LLM overfit on 8 real AN4 clips, so its answers on them
are known: the exact transcripts and genders."""

from __future__ import annotations

import io
import json
import os
import re

import numpy as np
import pytest
import soundfile as sf

import osum
from osum.audio import AudioError, load_audio
from osum.cli import main
from osum.infer.api import SpeechModel
from osum.infer.segment import split_points
from osum.tasks import UnknownTaskError

TASK = "<TRANSCRIBE> <GENDER>"


@pytest.fixture(scope="module")
def model(trained_model):
    return osum.load(trained_model[0])


def test_generate_answers_every_input_kind(model, trained_model):
    rows = trained_model[1]
    results = model.generate([r["audio"] for r in rows], task=TASK)
    assert [r["text"] for r in results] == [r["text"] for r in rows]
    assert [r["gender"] for r in results] == [r["gender"] for r in rows]
    assert all(r["confidence"]["gender"] > 0.9 and r["task"] == TASK and not r["unparsed"] for r in results)
    first, wave = rows[0], load_audio(rows[0]["audio"])
    assert results[0]["key"] == first["audio"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
    assert results[0]["duration"] == pytest.approx(len(wave) / 16000, abs=1e-3)
    assert results[0]["segments"] == [{"start": 0.0, "end": results[0]["duration"], "text": first["text"]}]
    buffer = io.BytesIO()
    sf.write(buffer, wave, 16000, format="FLAC")
    stereo = np.stack([wave, wave], axis=1)
    int16 = np.round(wave * 32767).astype(np.int16)
    kinds = [open(first["audio"], "rb").read(), buffer.getvalue(), wave, (16000, stereo), (stereo.T, 16000), int16]
    for kind, result in zip(kinds, model.generate(kinds, task=TASK)):
        assert (result["text"], result["gender"]) == (first["text"], first["gender"]), type(kind)
    single = model.generate(first["audio"], task="asr")  # one input, an alias tag
    assert len(single) == 1 and single[0]["text"] == first["text"] and single[0]["gender"] is None
    # Labels generated freely (no scoring) agree on a model this sure, and carry no confidence.
    free = model.generate(first["audio"], task=TASK, label_scoring=False)[0]
    assert free["gender"] == first["gender"] and free["confidence"] is None


def test_batched_decoding_equals_one_at_a_time(model, trained_model):
    paths = [r["audio"] for r in trained_model[1]]
    batched = model.generate(paths, task=TASK)
    alone = [model.generate(p, task=TASK)[0] for p in paths]
    tight = SpeechModel(model.model, max_frames_in_batch=700)  # forces many small batches
    for other in (alone, tight.generate(paths, task=TASK)):
        # Everything equal; a confidence is a probability computed from logits of differently padded matrix
        # products, which BLAS may round differently in the last bits (seen: 0.99489212 vs 0.99489224).
        assert [without_confidence(r) for r in other] == [without_confidence(r) for r in batched]
        for mine, theirs in zip(other, batched):
            assert mine["confidence"].keys() == theirs["confidence"].keys()
            assert all(abs(mine["confidence"][k] - theirs["confidence"][k]) < 1e-5 for k in mine["confidence"])


def without_confidence(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "confidence"}


def test_split_points_cut_in_pauses_and_cover_everything():
    rng = np.random.default_rng(0)
    speech = lambda s: rng.normal(0, 0.3, int(s * 16000)).astype(np.float32)  # noqa: E731
    pause = lambda s: np.zeros(int(s * 16000), np.float32)  # noqa: E731
    wave = np.concatenate([speech(12), pause(0.5), speech(14), pause(0.5), speech(9), pause(0.5), speech(20)])
    pieces = split_points(wave, 30.0)
    assert pieces[0][0] == 0 and pieces[-1][1] == len(wave)
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))  # contiguous: nothing dropped or repeated
    assert all(b - a <= 30 * 16000 for a, b in pieces)
    for _, cut in pieces[:-1]:  # every cut lies in a pause
        assert np.abs(wave[cut - 800 : cut + 800]).max() == 0
    # Speech with no pause at all is still cut into window-sized pieces, never truncated.
    steady = speech(95)
    pieces = split_points(steady, 30.0)
    assert sum(b - a for a, b in pieces) == len(steady) and all(b - a <= 30 * 16000 for a, b in pieces)
    assert split_points(speech(5), 30.0) == [(0, 5 * 16000)]


def test_long_audio_is_split_decoded_and_stitched(model, trained_model):
    """Three real clips with 1 s pauses, pieces of at most (longest clip + 1 s): one piece per clip, cut in
    the pauses, silent edges trimmed; the stitched result is exactly the pieces' results in order, with
    times on the whole file. (The tiny overfit model only knows its exact training clips, so recognition
    of the trimmed pieces is not asserted here; the recipes measure long-audio WER with real models.)"""
    rows = sorted(trained_model[1], key=lambda r: len(load_audio(r["audio"])))
    waves = [load_audio(r["audio"]) for r in rows]
    k = min(range(len(waves) - 2), key=lambda i: len(waves[i + 2]) / len(waves[i]))
    clips = waves[k : k + 3]
    gap = np.zeros(16000, np.float32)
    long_wave = np.concatenate([clips[0], gap, clips[1], gap, clips[2]])
    limit = (max(len(c) for c in clips) + 16000) / 16000
    assert len(long_wave) / 16000 > limit  # really longer than one piece
    splitter = SpeechModel(model.model, max_piece_seconds=limit)
    result = splitter.generate(long_wave, task=TASK)[0]
    segments = result["segments"]
    assert len(segments) == 3
    bounds = np.cumsum([0, len(clips[0]), 16000, len(clips[1]), 16000, len(clips[2])]) / 16000
    for segment, (clip_start, clip_end) in zip(segments, [(bounds[0], bounds[1]), (bounds[2], bounds[3]), (bounds[4], bounds[5])]):
        # Each piece holds its whole clip and at most the 0.2 s trimming margin of the pauses around it.
        assert clip_start - 0.21 <= segment["start"] <= clip_start + 0.01
        assert clip_end - 0.01 <= segment["end"] <= clip_end + 0.21
    alone = [model.generate(long_wave[int(round(s["start"] * 16000)) : int(round(s["end"] * 16000))], task=TASK)[0]
             for s in segments]
    assert [s["text"] for s in segments] == [a["text"] for a in alone]
    assert result["text"] == " ".join(a["text"] for a in alone if a["text"])
    votes = {}
    for a, s in zip(alone, segments):
        votes[a["gender"]] = votes.get(a["gender"], 0) + (s["end"] - s["start"]) * a["confidence"]["gender"]
    assert result["gender"] == max(votes, key=votes.get) and 0 < result["confidence"]["gender"] <= 1
    assert result["duration"] == pytest.approx(len(long_wave) / 16000, abs=1e-3)
    # Long silence alone decodes to nothing rather than to a hallucination.
    quiet = splitter.generate(np.zeros(int(limit * 3 * 16000), np.float32), task=TASK)[0]
    assert quiet["text"] == "" and quiet["segments"] == [] and quiet["gender"] is None


def test_bad_inputs_get_clear_errors(model, tmp_path):
    with pytest.raises(AudioError, match="cannot decode audio"):
        model.generate(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="empty audio"):
        model.generate(b"")
    with pytest.raises(AudioError, match="empty audio"):
        model.generate(np.zeros(0, np.float32))
    with pytest.raises(AudioError, match="NaN"):
        model.generate(np.full(16000, np.nan, np.float32))
    with pytest.raises(AudioError, match="too short"):
        model.generate(np.zeros(100, np.float32))
    with pytest.raises(AudioError, match="not found"):
        model.generate(str(tmp_path / "missing.wav"))
    with pytest.raises(UnknownTaskError, match="unknown task tag '<DANCE>'"):
        model.generate(np.zeros(16000, np.float32), task="<DANCE>")
    with pytest.raises(ValueError, match="unknown decoding option"):
        model.generate(np.zeros(16000, np.float32), beams=3)
    silence = model.generate(np.zeros(32000, np.float32), task=TASK)[0]  # silence is valid audio
    assert isinstance(silence["raw"], str) and silence["gender"] in ("female", "male")


def test_infer_command_formats(trained_model, tmp_path, capsys):
    model_dir, rows = trained_model
    files = [rows[0]["audio"], rows[1]["audio"]]
    assert main(["infer", "--model", str(model_dir), *files, "--task", "asr+gender", "--format", "json"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(p["text"], p["gender"]) for p in printed] == [(r["text"], r["gender"]) for r in rows[:2]]
    assert main(["infer", "--model", str(model_dir), files[0], "--task", TASK]) == 0
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(re.escape(rows[0]["text"]) + r" \[gender=" + rows[0]["gender"] + r" \([01]\.\d\d\)\]", line)
    assert main(["infer", "--model", str(model_dir), files[0], "--format", "srt"]) == 0
    srt = capsys.readouterr().out.splitlines()
    assert srt[0] == "1" and srt[1].startswith("00:00:00,000 --> 00:00:0") and srt[2] == rows[0]["text"]
    assert main(["infer", "--model", str(model_dir), *files, "--format", "tsv", "--task", TASK]) == 0
    tsv = capsys.readouterr().out.splitlines()
    assert tsv[0].split("\t")[:4] == ["key", "task", "text", "gender"] and tsv[1].split("\t")[2] == rows[0]["text"]
    (tmp_path / "bad.wav").write_bytes(b"RIFF nonsense")
    assert main(["infer", "--model", str(model_dir), str(tmp_path / "bad.wav")]) == 2
    assert "bad.wav" in capsys.readouterr().err
    assert main(["infer", "--model", str(tmp_path), files[0]]) == 2
    assert "not an osum model directory" in capsys.readouterr().err
    import shutil

    for part in ("model.safetensors", "tokenizer"):
        broken = tmp_path / f"without_{part}"
        shutil.copytree(model_dir, broken)
        (shutil.rmtree if part == "tokenizer" else os.remove)(broken / part)
        assert main(["infer", "--model", str(broken), files[0]]) == 2
        assert f"{part} is missing, so the model directory is incomplete" in capsys.readouterr().err


def test_decode_scores_every_task_and_resumes(trained_model, tmp_path, capsys):
    model_dir, rows = trained_model
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    manifest = tmp_path / "eval.jsonl"
    extra = {"id": "broken", "audio": str(broken), "text": "HELLO", "gender": "male", "tasks": ["<TRANSCRIBE>"]}
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows + [extra]))
    out = tmp_path / "decode"
    assert main(["decode", "--model", str(model_dir), "--data", str(manifest), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "## eval: 16 decoded, 0 already done, 1 skipped" in printed
    summary = json.loads((out / "eval" / "summary.json").read_text())
    both = summary["tasks"][TASK]
    assert both["wer"]["rate"] == 0.0 and both["labels"]["gender"]["accuracy"] == 1.0 and both["outputs"] == 8
    asr = summary["tasks"]["<TRANSCRIBE>"]
    # The broken clip could not be decoded: it is counted as skipped and scores as an empty output.
    assert asr["missing_outputs"] == 1 and asr["wer"]["deletions"] == 1 and asr["wer"]["errors"] == 1
    assert summary["skipped"] == {"unreadable_audio": 1} and summary["real_time_factor"] > 0
    assert json.loads((out / "eval" / "problems.json").read_text())
    text = (out / "eval" / "text.transcribe_gender").read_text().splitlines()
    assert len(text) == 8 and text[0].split("\t")[1].startswith(rows[0]["text"])
    assert (out / "eval" / "confusion_transcribe_gender_gender.png").stat().st_size > 5000
    assert len((out / "eval" / "result.jsonl").read_text().splitlines()) == 16
    # A rerun for one task decodes nothing again (the broken clip is retried and skipped again).
    assert main(["decode", "--model", str(model_dir), "--data", str(manifest), "--out", str(out),
                 "--task", TASK]) == 0
    assert "## eval: 0 decoded, 8 already done, 1 skipped" in capsys.readouterr().out
    again = json.loads((out / "eval" / "summary.json").read_text())
    # The broken clip is now asked for this task too: one missing output, one deleted word ("HELLO").
    assert again["tasks"][TASK]["missing_outputs"] == 1 and again["tasks"][TASK]["wer"]["errors"] == 1
