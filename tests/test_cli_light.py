"""Commands that need no model never import torch or transformers (`osum --help` answers in a blink)."""

import json
import subprocess
import sys

import pytest

from conftest import write_tone

HEAVY = ("torch", "transformers")

# Runs osum's main in a fresh interpreter, then prints its exit status and the heavy modules it imported.
PROBE = """
import json, sys
from osum.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:
    status = exit.code
print(json.dumps({"status": status, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def run_light(*args: str) -> tuple[str, dict]:
    """`osum ARGS` in a fresh interpreter: its standard output, and {"status", "heavy"} (stderr in "stderr")."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    *output, probe = done.stdout.rstrip("\n").split("\n")
    return "\n".join(output), {**json.loads(probe), "stderr": done.stderr}


@pytest.fixture
def tones(tmp_path):
    rows = [{"key": f"tone{i}", "wav": str(write_tone(tmp_path / f"tone{i}.wav", 0.5 + 0.25 * i, freq=300 + 50 * i)),
             "txt": f"TONE {i}"} for i in range(3)]
    manifest = tmp_path / "tones.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


def test_help_is_light():
    output, probe = run_light("--help")
    assert probe["status"] == 0 and probe["heavy"] == []
    assert "usage: osum" in output and "data" in output and "train" in output
    output, probe = run_light("data", "--help")
    assert probe["status"] == 0 and probe["heavy"] == []
    assert "check" in output and "pack" in output


def test_data_commands_are_light(tones, tmp_path):
    output, probe = run_light("data", "check", str(tones), "--workers", "1")
    assert probe["status"] == 0 and probe["heavy"] == []
    summary = json.loads(output)
    assert summary["samples"] == 3 and summary["good"] == 3 and summary["bad"] == 0

    output, probe = run_light("data", "convert", "--to", "kaldi", str(tones), str(tmp_path / "kaldi"), "--workers", "1")
    assert probe["status"] == 0 and probe["heavy"] == []
    assert json.loads(output)["written"] == 3
    assert len((tmp_path / "kaldi" / "wav.scp").read_text().splitlines()) == 3

    output, probe = run_light("data", "pack", str(tones), "--out", str(tmp_path / "shards"), "--per-shard", "2")
    assert probe["status"] == 0 and probe["heavy"] == []
    assert json.loads(output)["utterances_written"] == 3
    assert len((tmp_path / "shards" / "shards.list").read_text().splitlines()) == 2


def test_errors_are_reported_without_torch(tmp_path):
    output, probe = run_light("data", "check", str(tmp_path / "missing.jsonl"))
    assert probe["status"] == 2 and probe["heavy"] == []
    assert probe["stderr"].startswith("osum: error: ") and "missing.jsonl: no such file" in probe["stderr"]


def test_score_is_light(tmp_path):
    (tmp_path / "ref.txt").write_text("a the cat sat\nb on the mat\n")
    (tmp_path / "hyp.txt").write_text("a\tthe cat sat\nb\ton a mat\n")
    output, probe = run_light("score", "--ref", str(tmp_path / "ref.txt"), "--hyp", str(tmp_path / "hyp.txt"))
    assert probe["status"] == 0 and probe["heavy"] == []
    assert "| `<TRANSCRIBE>` | WER | 16.67% | 6 |" in output  # one substitution in six words
