import json
import subprocess
import sys

from osum.data.check import check_manifest

from conftest import write_tone


def test_check_finds_every_kind_of_problem(tmp_path):
    good = write_tone(tmp_path / "good.wav", 1.0)
    long = tmp_path / "long.wav"
    import numpy as np, soundfile as sf

    sf.write(long, np.zeros(8000 * 40, dtype=np.float32), 8000)  # 40 s, "absurd" under --max-duration 30
    zero = tmp_path / "zero.wav"
    sf.write(zero, np.zeros(0, dtype=np.float32), 16000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    rows = [
        {"key": "ok", "wav": str(good), "txt": "FINE", "task": "<TRANSCRIBE>"},
        {"key": "ok", "wav": str(good), "txt": "DUPLICATE"},
        {"key": "missing", "wav": str(tmp_path / "nope.wav"), "txt": "X"},
        {"key": "broken", "wav": str(tmp_path / "broken.wav"), "txt": "X"},
        {"key": "zero", "wav": str(zero), "txt": "X"},
        {"key": "long", "wav": str(long), "txt": "X"},
        {"key": "notext", "wav": str(good), "txt": "  "},
        {"key": "emotion-only", "wav": str(good), "task": "<EMOTION>", "emotion": "sad"},
        {"key": "badtask", "wav": str(good), "txt": "X", "task": "<DANCE>"},
        {"key": "liar", "wav": str(good), "txt": "X", "duration": 9.0},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{oops\n")
    result = check_manifest(manifest, max_duration=30)
    assert result.problems.summary() == {
        "malformed_line": 1, "duplicate_key": 1, "missing_audio": 1, "unreadable_audio": 1, "zero_duration": 1,
        "absurd_duration": 1, "empty_text": 1, "unknown_task": 1, "duration_mismatch": 1,
    }
    assert result.samples == 11 and result.good == 2  # "ok" and "emotion-only"

    report = tmp_path / "report.jsonl"
    cmd = [sys.executable, "-m", "osum.cli", "data", "check", str(manifest), "--max-duration", "30", "--report", str(report)]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    strict = subprocess.run(cmd + ["--strict"], capture_output=True, text=True)
    assert strict.returncode == 1
    assert json.loads(strict.stdout)["bad"] == 9
    reasons = [json.loads(l)["reason"] for l in report.read_text().splitlines()]
    assert len(reasons) == 9 and "unknown_task" in reasons


def test_check_real_clips_are_clean(ci_small):
    result = check_manifest(ci_small)
    assert result.samples == 113 and result.good == 113
    assert 0.09 < result.hours < 0.12
