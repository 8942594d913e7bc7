"""Audio in, log-mel features out: load, downmix, resample, cut, and Whisper's log-mel in torch.

Constants and formulas follow Whisper (and OSUM, which uses Whisper's front end): 16 kHz, a 25 ms Hann
window (n_fft 400), a 10 ms hop (160), Slaney mel filters, log10 clamped at 1e-10, a dynamic range of 8
(log10 units) below each utterance's maximum, then (x + 4) / 4. Unlike Whisper, nothing is padded to 30 s:
each utterance keeps its own frames, which is what makes batches of short clips cheap.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import soundfile as sf

from .errors import OsumError

if TYPE_CHECKING:  # torch is imported where features are computed, so that data commands stay light
    import torch

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 feature frames per second

AudioSource = Union[str, Path, bytes]

# The most bytes osum reads for one utterance from a `command |` (an hour of 48 kHz stereo 16-bit is 0.7 GB):
# a runaway command is stopped here instead of filling the memory.
MAX_AUDIO_BYTES = 1 << 30
# libsndfile reports this many frames (SF_COUNT_MAX) for a stream that does not state its length.
_UNKNOWN_FRAMES = 1 << 62
# Decoded audio may end this many seconds before its header says (resamplers, MP3 padding) and still be whole.
LENGTH_TOLERANCE = 0.01


class AudioError(ValueError, OsumError):
    """Audio that cannot be used; the message names the source and the cause, `reason` says which kind.

    `reason` is one of osum.data.problems.REASONS (missing_audio, unreadable_audio, empty_audio,
    non_finite_audio, truncated_audio, audio_too_large), so callers count it without parsing the message.
    """

    def __init__(self, message: str, reason: str = "unreadable_audio"):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # keep the reason when the error crosses from a worker process
        return type(self), (str(self), self.reason)


def describe_source(source: AudioSource) -> str:
    """A short human name for an audio source, for error messages."""
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    return str(source)


def _cause(err: Exception, name: str) -> str:
    """libsndfile's message with the object it was given (`<_io.BytesIO object at 0x...>`) replaced by its name."""
    return re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", name, str(err))


def is_pipe(source: AudioSource) -> bool:
    """True for a Kaldi wav.scp command such as `sox a.sph -t wav - |`."""
    return isinstance(source, str) and source.rstrip().endswith("|")


def run_pipe(command: str, allow_pipes: bool = True, timeout: float = 600.0, max_bytes: int | None = None) -> bytes:
    """Run a Kaldi-style `command |` and return what it wrote to stdout (at most `max_bytes`, default
    MAX_AUDIO_BYTES)."""
    max_bytes = MAX_AUDIO_BYTES if max_bytes is None else max_bytes
    if not allow_pipes:
        raise AudioError(
            f"wav.scp entry is a command ({command!r}) and running commands is disabled; "
            "enable pipes (drop --no-pipes / set allow_pipes: true) or convert the audio to files first"
        )
    cmd = command.rstrip()[:-1].strip()
    errors = tempfile.TemporaryFile()  # a file, not a pipe: a chatty command cannot block on a full stderr
    # Its own process group, so that stopping it stops the whole pipeline, not only the shell.
    proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=errors, start_new_session=True)

    def kill() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # A watchdog bounds the wait; the read loop bounds the memory (the output is read in blocks, never whole).
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        kill()

    timer = threading.Timer(timeout, stop)
    timer.start()
    output = bytearray()
    try:
        assert proc.stdout is not None
        while block := proc.stdout.read(1 << 20):
            output += block
            if len(output) > max_bytes:
                kill()
                raise AudioError(f"command {cmd!r} wrote more than {max_bytes / 2**20:.0f} MiB of audio: stopped "
                                 "(cut the recording into segments or convert it to files)", "audio_too_large")
        code = proc.wait()
    finally:
        timer.cancel()
        kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        errors.seek(max(0, errors.seek(0, 2) - 300))
        stderr = errors.read()
        errors.close()
    if timed_out.is_set():
        raise AudioError(f"command {cmd!r} did not finish within {timeout:.0f} s")
    if code != 0 or not output:
        message = stderr.decode(errors="replace").strip()[-300:]
        raise AudioError(f"command {cmd!r} failed (exit {code}): {message or 'no output'}")
    return bytes(output)


