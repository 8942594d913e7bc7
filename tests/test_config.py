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
