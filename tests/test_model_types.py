"""Model types (models/model_type.py): the dry run's counts are those of the model training builds, and no code
outside the table branches on a type name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from model_parts import tiny_llm_config, tiny_llm_dir, tiny_tokenizer
from osum.config import from_dict
from osum.models.model_types import MODEL_TYPES, build_for_training, directory_type, model_type
from osum.models.weights import WeightError
from osum.train.config import ModelSection

SRC = Path(__file__).resolve().parents[1] / "src" / "osum"
TINY_WHISPER = dict(model_type="whisper", vocab_size=400, d_model=32, encoder_layers=2, decoder_layers=1,
                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                    num_mel_bins=80, max_source_positions=250, max_target_positions=64, pad_token_id=0,
                    bos_token_id=1, eos_token_id=1, decoder_start_token_id=2)


def parts_of(model) -> tuple[dict[str, int], int]:
    """Parameters per part of a built SpeechLLM, grouped as the dry run reports them, and how many train."""
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        part = name.split(".", 1)[0]
        part = {"audio_markers": "adapter", "llm": "lora" if "lora_" in name else "llm"}.get(part, part)
        counts[part] = counts.get(part, 0) + p.numel()
    return counts, sum(p.numel() for p in model.parameters() if p.requires_grad)


def hf_whisper_dir(path: Path) -> Path:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = dict(TINY_WHISPER)
    config.pop("model_type")
    WhisperForConditionalGeneration(WhisperConfig(**config)).save_pretrained(path)
    return path


@pytest.mark.parametrize("pretrained", [False, True])
def test_dry_run_counts_are_those_of_the_model_training_builds(tmp_path, pretrained):
    if pretrained:  # directories: the dry run reads their config.json files, training their weights too
        parts = {"encoder": {"path": str(hf_whisper_dir(tmp_path / "whisper"))},
                 "llm": {"path": str(tiny_llm_dir(tmp_path / "llm"))}}
    else:
        vocab = len(tiny_tokenizer(tmp_path / "tokenizer"))
        parts = {"encoder": {"config": {"d_model": 32, "n_heads": 2, "n_layers": 2, "ffn_dim": 64}},
                 "llm": {"config": tiny_llm_config(vocab), "tokenizer": str(tmp_path / "tokenizer")}}
    section = from_dict(ModelSection, {
        **parts, "adapter": {"type": "osum", "model_dim": 32, "n_layers": 1, "n_heads": 2, "ffn_dim": 64},
        "lora": {"enabled": True, "r": 4}, "trainable": {"encoder": True, "adapter": True, "llm": False, "lora": True},
        "ctc_weight": 0.5, "utterance_labels": ["gender"]}, "model")
    size = model_type(section.type).size(section)
    counts, trainable = parts_of(build_for_training(section))
    assert size.parameters == counts and size.trainable == trainable
    assert size.parameters["utterance"] > 0 and size.parameters["ctc_head"] == 64 + 1  # blank + scale
    assert set(size.parameters) == {"encoder", "adapter", "utterance", "ctc_head", "llm", "lora"}


def test_whisper_dry_run_counts_are_those_of_the_network(tmp_path):
    from osum.models.whisper_asr import WhisperModelConfig, build_network, mark_trainable

    for section in (from_dict(ModelSection, {"type": "whisper", "whisper": {"config": TINY_WHISPER}}, "model"),
                    from_dict(ModelSection, {"type": "whisper", "whisper": {
                        "path": str(hf_whisper_dir(tmp_path / "w")), "train_encoder": True}}, "model")):
        size = model_type(section.type).size(section)
        network = build_network(WhisperModelConfig(config=TINY_WHISPER))
        mark_trainable(network, section.whisper)
        assert size.parameters["encoder"] == sum(p.numel() for p in network.model.encoder.parameters())
        assert sum(size.parameters.values()) == sum(p.numel() for p in network.parameters())
        assert size.trainable == sum(p.numel() for p in network.parameters() if p.requires_grad)


def test_a_model_directory_says_its_type(tmp_path):
    config_file = tmp_path / "config.json"
    assert directory_type({"weights": {}, "model": {}}, config_file) is MODEL_TYPES["speech_llm"]  # osum's first format
    assert directory_type({"type": "whisper"}, config_file) is MODEL_TYPES["whisper"]
    assert directory_type({"model_type": "whisper", "d_model": 384}, config_file) is MODEL_TYPES["whisper"]  # HF
    with pytest.raises(WeightError, match="model type 'wav2vec' is not one osum knows"):
        directory_type({"type": "wav2vec"}, config_file)
    (tmp_path / "config.json").write_text(json.dumps({"type": "wav2vec"}))
    from osum.models.checkpoint import load_model

    with pytest.raises(WeightError, match="wav2vec"):
        load_model(tmp_path)


def test_no_code_outside_the_table_branches_on_a_model_type():
    """A second model type goes behind the interface (DESIGN.md): callers never compare a type name."""
    branch = re.compile(r"""(model_type|\.type|\["type"\]|get\("type"\))\s*[!=]=\s*["'](speech_llm|whisper)["']""")
    found = [f"{path.relative_to(SRC)}:{n}" for path in SRC.rglob("*.py")
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if branch.search(line)]
    assert found == []


def test_the_meta_build_reads_no_weights(tmp_path):
    """A dry run of a pretrained LLM whose weights are not there (only config.json) counts it all the same."""
    llm = tiny_llm_dir(tmp_path / "llm")
    for weights in llm.glob("*.safetensors"):
        weights.unlink()
    section = from_dict(ModelSection, {"encoder": {"config": {"d_model": 32, "n_heads": 2, "n_layers": 1,
                                                              "ffn_dim": 64}},
                                       "llm": {"path": str(llm), "dtype": "bfloat16"}}, "model")
    size = model_type(section.type).size(section)
    config = json.loads((llm / "config.json").read_text())
    assert size.dims["llm_hidden"] == config["hidden_size"] and size.parameters["llm"] > 0
