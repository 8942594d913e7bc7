"""Tokenizers for fresh LLMs: label tags are whole tokens; a tokenizer larger than the LLM's vocabulary is refused."""

from __future__ import annotations

import json

import pytest

from osum.cli import main
from osum.models.tokenizer import train_bpe_tokenizer


def test_label_tags_are_whole_tokens(tmp_path):
    texts = ["EVERY COLD CAT PUSHES EIGHT BOXES", "THE DOG SEES A RED BOX"] * 20
    plain = train_bpe_tokenizer(texts, tmp_path / "plain", vocab_size=300)
    assert len(plain.tokenize("<male>")) > 1  # characters: the choice male/female would sit in one of them
    tagged = train_bpe_tokenizer(texts, tmp_path / "tagged", vocab_size=300, whole_tokens=["<male>", "<female>"])
    assert tagged.tokenize("<female><male>") == ["<female>", "<male>"]
    assert tagged.decode(tagged("THE CAT<male>")["input_ids"]) == "THE CAT<male>"


def test_osum_model_tokenizer_learns_transcripts_and_label_tags(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"key": f"k{i}", "wav": "a.wav", "txt": f"HELLO WORLD NUMBER {i}"}) + "\n"
                                for i in range(30)))
    assert main(["model", "tokenizer", str(manifest), "--vocab-size", "300", "--out", str(tmp_path / "tok")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["transcripts"] == 30 and report["vocab_size"] > 300  # the default label tags were added
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tokenizer.tokenize("<anger>") == ["<anger>"] and tokenizer.tokenize("<throat clearing>") == ["<throat clearing>"]
    (tmp_path / "empty.jsonl").write_text(json.dumps({"key": "k", "wav": "a.wav"}) + "\n")
    assert main(["model", "tokenizer", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "t2")]) == 2
    assert "no transcripts" in capsys.readouterr().err


def test_a_tokenizer_larger_than_the_llm_vocabulary_is_refused(tmp_path):
    from model_parts import tiny_llm_config, tiny_tokenizer

    from osum.models.llm import LLMConfig
    from osum.models.speech_llm import EncoderConfig, SpeechLLM, SpeechLLMConfig
    from osum.models.whisper import WhisperEncoderConfig

    tokenizer = tiny_tokenizer(tmp_path / "tok")
    config = SpeechLLMConfig(
        encoder=EncoderConfig(config=WhisperEncoderConfig(d_model=32, n_heads=2, n_layers=1, ffn_dim=64)),
        llm=LLMConfig(config=tiny_llm_config(len(tokenizer) - 10), tokenizer=str(tmp_path / "tok")))
    with pytest.raises(ValueError, match=f"raise the LLM config's vocab_size to at least {len(tokenizer)}"):
        SpeechLLM.build(config)
