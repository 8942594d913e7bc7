"""Shared fixtures: generated audio for unit tests, the real clips in ../shared/data for integration tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A sine tone plus a little noise, float32, [frames] or [frames, channels]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.shape[0])
    wave = wave.astype(np.float32)
    if channels > 1:
        wave = np.stack([wave * (0.5 + 0.5 * c / channels) for c in range(channels)], axis=1)
    return wave


def write_tone(path: Path, seconds: float, rate: int = 16000, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, rate, **kwargs), rate)
    return path


@pytest.fixture
def tone_manifest(tmp_path: Path) -> Path:
    """An OSUM jsonl of 24 tone clips, 0.5-3.4 s, 8-48 kHz, with labels."""
    rates = [8000, 16000, 22050, 44100, 48000]
    lines = []
    for i in range(24):
        seconds = 0.5 + (i * 0.37) % 2.9
        rate = rates[i % len(rates)]
        ext = "flac" if i % 3 == 0 else "wav"
        path = write_tone(tmp_path / "audio" / f"utt{i:03d}.{ext}", seconds, rate, freq=200 + 20 * i, seed=i)
        lines.append(
            {
                "key": f"utt{i:03d}",
                "wav": str(path),
                "txt": f"WORD{i} NUMBER {i}",
                "task": "<TRANSCRIBE><GENDER>" if i % 2 else "<TRANSCRIBE>",
                "lang": "en",
                "speaker": f"spk{i % 4}",
                "gender": "male" if i % 4 < 2 else "female",
                "age": "adult",
                "emotion": "neutral" if i % 5 else "happy",
            }
        )
    manifest = tmp_path / "tones.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


@pytest.fixture
def ci_small() -> Path:
    """../shared/data/ci_small/manifest.jsonl, or skip when the shared data is not beside the project."""
    manifest = SHARED_DATA / "ci_small" / "manifest.jsonl"
    if not manifest.is_file():
        pytest.skip(f"real-speech clips not found at {manifest} (clone the project beside ../shared to run this)")
    return manifest


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A tiny speech LLM overfit on 8 real AN4 clips for <TRANSCRIBE> and <TRANSCRIBE> <GENDER> (about a
    minute on 2 cores), shared by the inference tests: (model directory, the clips' manifest rows)."""
    from trained import train_tiny_model

    return train_tiny_model(tmp_path_factory.mktemp("trained"))
