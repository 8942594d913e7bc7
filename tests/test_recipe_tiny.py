"""The tiny recipe (the README's main job) end to end in a minimal size: synthesize, check, pack, tokenizer,
train, decode the held-out sets, print the table, leave a model that osum.load opens."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def test_tiny_recipe_runs_end_to_end(tmp_path):
    env = {**os.environ, "OSUM_TINY_DIR": str(tmp_path / "tiny"), "OSUM_TINY_CLIPS": "60",
           "OSUM_TINY_STEPS": "4", "OSUM_SKIP_SETUP": "1", "OMP_NUM_THREADS": "2"}
    done = subprocess.run(["bash", str(ROOT / "recipes" / "tiny" / "run.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "tiny"
    rows = json.loads((out / "results.json").read_text())
    assert {r["set"].split(" ")[0] for r in rows} == {"test_sentences", "test_voice"}
    assert all(0 <= r["error_rate"] and 0 <= r["gender_accuracy"] <= 1 and r["rtf"] > 0 for r in rows)
    assert "| held-out set | language |" in done.stdout and "whole run:" in done.stdout
    assert "osum web --model" in done.stdout and "osum serve --model" in done.stdout
    import osum

    model = osum.load(out / "run" / "model")
    assert "slow" in model.labels["style"]  # the recipe's prompt file extends the style labels
    clip = next((out / "data" / "wav").iterdir())
    result = model.generate(str(clip), task="<TRANSCRIBE> <STYLE> <AGE> <GENDER>", max_new_tokens=8)[0]
    assert result["style"] in ("slow", "normal", "fast") and result["gender"] in ("female", "male")
