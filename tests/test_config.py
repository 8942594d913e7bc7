from dataclasses import dataclass, field

import pytest

from osum.config import ConfigError, from_dict, load_config, parse_override, to_dict


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Top:
    name: str = "x"
    steps: int = 10
    use_lora: bool = False
    optim: Optim = field(default_factory=Optim)
    tags: list[str] = field(default_factory=list)
    device: str | None = None


def test_nested_values_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 20\noptim:\n  lr: 3.0e-4\n")
    cfg = load_config(Top, path, ["++optim.lr=0.01", "use_lora=true", "tags=[a, b]", "device=cuda"])
    assert cfg.steps == 20 and cfg.optim.lr == 0.01 and cfg.use_lora is True
    assert cfg.tags == ["a", "b"] and cfg.device == "cuda"
    assert to_dict(cfg)["optim"] == {"lr": 0.01, "betas": [0.9, 0.999]}


def test_errors_name_the_key_and_suggest():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'; did you mean lr"):
        from_dict(Top, {"optim": {"lrr": 1}})
    with pytest.raises(ConfigError, match=r"unknown config key 'use_lora_r'; did you mean use_lora"):
        load_config(Top, None, ["use_lora_r=1"])
    with pytest.raises(ConfigError, match=r"steps: expected an integer, got 'many'"):
        from_dict(Top, {"steps": "many"})
    with pytest.raises(ConfigError, match=r"use_lora: expected true or false"):
        from_dict(Top, {"use_lora": "perhaps"})
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        parse_override("steps")


def test_task_tags_with_or_without_spaces_and_aliases():
    from osum.tasks import UnknownTaskError, canonical_task, needs_transcript

    assert canonical_task("<TRANSCRIBE><GENDER>") == "<TRANSCRIBE> <GENDER>"
    assert canonical_task("<TRANSCRIBE> <AGE> <GENDER>") == "<TRANSCRIBE> <AGE> <GENDER>"
    assert canonical_task("asr+gender") == canonical_task("asr gender") == "<TRANSCRIBE> <GENDER>"
    assert canonical_task("vocal_event") == "<CAPTION>"
    with pytest.raises(UnknownTaskError, match="unknown task tag '<DANCE>'"):
        canonical_task("<TRANSCRIBE> <DANCE>")
    with pytest.raises(UnknownTaskError, match="malformed"):
        canonical_task("<TRANSCRIBE> gender")
    assert needs_transcript(("<TRANSCRIBE> <EMOTION>",)) and not needs_transcript(("<AGE> <GENDER>",))
    assert needs_transcript(())  # no task named: plain ASR


def test_tasks_survive_every_format(tmp_path):
    from osum.data.manifest import read_manifest, write_manifest
    from osum.data.sample import Sample
    from osum.data.shards import pack_shards, read_shards
    from osum.data.problems import Problems
    import numpy as np, soundfile as sf

    sf.write(tmp_path / "a.wav", np.zeros(8000, dtype=np.float32), 16000)
    samples = [
        Sample(key="one", audio=str(tmp_path / "a.wav"), text="A", tasks=("<TRANSCRIBE> <GENDER>",), duration=0.5),
        Sample(key="two", audio=str(tmp_path / "a.wav"), text="B", tasks=("<TRANSCRIBE>", "<AGE> <GENDER>"), duration=0.5),
    ]
    for fmt, dst in (("osum", tmp_path / "o.jsonl"), ("funasr", tmp_path / "f.jsonl"), ("kaldi", tmp_path / "k")):
        write_manifest(samples, dst, fmt)
        assert [s.tasks for s in read_manifest(dst, fmt)] == [s.tasks for s in samples], fmt
    pack_shards(samples, tmp_path / "s")
    assert [s.tasks for s in read_shards(tmp_path / "s", Problems())] == [s.tasks for s in samples]
