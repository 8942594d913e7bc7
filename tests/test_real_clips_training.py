"""The speech LLM learns from real clips streamed by the loader: the data and model layers fit together."""

import pytest
import torch

from osum.data.loader import LoaderConfig, SpeechLoader
from osum.data.manifest import read_manifest
from osum.data.shards import pack_shards

from model_parts import tiny_speech_llm


def test_loss_falls_on_real_clips(tmp_path, ci_small):
    an4 = [s for s in read_manifest(ci_small) if s.extra.get("source") == "an4"][:8]
    assert len(an4) == 8
    pack_shards(an4, tmp_path / "shards")
    loader = SpeechLoader([tmp_path / "shards"], LoaderConfig(num_workers=0, batching="static", batch_size=8, shuffle=False))
    batch = next(iter(loader))
    model = tiny_speech_llm(tmp_path, lora=False).train()
    prompts = ["Transcribe the speech."] * batch.size
    targets = [s.text for s in batch.samples]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(20):
        out = model(batch.features, batch.lengths, prompts, targets)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.6 * losses[0], losses
