"""What users hand to a model -> mono float32 signals at 16 kHz, with a key and clear errors.

Accepted: a path (any format libsndfile reads: WAV, FLAC, OGG, MP3, ...), the bytes of such a file, a numpy
array (16 kHz unless a rate is given; int16 PCM is scaled; [samples, channels] or [channels, samples] is
mixed down), or a (sample_rate, array) / (array, sample_rate) pair as Gradio and soundfile give.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import SAMPLE_RATE, AudioError, check_wave, load_audio, resample

MIN_SAMPLES = 401  # the shortest signal Whisper's STFT accepts (25 ms)


@dataclass
class AudioInput:
    key: str
    wave: np.ndarray  # mono float32, 16 kHz

    @property
    def duration(self) -> float:
        return len(self.wave) / SAMPLE_RATE


def _from_array(array: Any, rate: int, name: str) -> np.ndarray:
    wave = np.asarray(array)
    if wave.size == 0:
        raise AudioError(f"{name}: empty audio (no samples)", "empty_audio")
    if wave.ndim == 2:  # channels on the short axis
        wave = wave.mean(axis=1) if wave.shape[0] >= wave.shape[1] else wave.mean(axis=0)
    elif wave.ndim != 1:
        raise AudioError(f"{name}: audio arrays must be 1-D (samples) or 2-D (samples x channels), got shape {wave.shape}")
    if np.issubdtype(wave.dtype, np.integer):
        wave = wave.astype(np.float32) / float(np.iinfo(wave.dtype).max + 1)
    wave = check_wave(wave.astype(np.float32, copy=False), name)
    if not 1000 <= rate <= 384000:
        raise AudioError(f"{name}: sample rate {rate} Hz is not plausible (give the real rate)")
    return resample(np.ascontiguousarray(wave), int(rate), SAMPLE_RATE)


def read_input(item: Any, index: int = 0, sample_rate: int | None = None) -> AudioInput:
    """One input -> AudioInput; the key is the file's stem, else `input{index}`."""
    name = f"input{index}"
    if isinstance(item, AudioInput):
        return item
    if isinstance(item, (str, Path)):
        path = Path(item)
        wave = load_audio(str(path))
        name = path.stem
    elif isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
        if not data:
            raise AudioError(f"{name}: empty audio (0 bytes)", "empty_audio")
        wave = load_audio(data)
    elif isinstance(item, tuple) and len(item) == 2:
        first, second = item
        rate, array = (first, second) if np.isscalar(first) else (second, first)
        wave = _from_array(array, int(rate), name)
    elif isinstance(item, np.ndarray) or hasattr(item, "numpy"):
        array = item.numpy() if hasattr(item, "numpy") else item
        wave = _from_array(array, sample_rate or SAMPLE_RATE, name)
    else:
        raise AudioError(f"{name}: cannot read audio from a {type(item).__name__}; give a path, the bytes of an "
                         "audio file, a numpy array (16 kHz) or a (sample_rate, array) pair")
    if len(wave) < MIN_SAMPLES:
        raise AudioError(f"{name}: audio of {len(wave) / SAMPLE_RATE * 1000:.0f} ms is too short "
                         f"(at least {MIN_SAMPLES / SAMPLE_RATE * 1000:.0f} ms)", "too_short")
    return AudioInput(name, wave)


def read_inputs(inputs: Any, sample_rate: int | None = None) -> list[AudioInput]:
    """A single input or a list of them -> AudioInputs; keys are made unique (a, a-2, ...)."""
    single = isinstance(inputs, (str, Path, bytes, bytearray, memoryview, np.ndarray, tuple, AudioInput)) or hasattr(inputs, "numpy")
    items = [inputs] if single else list(inputs)
    if not items:
        raise AudioError("no audio given")
    out, seen = [], {}
    for i, item in enumerate(items):
        audio = read_input(item, i, sample_rate)
        count = seen.get(audio.key, 0) + 1
        seen[audio.key] = count
        if count > 1:
            audio = AudioInput(f"{audio.key}-{count}", audio.wave)
        out.append(audio)
    return out
