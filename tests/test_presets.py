"""Decoding presets: `osum` decodes as OSUM's own generate does (4 beams with sampling, top-k 5, top-p 0.9,
repetition penalty 1.05, 400 new tokens); options given beside a preset win; an unknown one is a clear error.
The model is the tiny one trained on 8 real AN4 clips (conftest.trained_model)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from osum.infer.presets import PRESETS, with_preset


def test_the_osum_preset_is_osum_s_own_settings_and_explicit_options_win():
    assert PRESETS["osum"] == {"num_beams": 4, "do_sample": True, "top_k": 5, "top_p": 0.9,
                               "repetition_penalty": 1.05, "max_new_tokens": 400}
    assert with_preset("osum", {"max_new_tokens": 8})["max_new_tokens"] == 8
    assert with_preset(None, {"num_beams": 2}) == {"num_beams": 2}
    with pytest.raises(ValueError, match=r"unknown decoding preset 'wenet'; choose from \['osum'\]"):
        with_preset("wenet", {})


def test_a_model_decodes_with_the_preset_everywhere_options_are_taken(trained_model):
    from fastapi.testclient import TestClient

    from osum.infer.api import SpeechModel
    from osum.serve.server import ServeSettings, create_app

    model_dir, rows = trained_model
    model = SpeechModel.load(model_dir)
    seen = []
    original = model.model.generate_from

    def spy(inputs, **options):  # what reaches the model's generate
        seen.append(options)
        return original(inputs, **options)

    model.model.generate_from = spy
    result = model.generate([rows[0]["audio"]], task="<TRANSCRIBE> <GENDER>", preset="osum")[0]
    assert seen[-1] == PRESETS["osum"] and result["gender"] in ("male", "female")
    assert result["text"]  # beam sampling on a model that knows the clip still reads it
    model.generate([rows[0]["audio"]], preset="osum", num_beams=1, max_new_tokens=2)
    assert seen[-1]["num_beams"] == 1 and seen[-1]["max_new_tokens"] == 2 and seen[-1]["do_sample"] is True
    with TestClient(create_app(model, ServeSettings(api_key=None, preset="osum"))) as client:
        audio = open(rows[0]["audio"], "rb").read()
        assert client.post("/v1/audio/understand", files={"file": ("a.wav", audio)}).status_code == 200
        assert seen[-1]["num_beams"] == 4  # the server's default preset
        r = client.post("/v1/audio/understand", files={"file": ("a.wav", audio)}, data={"preset": "fast"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "preset"
    run = subprocess.run([sys.executable, "-m", "osum.cli", "infer", "--model", str(model_dir), rows[0]["audio"],
                          "--preset", "osum", "--format", "json"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert '"text"' in run.stdout
