"""The real_small recipe: its held-out split keeps speakers apart, and the whole recipe runs end to end in a
minimal size (a few training steps, four clips per test set) on the real data in ../shared/data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

pytestmark = pytest.mark.skipif(not (DATA / "an4" / "manifest.jsonl").is_file(),
                                reason="../shared/data (AN4, speechocean762, RAVDESS) is not beside the project")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_prepare_holds_out_whole_speakers(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "recipes" / "real_small" / "prepare.py"), str(DATA),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    names = [f"{part}_{source}" for part in ("train", "test") for source in ("an4", "speechocean", "ravdess")]
    sets = {name: read(tmp_path / f"{name}.jsonl") for name in names}
    train_speakers = {r["speaker"] for name in names[:3] for r in sets[name]}
    for name in ("test_an4", "test_speechocean", "test_ravdess"):
        assert sets[name] and not {r["speaker"] for r in sets[name]} & train_speakers, name
    assert sum(len(rows) for rows in sets.values()) == 1065 + 1500 + 712  # nothing lost
    ocean = sets["test_speechocean"]
    # Balanced: children and adults, women and men among the held-out speakers.
    assert {(r["gender"], int(r["age"]) <= 12) for r in ocean} == {(g, c) for g in ("male", "female") for c in (True, False)}
    assert {r["gender"] for r in sets["test_ravdess"]} == {"male", "female"}
    assert all(Path(r["audio"]).is_file() for rows in sets.values() for r in rows[:5])
    assert len(sets["train_an4"]) == 948 and len(sets["test_an4"]) == 117  # AN4's own split
    assert sets["test_an4"][0]["tasks"] == ["<TRANSCRIBE> <GENDER>"]
    assert sets["test_ravdess"][0]["tasks"] == ["<EMOTION> <GENDER>"]


def test_real_small_recipe_runs_end_to_end(tmp_path):
    env = {**os.environ, "OSUM_REAL_SMALL_DIR": str(tmp_path / "rs"), "OSUM_REAL_SMALL_STEPS": "3",
           "OSUM_REAL_SMALL_TEST_CLIPS": "4", "OSUM_SKIP_SETUP": "1", "OSUM_DATA": str(DATA), "OMP_NUM_THREADS": "2"}
    done = subprocess.run(["bash", str(ROOT / "recipes" / "real_small" / "run.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((tmp_path / "rs" / "results.json").read_text())
    assert [r["set"].split(",")[0].split(" (")[0] for r in rows] == ["AN4 test", "speechocean762", "RAVDESS"]
    an4, ocean, ravdess = rows
    assert an4["wer"] is not None and an4["whisper_wer"] is not None and an4["clips"] == 4 and ocean["clips"] == 4
    assert an4["whisper_wer"] < 1.0  # the real Whisper tiny.en transcribes real speech
    assert ocean["age_accuracy"] is not None and ravdess["emotion_accuracy"] is not None and ravdess["wer"] is None
    assert "| test set | clips | WER | Whisper tiny.en WER |" in done.stdout and "whole run:" in done.stdout
    speakers = (tmp_path / "rs" / "speakers.md").read_text().splitlines()  # one row per held-out speaker
    per_speaker = [re.fullmatch(r"\| \d+ \| (male|female) \| \d+ \| \d+ Hz \| (\d+)/(\d+) \|", line) for line in speakers[2:]]
    per_group = [re.match(r"\| (children \(<= 12\)|adults): \d+ speakers? \|.*\| (\d+)/(\d+) = ", line) for line in speakers[2:]]
    assert all(a or b for a, b in zip(per_speaker, per_group)), speakers
    assert sum(int(m[3]) for m in per_speaker if m) == 4 == sum(int(m[3]) for m in per_group if m)


def test_median_pitch_tells_a_low_voice_from_a_high_one():
    sys.path.insert(0, str(ROOT / "recipes" / "real_small"))
    from speakers import median_pitch

    time = np.arange(16000) / 16000.0
    for f0 in (117.0, 220.0, 300.0):  # a voice-like harmonic series: the fundamental and four overtones
        wave = sum(np.sin(2 * np.pi * f0 * k * time) / k for k in range(1, 6)).astype(np.float32)
        assert median_pitch(wave) == pytest.approx(f0, rel=0.03)
    assert np.isnan(median_pitch(np.zeros(16000, dtype=np.float32)))  # silence: no pitch, not a number
