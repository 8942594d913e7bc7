"""The `osum train` and `osum average` commands as plain functions: config assembly, dry run, checkpoint choice."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import TrainConfig


def default_config_yaml() -> str:
    """Every training key with its default and meaning, as YAML."""
    from ..config import commented_yaml
    from .config import TrainConfig

    return commented_yaml(TrainConfig())


def load_train_config(config_file: str | None, overrides: list[str]) -> "TrainConfig":
    """The training config from a YAML file and key=value overrides (`osum train key=value ...` needs no file)."""
    from ..config import load_config
    from .config import TrainConfig

    overrides = list(overrides)
    if config_file and ("=" in config_file and not Path(config_file).exists()):
        overrides.insert(0, config_file)
        config_file = None
    return load_config(TrainConfig, config_file, overrides)


def dry_run_report(config: "TrainConfig", world_size: int | None = None) -> dict[str, Any]:
    """Check the config and data lists, count parameters and estimate memory per GPU (default $WORLD_SIZE or 1)."""
    from .dry_run import dry_run

    return dry_run(config, world_size or int(os.environ.get("WORLD_SIZE", "1")))


def average(run: str | Path, best: int | None = None, last: int | None = None, metric: str = "loss",
            out: str | Path | None = None) -> dict[str, Any]:
    """Average a run's `best` checkpoints by `metric` (validated ones), or its `last` ones, into a model directory."""
    from .state import average_checkpoints, best_checkpoints, list_checkpoints

    run = Path(run)
    if best:
        paths = best_checkpoints(run, metric, best)
        if len(paths) < best:
            raise ValueError(f"{run}: only {len(paths)} validated checkpoints (by {metric}); "
                             f"--best {best} needs that many (or use --last)")
    else:
        paths = list_checkpoints(run)[-last:]
        if len(paths) < last:
            raise ValueError(f"{run}: only {len(paths)} checkpoints; --last {last} needs that many")
    written = average_checkpoints(paths, out or run / f"model_avg{len(paths)}")
    return {"averaged": [str(p) for p in paths], "model_dir": str(written)}
