"""osum export: the LLM and the Whisper encoder as Hugging Face directories that transformers (and peft) open
alone, the adapter as plain safetensors; the reloaded parts compute what the osum model computes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from model_parts import tiny_llm_dir, tiny_speech_llm
from osum.models.adapter import AdapterConfig, build_adapter
from osum.models.checkpoint import save_model
from osum.models.export import export_model
from osum.models.weights import WeightError


@pytest.fixture(scope="module")
def lora_model_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    model = tiny_speech_llm(tmp, llm_path=str(tiny_llm_dir(tmp / "base_llm")))
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero: give it weights, or merged == base proves nothing
        for name, param in model.llm.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.1)
    return model, save_model(model, tmp / "model")


def ids_for(model):
    return torch.tensor([model.tokenizer("HELLO WORLD ENTER NINE", add_special_tokens=False)["input_ids"]])


def test_merged_export_opens_with_transformers_alone(lora_model_dir, tmp_path):
    model, model_dir = lora_model_dir
    done = subprocess.run([sys.executable, "-m", "osum.cli", "export", str(model_dir), str(tmp_path / "out"),
                           "--merge-lora"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    described = json.loads((out / "export.json").read_text())
    assert described["lora"] == "merged" and not (out / "lora").exists()
    llm = AutoModelForCausalLM.from_pretrained(out / "llm").eval()
    ids = ids_for(model)
    with torch.no_grad():
        expected = model.llm(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(model.config.llm.path).eval()(input_ids=ids).logits
        got = llm(input_ids=ids).logits
    assert not torch.allclose(expected, base, atol=1e-3)  # the LoRA weights matter ...
    assert (got - expected).abs().max() < 1e-4 * expected.abs().max()  # ... and are in the merged LLM
    assert AutoTokenizer.from_pretrained(out / "llm")("HELLO")["input_ids"] == model.tokenizer("HELLO")["input_ids"]
    assert described["eos_token_id"] == model.eos_id

    encoder = WhisperEncoder.from_pretrained(out / "encoder").eval()
    frames = 2 * model.encoder.config.max_positions
    features = torch.randn(1, frames, model.encoder.config.n_mels)
    with torch.no_grad():
        hf = encoder(features.transpose(1, 2)).last_hidden_state
        ours, _ = model.encoder(features)
    assert torch.allclose(hf, ours, atol=1e-5)

    stored = load_file(str(out / "adapter" / "adapter.safetensors"))
    adapter = build_adapter(AdapterConfig(**json.loads((out / "adapter" / "adapter_config.json").read_text()))).eval()
    adapter.load_state_dict({k.removeprefix("adapter."): v for k, v in stored.items() if k.startswith("adapter.")})
    assert torch.equal(stored["audio_markers"], model.audio_markers)
    hidden, lengths = ours[:, :40], torch.tensor([40])
    with torch.no_grad():
        assert torch.equal(adapter(hidden, lengths)[0], model.adapter(hidden, lengths)[0])


def test_unmerged_export_keeps_lora_as_a_peft_adapter(lora_model_dir, tmp_path):
    from peft import PeftModel

    model, model_dir = lora_model_dir
    described = export_model(model_dir, tmp_path / "out")
    assert described["lora"] == "lora/"
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "llm").eval()
    with_lora = PeftModel.from_pretrained(base, tmp_path / "out" / "lora").eval()
    ids = ids_for(model)
    with torch.no_grad():
        assert torch.allclose(with_lora(input_ids=ids).logits, model.llm(input_ids=ids).logits, atol=1e-6)


def test_export_refuses_a_non_empty_directory_and_a_non_model(lora_model_dir, tmp_path):
    _, model_dir = lora_model_dir
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(WeightError, match="not empty"):
        export_model(model_dir, tmp_path / "busy")
    with pytest.raises(WeightError, match="not an osum model directory"):
        export_model(tmp_path, tmp_path / "new")
