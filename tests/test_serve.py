"""The HTTP server: through FastAPI's test client and as a real `osum serve` (uvicorn) on 127.0.0.1,
bad inputs included; the model is the tiny one trained on 8 real AN4 clips (conftest.trained_model)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from osum.audio import load_audio  # noqa: E402
from servers import free_port, wait_until_up  # noqa: E402
from osum.infer.api import SpeechModel  # noqa: E402
from osum.serve.server import ServeSettings, create_app  # noqa: E402

TASK = "<TRANSCRIBE> <GENDER>"


def wav_bytes(wave: np.ndarray, rate: int = 16000, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(trained_model):
    model = SpeechModel.load(trained_model[0])
    settings = ServeSettings(model_name="tiny", max_upload_mb=1.0, max_audio_seconds=20.0, api_key=None)
    with TestClient(create_app(model, settings)) as c:
        yield c


def test_transcriptions_are_openai_compatible(client, trained_model):
    row = trained_model[1][0]
    data = open(row["audio"], "rb").read()
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", data, "audio/wav")}, data={"model": "tiny"})
    assert r.status_code == 200 and r.json() == {"text": row["text"]}
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", data)}, data={"response_format": "text"})
    assert r.text == row["text"] + "\n" and r.headers["content-type"].startswith("text/plain")
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", data)},
                    data={"response_format": "verbose_json", "language": "en", "prompt": "digits and letters"})
    body = r.json()
    assert body["text"] == row["text"] and body["language"] == "en" and body["segments"][0]["text"] == row["text"]
    assert body["duration"] == pytest.approx(len(load_audio(row["audio"])) / 16000, abs=1e-3)
    srt = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", data)}, data={"response_format": "srt"}).text
    assert srt.splitlines()[:3] == ["1", srt.splitlines()[1], row["text"]] and " --> " in srt.splitlines()[1]
    vtt = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", data)}, data={"response_format": "vtt"}).text
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ") and row["text"] in vtt
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
    assert client.get("/health").json()["status"] == "ok"


def test_understand_returns_the_structured_result(client, trained_model):
    row = trained_model[1][6]
    data = open(row["audio"], "rb").read()
    r = client.post("/v1/audio/understand", files={"file": ("clip.wav", data)}, data={"task": "<TRANSCRIBE><GENDER>"})
    body = r.json()
    assert r.status_code == 200 and body["text"] == row["text"] and body["gender"] == row["gender"]
    assert body["key"] == "clip" and body["task"] == TASK and 0.5 < body["confidence"]["gender"] <= 1
    # Stereo FLAC at 44.1 kHz is mixed down and resampled: a valid request (the answer may differ).
    stereo = np.stack([load_audio(row["audio"], sample_rate=44100)] * 2, axis=1)
    r = client.post("/v1/audio/understand", files={"file": ("s.flac", wav_bytes(stereo, 44100, "FLAC"))},
                    data={"task": "gender"})
    assert r.status_code == 200 and r.json()["gender"] in ("female", "male") and r.json()["text"] is None


@pytest.mark.parametrize("case, status, words", [
    ("not audio", 415, "cannot decode audio"),
    ("empty", 400, "empty"),
    ("too short", 400, "too short"),
    ("too long", 413, "at most 20 s"),
    ("two hours", 413, "7200 s of audio"),
    ("too big", 413, "larger than the server's limit"),
    ("unknown task", 422, "unknown task tag '<DANCE>'"),
    ("no file", 422, "file"),
    ("bad format", 400, "response_format 'mp4'"),
    ("bad temperature", 400, "temperature 9.0"),
])
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(client, trained_model, case, status, words):
    good = open(trained_model[1][0]["audio"], "rb").read()
    url, files, data = "/v1/audio/understand", {"file": ("x.wav", good)}, {"task": "asr"}
    if case == "not audio":
        files = {"file": ("x.wav", b"GIF89a not a sound" * 20)}
    elif case == "empty":
        files = {"file": ("x.wav", b"")}
    elif case == "too short":
        files = {"file": ("x.wav", wav_bytes(np.zeros(100, np.float32)))}
    elif case == "too long":
        files = {"file": ("x.flac", wav_bytes(np.zeros(16000 * 25, np.float32), fmt="FLAC"))}
    elif case == "two hours":  # silence compresses: a small upload that would decode to 2 hours
        files = {"file": ("x.flac", wav_bytes(np.zeros(8000 * 7200, np.int16), 8000, "FLAC"))}
    elif case == "too big":
        files = {"file": ("x.wav", wav_bytes(np.zeros(16000 * 40, np.float32)))}  # 1.3 MB > 1 MB
    elif case == "unknown task":
        data = {"task": "<DANCE>"}
    elif case == "no file":
        files = None
    elif case == "bad format":
        url, data = "/v1/audio/transcriptions", {"response_format": "mp4"}
    elif case == "bad temperature":
        data = {"task": "asr", "temperature": "9"}
    r = client.post(url, files=files, data=data)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
    # The server is still there and still right.
    ok = client.post("/v1/audio/understand", files={"file": ("x.wav", good)}, data={"task": "asr"})
    assert ok.status_code == 200 and ok.json()["text"] == trained_model[1][0]["text"]


def test_silence_is_answered(client):
    r = client.post("/v1/audio/transcriptions", files={"file": ("s.wav", wav_bytes(np.zeros(32000, np.float32)))})
    assert r.status_code == 200 and isinstance(r.json()["text"], str)


def test_bearer_token(trained_model):
    model = SpeechModel.load(trained_model[0])
    with TestClient(create_app(model, ServeSettings(api_key="s3cret"))) as c:
        data = open(trained_model[1][0]["audio"], "rb").read()
        r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", data)})
        assert r.status_code == 401 and "missing bearer token" in r.json()["error"]["message"]
        r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", data)}, headers={"Authorization": "Bearer x"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", data)}, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json()["text"] == trained_model[1][0]["text"]
        assert c.get("/health").status_code == 200  # health checks need no token


def test_real_server_on_loopback_batches_concurrent_requests(trained_model, tmp_path):
    import httpx

    model_dir, rows = trained_model
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "osum.cli", "serve", "--model", str(model_dir), "--port",
                               str(port), "--batch-wait-ms", "50", "--max-audio-seconds", "60"],
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/health", server, log_path=tmp_path / "serve.log")

        def ask(row):
            with open(row["audio"], "rb") as f:
                r = httpx.post(f"{base}/v1/audio/understand", files={"file": ("a.wav", f.read())},
                               data={"task": TASK}, timeout=60)
            return r.status_code, r.json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, rows))
        assert [(s, a["text"], a["gender"]) for s, a in answers] == [(200, r["text"], r["gender"]) for r in rows]
        health = httpx.get(f"{base}/health").json()
        assert health["requests"] == 8 and health["batches"] < 8  # concurrent requests shared batches
        bad = httpx.post(f"{base}/v1/audio/transcriptions", files={"file": ("x.wav", b"junk" * 100)}, timeout=30)
        assert bad.status_code == 415 and "cannot decode audio" in bad.json()["error"]["message"]
        assert ask(rows[0])[0] == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
