"""Shared by the benchmark scripts: real clips from ../shared/data, timing, and the small speech LLM they run.

The model: the bundled Whisper tiny.en encoder (real weights), osum's adapter and a random Qwen2 of the
given size (8 layers x 512 wide = 25M parameters by default: larger than the encoder, as in every real
speech LLM, so that batching is measured where it matters, in the LLM's token-by-token decoding).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def an4_clips(data: Path, count: int, low: float, high: float, seed: int = 0) -> list[Path]:
    rows = [json.loads(line) for line in (data / "an4" / "manifest.jsonl").read_text().splitlines()]
    rows = [r for r in rows if low <= r["duration"] <= high]
    random.Random(seed).shuffle(rows)
    return [data / "an4" / r["audio"] for r in rows[:count]]


def best_of(fn, repeats: int = 3, warm_up: bool = True) -> float:
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def small_speech_llm(layers: int = 8, width: int = 512, seed: int = 0, head_dim: int | None = None,
                     kv_heads: int | None = None):
    """(SpeechLLM, whisper_dir): tiny.en + osum adapter + a random `layers` x `width` Qwen2.

    `head_dim`: None keeps the tiny config's 4 attention heads (2 key/value heads), so heads are `width` / 4
    wide; a number gives `width // head_dim` heads of that size (vLLM's CPU attention needs e.g. 64, not 16),
    with `kv_heads` key/value heads (default 2 for an even head count, else 1; must divide the head count).
    """
    sys.path.insert(0, str(ROOT / "tests"))
    from model_parts import tiny_llm_config, tiny_tokenizer

    from osum.convert.ct2_whisper import bundled_whisper_tiny_en
    from osum.models.adapter import AdapterConfig
    from osum.models.llm import LLMConfig
    from osum.models.speech_llm import EncoderConfig, SpeechLLM, SpeechLLMConfig

    whisper_dir = bundled_whisper_tiny_en()
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tiny_tokenizer(Path(tmp), chat=True)
        llm = dict(tiny_llm_config(len(tokenizer), initializer_range=0.5), hidden_size=width,
                   intermediate_size=3 * width, num_hidden_layers=layers)
        if head_dim is not None:
            heads = width // head_dim
            if heads < 1 or heads * head_dim != width:
                raise ValueError(f"width {width} is not a multiple of head_dim {head_dim}")
            kv = kv_heads or (2 if heads % 2 == 0 else 1)
            if heads % kv:
                raise ValueError(f"kv_heads {kv} does not divide the {heads} attention heads")
            llm.update(num_attention_heads=heads, num_key_value_heads=kv)
        config = SpeechLLMConfig(
            encoder=EncoderConfig(path=str(whisper_dir)),
            adapter=AdapterConfig(model_dim=256, ffn_dim=512, dropout=0.0),
            llm=LLMConfig(config=llm, tokenizer=tmp),
        )
        return SpeechLLM.build(config).eval(), whisper_dir
