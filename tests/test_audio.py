import io

import numpy as np
import pytest
import soundfile as sf
import torch

from osum.audio import (
    AudioError,
    audio_duration,
    load_audio,
    log_mel_spectrogram,
    mel_filters,
)

from conftest import tone, write_tone


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", None)])
def test_load_any_libsndfile_format_from_path_and_bytes(tmp_path, fmt, subtype):
    wave = tone(1.0, 16000)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, wave, 16000, format=fmt, subtype=subtype)
    from_path = load_audio(path)
    from_bytes = load_audio(path.read_bytes())
    assert from_path.dtype == np.float32
    assert abs(from_path.shape[0] - 16000) < 1200  # lossy codecs add a little priming
    np.testing.assert_array_equal(from_path, from_bytes)
    # The decoded signal is the tone: strongly correlated with it over the common part.
    n = min(16000, from_path.shape[0])
    if fmt in ("WAV", "FLAC"):
        assert np.abs(from_path[:n] - wave[:n]).max() < 1e-3


def test_stereo_is_downmixed_and_resampled(tmp_path):
    path = write_tone(tmp_path / "stereo.wav", 2.0, 44100, channels=2, freq=1000.0)
    wave = load_audio(path)
    assert wave.ndim == 1
    assert abs(wave.shape[0] - 32000) <= 1
    spectrum = np.abs(np.fft.rfft(wave))
    peak_hz = np.argmax(spectrum) * 16000 / wave.shape[0]
    assert abs(peak_hz - 1000.0) < 2.0  # the tone keeps its pitch through soxr


def test_segment_cut(tmp_path):
    rate = 8000
    ramp = np.linspace(-0.5, 0.5, rate * 4, dtype=np.float32)
    path = tmp_path / "ramp.wav"
    sf.write(path, ramp, rate, subtype="FLOAT")
    cut = load_audio(path, sample_rate=rate, start=1.0, end=2.5)
    assert cut.shape[0] == int(1.5 * rate)
    np.testing.assert_allclose(cut[0], ramp[rate], atol=1e-6)
    np.testing.assert_allclose(cut[-1], ramp[int(2.5 * rate) - 1], atol=1e-6)


def test_header_duration_without_decoding(tmp_path):
    path = write_tone(tmp_path / "a.flac", 2.5, 22050)
    assert audio_duration(path) == pytest.approx(2.5, abs=1e-4)


def test_bad_audio_errors_name_the_source(tmp_path):
    with pytest.raises(AudioError, match="not found.*nowhere.wav"):
        load_audio(tmp_path / "nowhere.wav")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        load_audio(empty)
    text = tmp_path / "text.wav"
    text.write_text("this is not audio at all" * 10)
    with pytest.raises(AudioError, match="text.wav"):
        load_audio(text)
    with pytest.raises(AudioError, match="commands is disabled"):
        load_audio("cat x.wav |", allow_pipes=False)


def test_pipe_source(tmp_path):
    path = write_tone(tmp_path / "a.wav", 1.0, 16000)
    wave = load_audio(f"cat {path} |")
    np.testing.assert_array_equal(wave, load_audio(path))


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_whisper_feature_extractor(n_mels):
    transformers = pytest.importorskip("transformers")
    extractor = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    waves = [tone(s, 16000, freq=300 + 100 * i, seed=i) for i, s in enumerate([3.217, 1.0, 0.49, 7.5])]
    features, lengths = log_mel_spectrogram(waves, n_mels)
    assert features.shape == (4, 750, n_mels)
    for i, wave in enumerate(waves):
        n = wave.shape[0] // 160
        assert int(lengths[i]) == n
        # Same frames with padding="longest" (no 30 s): identical math.
        ref = extractor(wave, sampling_rate=16000, padding="longest", return_tensors="np").input_features[0].T
        assert ref.shape[0] == n
        assert np.abs(ref - features[i, :n].numpy()).max() < 1e-4
        # Whisper's usual 30 s padding: the same on every frame not touched by the padding.
        ref30 = extractor(wave, sampling_rate=16000, return_tensors="np").input_features[0].T
        assert np.abs(ref30[: n - 2] - features[i, : n - 2].numpy()).max() < 1e-4
        assert torch.all(features[i, n:] == 0)


def test_batch_equals_one_at_a_time():
    waves = [tone(s, seed=i) for i, s in enumerate([2.0, 0.7, 1.3])]
    batch, _ = log_mel_spectrogram(waves)
    for i, wave in enumerate(waves):
        alone, length = log_mel_spectrogram([wave])
        torch.testing.assert_close(batch[i, : int(length[0])], alone[0], rtol=0, atol=1e-5)


def test_mel_filters_are_slaney_normalized():
    filters = mel_filters(80)
    assert filters.shape == (80, 201)
    assert torch.all(filters >= 0)
    # Every filter has some weight, and higher filters are wider (area-normalized => lower peaks).
    assert torch.all(filters.sum(dim=1) > 0)
    assert filters[5].max() > filters[75].max()


@pytest.mark.parametrize(
    "fmt,subtype,rate",
    [("WAV", "PCM_16", 16000), ("WAV", "PCM_24", 44100), ("WAV", "FLOAT", 8000), ("WAVEX", "PCM_16", 48000),
     ("FLAC", "PCM_16", 22050), ("FLAC", "PCM_24", 96000), ("WAV", "IMA_ADPCM", 16000), ("OGG", "VORBIS", 16000)],
)
def test_header_reader_agrees_with_libsndfile(tmp_path, fmt, subtype, rate):
    from osum.audio import audio_info

    path = tmp_path / ("a.flac" if fmt == "FLAC" else "a.ogg" if fmt == "OGG" else "a.wav")
    sf.write(path, tone(1.37, rate, channels=2), rate, format=fmt, subtype=subtype)
    info = sf.info(path)
    assert audio_info(path) == (info.frames, info.samplerate)
    assert audio_info(path.read_bytes()) == (info.frames, info.samplerate)
