"""Tiny models built locally (no download) for the model tests."""

from __future__ import annotations

from pathlib import Path

import torch

from osum.models.adapter import AdapterConfig
from osum.models.llm import LLMConfig, LoraConfig
from osum.models.speech_llm import EncoderConfig, SpeechLLM, SpeechLLMConfig, TrainableConfig
from osum.models.tokenizer import train_bpe_tokenizer
from osum.models.whisper import WhisperEncoderConfig

TEXTS = ["HELLO WORLD", "GOOD MORNING", "ENTER NINE ONE SIX", "你好 世界", "<male><female><adult><child>",
         "YES NO STOP GO", "RUBOUT ERASE", "ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN"] * 10


def tiny_tokenizer(path: Path, chat: bool = True, whole_tokens: list[str] | None = None):
    return train_bpe_tokenizer(TEXTS, path, vocab_size=320, chat=chat, whole_tokens=whole_tokens or ())


def tiny_llm_config(vocab: int, initializer_range: float = 0.02) -> dict:
    return dict(model_type="qwen2", vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
                initializer_range=initializer_range)


def tiny_speech_llm(tmp: Path, chat: bool = True, lora: bool = True, adapter: str = "osum", seed: int = 0,
                    initializer_range: float = 0.02, encoder_path: str | None = None,
                    llm_path: str | None = None, ctc_weight: float = 0.0, label_tokens: bool = False,
                    utterance_labels: list[str] | None = None) -> SpeechLLM:
    torch.manual_seed(seed)
    tokenizer_dir = tmp / f"tokenizer_{'chat' if chat else 'plain'}{'_labels' if label_tokens else ''}"
    tokenizer = tiny_tokenizer(tokenizer_dir, chat, ["<male>", "<female>", "<adult>", "<child>"] if label_tokens else None)
    config = SpeechLLMConfig(
        encoder=EncoderConfig(path=encoder_path,
                              config=None if encoder_path else WhisperEncoderConfig(d_model=32, n_heads=2, n_layers=2, ffn_dim=64)),
        adapter=AdapterConfig(type=adapter, model_dim=32, n_layers=2, n_heads=2, ffn_dim=64, dropout=0.0, stack=2, hidden_dim=48),
        llm=LLMConfig(path=llm_path, config=None if llm_path else tiny_llm_config(len(tokenizer), initializer_range),
                      tokenizer=str(tokenizer_dir)),
        lora=LoraConfig(enabled=lora, r=4, alpha=8, dropout=0.0),
        trainable=TrainableConfig(encoder=False, adapter=True, llm=llm_path is None, lora=True),
        ctc_weight=ctc_weight,
        utterance_labels=list(utterance_labels or []),
    )
    return SpeechLLM.build(config).eval()


def tiny_llm_dir(path: Path, initializer_range: float = 0.5, seed: int = 0) -> Path:
    """A random tiny Qwen2 saved as a Hugging Face directory, with its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(path, chat=True)
    config = dict(tiny_llm_config(len(tokenizer), initializer_range))
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    model.save_pretrained(path)
    return path
