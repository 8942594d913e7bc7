import json
import shutil
import subprocess
import sys

import pytest
import soundfile as sf

from osum.data.check import check_manifest

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")


def test_synth_pack_and_stream_end_to_end(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "osum.cli", *a], capture_output=True, text=True, check=True)
    out = json.loads(run("data", "synth", "--out", str(tmp_path / "d"), "--count", "12", "--seed", "5").stdout)
    manifest = tmp_path / "d" / "manifest.jsonl"
    assert out["clips"] == 12
    records = [json.loads(l) for l in manifest.read_text().splitlines()]
    assert {r["gender"] for r in records} == {"male", "female"}
    for r in records:
        info = sf.info(tmp_path / "d" / r["wav"])
        assert 0.8 < info.duration < 8 and info.samplerate == 22050
    assert check_manifest(manifest).good == 12
    run("data", "pack", str(manifest), "--out", str(tmp_path / "s"), "--per-shard", "5")
    lines = run("data", "batches", str(tmp_path / "s"), "max_frames_in_batch=3000").stdout.splitlines()
    summary = json.loads(lines[-1])
    assert summary["samples"] == 12 and summary["skipped"] == 0
