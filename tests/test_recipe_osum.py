"""The full-size OSUM recipe: its three stage configs and data config are valid, and --dry-run reports the
real architecture's parameters and memory from config.json files alone (no weights, no GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from osum.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "osum"

# Facts from the published config.json files of openai/whisper-medium and Qwen/Qwen2-7B-Instruct.
WHISPER_MEDIUM = {"model_type": "whisper", "d_model": 1024, "encoder_layers": 24, "encoder_attention_heads": 16,
                  "encoder_ffn_dim": 4096, "num_mel_bins": 80, "max_source_positions": 1500}
QWEN2_7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
            "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
            "tie_word_embeddings": False}


@pytest.fixture
def parts(tmp_path):
    for name, config in (("whisper-medium", WHISPER_MEDIUM), ("qwen2-7b", QWEN2_7B)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    (tmp_path / "shards").mkdir()
    for i in range(3):
        (tmp_path / "shards" / f"shard_{i}.tar").write_bytes(b"")
    (tmp_path / "shards" / "shards.list").write_text("".join(f"shard_{i}.tar\n" for i in range(3)))
    (tmp_path / "dev.jsonl").write_text('{"key": "a", "wav": "a.wav", "txt": "hi"}\n')
    (tmp_path / "stage1" / "model").mkdir(parents=True)
    (tmp_path / "stage1" / "model" / "config.json").write_text("{}")
    return [f"model.encoder.path={tmp_path / 'whisper-medium'}", f"model.llm.path={tmp_path / 'qwen2-7b'}",
            f"data.train=[{tmp_path / 'shards' / 'shards.list'}]", f"data.dev=[{tmp_path / 'dev.jsonl'}]"]


def dry_run(capsys, stage: int, *overrides: str) -> dict:
    code = main(["train", str(RECIPE / f"stage{stage}.yaml"), "--dry-run", "--world-size", "16", *overrides])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    return json.loads(captured.out)


def test_stage1_dry_run_counts_the_real_architecture(parts, capsys):
    report = dry_run(capsys, 1, *parts)
    p = report["parameters"]
    assert 300e6 < p["encoder"] < 310e6  # Whisper-medium's encoder
    assert 7.60e9 < p["llm"] < 7.63e9  # Qwen2-7B
    # LoRA r 8 adds r x (in + out) per wrapped linear: q, k, v, o, gate, down in each of the 28 layers.
    per_layer = (3584 + 3584) + 2 * (3584 + 512) + (3584 + 3584) + 2 * (3584 + 18944)
    assert p["lora"] == 28 * 8 * per_layer == 15_138_816
    assert report["trainable"] == p["adapter"]  # stage 1: the adapter alone
    memory = report["memory_gib_per_gpu"]
    assert 15 < memory["weights"] < 16.5  # the 7B LLM in bf16 and the rest in fp32, on every GPU (DDP)
    assert report["total_gib_per_gpu"] < 80
    assert report["data"][parts[2].split("[")[1].rstrip("]")]["shards"] == 3


def test_later_stages_train_more_and_start_from_the_previous_one(parts, capsys, tmp_path):
    stage1 = dry_run(capsys, 1, *parts)
    stage2 = dry_run(capsys, 2, *parts, f"model.init_from={tmp_path / 'stage1' / 'model'}")
    stage3 = dry_run(capsys, 3, *parts, f"model.init_from={tmp_path / 'stage1' / 'model'}")
    p = stage1["parameters"]
    assert stage2["trainable"] == p["adapter"] + p["encoder"]
    assert stage3["trainable"] == p["adapter"] + p["encoder"] + p["lora"]
    assert stage3["memory_gib_per_gpu"]["optimizer"] > stage1["memory_gib_per_gpu"]["optimizer"]
    # FSDP2 shards weights, gradients and optimizer over the 16 GPUs.
    sharded = dry_run(capsys, 3, *parts, f"model.init_from={tmp_path / 'stage1' / 'model'}", "train.engine=fsdp2",
                      "data.dev_decode=0", "checkpoint.metric=loss")
    assert sharded["memory_gib_per_gpu"]["weights"] < stage3["memory_gib_per_gpu"]["weights"] / 10


def test_dry_run_names_what_is_missing(parts, capsys):
    # The recipe's own data config points at /data/...: the dry run says which list is missing.
    assert main(["train", str(RECIPE / "stage1.yaml"), "--dry-run", *parts[:2]]) == 2
    assert "/data/shards/wenetspeech/shards.list" in capsys.readouterr().err
    assert main(["train", str(RECIPE / "stage2.yaml"), "--dry-run", *parts]) == 2  # stage 1 not trained yet
    assert "model.init_from: exp/osum/stage1/model is not an osum model directory" in capsys.readouterr().err
    assert main(["train", str(RECIPE / "stage1.yaml"), "--dry-run", *parts[1:], "model.encoder.path=/nope"]) == 2
    assert "/nope/config.json not found" in capsys.readouterr().err
