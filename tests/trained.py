"""A tiny speech LLM that really knows 8 AN4 clips: trained here, in-process, for the inference tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import SHARED_DATA
from model_parts import tiny_llm_config, tiny_tokenizer

TASKS = ["<TRANSCRIBE>", "<TRANSCRIBE> <GENDER>"]


def eight_an4_clips() -> list[dict]:
    source = SHARED_DATA / "ci_small" / "manifest.jsonl"
    if not source.is_file():
        pytest.skip(f"real-speech clips not found at {source} (clone the project beside ../shared to run this)")
    rows = []
    for line in source.read_text().splitlines():
        row = json.loads(line)
        if row.get("source") == "an4" and row.get("gender"):
            rows.append(dict(row, audio=str(source.parent / row["audio"]), tasks=TASKS))
    return rows[:8]


def train_tiny_model(tmp: Path, steps: int = 160) -> tuple[Path, list[dict]]:
    from osum.config import load_config
    from osum.train.config import TrainConfig
    from osum.train.trainer import train

    rows = eight_an4_clips()
    manifest = tmp / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = tiny_tokenizer(tmp / "tokenizer", chat=True)
    config = {
        "out_dir": str(tmp / "run"),
        "model": {
            "encoder": {"config": {"d_model": 32, "n_heads": 2, "n_layers": 2, "ffn_dim": 64}},
            "adapter": {"model_dim": 32, "n_layers": 2, "n_heads": 2, "ffn_dim": 64, "dropout": 0.0},
            # Two heads of 64: vLLM's CPU attention kernel refuses head_dim 16 (tiny_llm_config's), and the
            # vllm engine's parity tests decode this same model.
            "llm": {"config": dict(tiny_llm_config(len(tokenizer) + 8), hidden_size=128, intermediate_size=256,
                                   num_attention_heads=2, num_key_value_heads=1),
                    "tokenizer": str(tmp / "tokenizer")},
            "trainable": {"llm": True},
        },
        "data": {"train": [str(manifest)], "prompt_choice": "first",
                 "loader": {"num_workers": 0, "batching": "static", "batch_size": 8, "shuffle": False}},
        "optim": {"lr": 4e-3},
        "schedule": {"kind": "constant", "warmup_steps": 2},
        "train": {"max_steps": steps},
        "checkpoint": {"every_steps": 0, "at_epoch_end": False, "keep_last": 1},
        "log": {"every_steps": 50, "tensorboard": False, "progress": False},
    }
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    train(load_config(TrainConfig, path, []))
    return tmp / "run" / "model", rows