def _open(source: AudioSource, allow_pipes: bool):
    """Something soundfile can open: a path or a file-like object."""
    if isinstance(source, bytes):
        if not source:
            raise AudioError("empty audio bytes", "empty_audio")
        return io.BytesIO(source)
    if is_pipe(source):
        return io.BytesIO(run_pipe(str(source), allow_pipes))
    path = Path(source)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}", "missing_audio")
    if path.stat().st_size == 0:
        raise AudioError(f"audio file is empty: {path}", "empty_audio")
    return str(path)


def _riff_wave_info(head: bytes, total: int) -> tuple[int, int] | None:
    """(frames, rate) of a plain RIFF/WAVE header, or None when it needs libsndfile to be sure.

    `total` is the size of the whole file: data the header promises beyond it is a truncated file.
    """
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, rate, block = 12, 0, 0
    while pos + 8 <= len(head):
        chunk, size = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
        if chunk == b"fmt " and pos + 24 <= len(head):
            if int.from_bytes(head[pos + 8 : pos + 10], "little") not in (1, 3, 0xFFFE):
                return None  # compressed (ADPCM, GSM...): frames are not bytes / block size
            rate = int.from_bytes(head[pos + 12 : pos + 16], "little")
            block = int.from_bytes(head[pos + 20 : pos + 22], "little")
        elif chunk == b"data":
            # 0 and 0xFFFFFFFF mark streamed wavs whose real length only libsndfile's scan finds.
            if not rate or not block or size in (0, 0xFFFFFFFF):
                return None
            present = max(0, total - pos - 8)
            if present + block <= size:
                raise AudioError(f"truncated audio: the header promises {size // block / rate:.2f} s, the file holds "
                                 f"{present // block / rate:.2f} s", "truncated_audio")
            return size // block, rate
        pos += 8 + size + (size & 1)
    return None


def _flac_info(head: bytes) -> tuple[int, int] | None:
    """(frames, rate) from a FLAC STREAMINFO block, or None when the stream does not state its length."""
    if len(head) < 42 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:
        return None
    info = int.from_bytes(head[18:26], "big")  # 20 bits rate, 3 channels, 5 bits/sample, 36 total samples
    rate, frames = info >> 44, info & ((1 << 36) - 1)
    return (frames, rate) if rate and frames else None


def _fast_info(source: AudioSource) -> tuple[int, int] | None:
    """Parse the length of a WAV or FLAC from its first 4 KiB: ~4x cheaper than opening it with libsndfile."""
    if isinstance(source, bytes):
        head, total = source[:4096], len(source)
    elif is_pipe(source) or not str(source).lower().endswith((".wav", ".flac")):
        return None
    else:
        try:
            with open(source, "rb") as f:
                head = f.read(4096)
                total = f.seek(0, 2)
        except OSError:
            return None
    try:
        return _flac_info(head) if head[:4] == b"fLaC" else _riff_wave_info(head, total)
    except AudioError as err:
        raise AudioError(f"{describe_source(source)}: {err}", err.reason) from None


def audio_info(source: AudioSource, allow_pipes: bool = True) -> tuple[int, int]:
    """(frames, sample_rate) from the file header; a stream that states no length is counted by decoding."""
    fast = _fast_info(source)
    if fast is not None:
        return fast
    try:
        with sf.SoundFile(_open(source, allow_pipes)) as f:
            frames, rate = f.frames, f.samplerate
            if frames >= _UNKNOWN_FRAMES:  # e.g. a FLAC written by a streaming encoder
                frames = _read_frames(f, -1).shape[0]
    except AudioError:
        raise
    except Exception as err:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise AudioError(f"cannot read audio header of {describe_source(source)}: "
                         f"{_cause(err, describe_source(source))}") from err
    if rate <= 0:
        raise AudioError(f"audio header of {describe_source(source)} has sample rate {rate}")
    return int(frames), int(rate)


def audio_duration(source: AudioSource, allow_pipes: bool = True) -> float:
    """Duration in seconds from the file header."""
    frames, rate = audio_info(source, allow_pipes)
    return frames / rate


def resample(wave: np.ndarray, orig_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono float32 signal with soxr (high quality)."""
    if orig_rate == target_rate:
        return wave
    import soxr

    return soxr.resample(wave, orig_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def _read_frames(f: sf.SoundFile, count: int) -> np.ndarray:
    """Read `count` frames (-1: to the end) as float32 [frames, channels], also from streams of unknown length."""
    if f.frames < _UNKNOWN_FRAMES:
        return f.read(frames=count, dtype="float32", always_2d=True)
    # soundfile's read() seeks after reading, which libsndfile refuses on a stream of unknown length; its
    # C reader (soundfile's own binding) does not seek. Blocks keep the memory to the audio itself.
    blocks, remaining = [], count if count >= 0 else _UNKNOWN_FRAMES
    block = np.empty((1 << 16, f.channels), dtype=np.float32)
    while remaining > 0:
        wanted = min(remaining, block.shape[0])
        got = sf._snd.sf_readf_float(f._file, sf._ffi.cast("float *", block.ctypes.data), wanted)
        if got <= 0:
            break
        blocks.append(block[:got].copy())
        remaining -= got
    return np.concatenate(blocks) if blocks else np.zeros((0, f.channels), dtype=np.float32)


def check_wave(wave: np.ndarray, name: str) -> np.ndarray:
    """The checks every decoded signal passes, wherever it came from: some samples, all of them finite."""
    if wave.size == 0:
        raise AudioError(f"{name}: audio has no samples", "empty_audio")
    if not np.all(np.isfinite(wave)):
        raise AudioError(f"{name}: audio holds NaN or infinite samples; re-export the file", "non_finite_audio")
    return wave


def load_audio(
    source: AudioSource,
    sample_rate: int | None = SAMPLE_RATE,
    start: float | None = None,
    end: float | None = None,
    allow_pipes: bool = True,
) -> np.ndarray:
    """Decode any libsndfile format to mono float32 at `sample_rate` (None: the file's own), cut to [start, end) s.

    The one way audio enters osum: the signal is checked (samples present, all finite, as long as the header
    says), and each failure is an AudioError with its reason.
    """
    name = describe_source(source)
    if is_pipe(source):
        source = run_pipe(str(source), allow_pipes)
    header = _fast_info(source)  # raises truncated_audio for a WAV shorter than its header
    handle = _open(source, allow_pipes)
    try:
        with sf.SoundFile(handle) as f:
            rate = f.samplerate
            frames = header[0] if header else f.frames
            first = 0 if start is None else max(0, int(round(start * rate)))
            if first and f.frames < _UNKNOWN_FRAMES:
                f.seek(min(first, f.frames))
            elif first:
                _read_frames(f, first)
            last = frames if end is None else min(frames, max(first, int(round(end * rate))))
            count = -1 if end is None and frames >= _UNKNOWN_FRAMES else max(0, last - first)
            data = _read_frames(f, count)
    except AudioError:
        raise
    except Exception as err:
        raise AudioError(f"cannot decode audio {name}: {_cause(err, name)}") from err
    if data.shape[0] == 0:
        raise AudioError(f"audio {name} has no samples in the requested range", "empty_audio")
    if count > 0 and data.shape[0] < count - LENGTH_TOLERANCE * rate:
        raise AudioError(f"truncated audio {name}: {data.shape[0] / rate:.2f} s decoded where the header promises "
                         f"{count / rate:.2f} s", "truncated_audio")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    check_wave(wave, name)
    return resample(np.ascontiguousarray(wave), rate, sample_rate or rate)


def num_samples_at(frames: int, orig_rate: int, target_rate: int = SAMPLE_RATE) -> int:
    """Length in samples after resampling, as decided from a header (the loader's canonical length)."""
    return frames * target_rate // orig_rate


def fit_length(wave: np.ndarray, length: int) -> np.ndarray:
    """Crop or zero-pad to exactly `length` samples (resamplers may differ from the header by a sample)."""
    if wave.shape[0] >= length:
        return wave[:length]
    return np.pad(wave, (0, length - wave.shape[0]))


@lru_cache(maxsize=8)
def mel_filters(n_mels: int = 80, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Slaney-scale, Slaney-normalized triangular mel filters [n_mels, n_fft // 2 + 1], as librosa builds them."""
    import torch

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        # Linear below 1 kHz (200/3 Hz per mel), logarithmic above: the Slaney (Auditory Toolbox) scale.
        hz = np.asarray(hz, dtype=np.float64)
        mel = hz / (200.0 / 3)
        log_region = hz >= 1000.0
        mel[log_region] = 15.0 + np.log(hz[log_region] / 1000.0) / (np.log(6.4) / 27.0)
        return mel

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        mel = np.asarray(mel, dtype=np.float64)
        hz = mel * (200.0 / 3)
        log_region = mel >= 15.0
        hz[log_region] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel[log_region] - 15.0))
        return hz

    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_edges = np.linspace(hz_to_mel(np.array([0.0]))[0], hz_to_mel(np.array([sample_rate / 2]))[0], n_mels + 2)
    hz_edges = mel_to_hz(mel_edges)
    widths = np.diff(hz_edges)
    ramps = hz_edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_edges[2 : n_mels + 2] - hz_edges[:n_mels]))[:, None]
    return torch.from_numpy(weights.astype(np.float32))


def log_mel_spectrogram(
    waves: list[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
    n_mels: int = 80,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper log-mel features for a batch of 16 kHz signals, each on its own frames.

    Returns (features [B, T_max, n_mels], lengths [B]) with T = samples // 160 per utterance; frames past an
    utterance's length are zero. Each utterance gets the reflect padding Whisper's centred STFT would give
    it alone, and its own dynamic-range floor, so a batch gives exactly what single utterances give.
    """
    import torch

    if isinstance(waves, (np.ndarray, torch.Tensor)) and waves.ndim == 1:
        waves = [waves]
    signals = [torch.as_tensor(w, dtype=torch.float32, device=device).reshape(-1) for w in waves]
    if not signals:
        raise ValueError("log_mel_spectrogram needs at least one signal")
    half = N_FFT // 2
    frame_counts = [s.shape[0] // HOP_LENGTH for s in signals]
    if min(s.shape[0] for s in signals) <= half:
        raise AudioError(f"audio shorter than {half + 1} samples ({(half + 1) / SAMPLE_RATE * 1000:.0f} ms)")
    # Reflect-pad each signal by itself (as torch.stft(center=True) would), then zero-pad to a common
    # length; the zero tail only touches frames past each utterance's end, which are masked out.
    padded = [torch.nn.functional.pad(s[None, None], (half, half), mode="reflect")[0, 0] for s in signals]
    longest = max(p.shape[0] for p in padded)
    batch = torch.stack([torch.nn.functional.pad(p, (0, longest - p.shape[0])) for p in padded])
    window = torch.hann_window(N_FFT, device=device)
    stft = torch.stft(batch, N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True)
    power = stft.abs() ** 2  # [B, freq, frames]
    mel = mel_filters(n_mels).to(device) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10().transpose(1, 2)  # [B, frames, n_mels]
    t_max = max(frame_counts)
    log_spec = log_spec[:, :t_max]
    lengths = torch.tensor(frame_counts, device=device)
    valid = torch.arange(t_max, device=device)[None, :] < lengths[:, None]
    peak = log_spec.masked_fill(~valid[..., None], float("-inf")).amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    features = ((log_spec + 4.0) / 4.0) * valid[..., None]
    return features, lengths
