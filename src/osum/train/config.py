"""The training config: one typed document, validated before anything runs.

    osum train CONFIG.yaml [section.key=value ...]     (FunASR/Hydra style ++section.key=value too)
    osum train --print-config                          every key, its default and what it does

Sections: model (the speech LLM, plus init_from and prompts), data, optim, schedule, train, checkpoint, log.
An unknown key anywhere is an error naming the closest valid keys (see osum.config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..data.loader import DataSource, LoaderConfig, read_data_config
from ..models.model_types import DEFAULT_MODEL_TYPE, MODEL_TYPE_NAMES, model_type
from ..models.speech_llm import SpeechLLMConfig
from ..models.whisper_asr import WhisperModelConfig
from ..tasks import UnknownTaskError, canonical_task


@dataclass
class ModelSection(SpeechLLMConfig):
    # speech_llm: encoder + adapter + LLM (the keys above); whisper: Whisper itself (encoder-decoder), set in
    # model.whisper, trained on <TRANSCRIBE> with Whisper's own prompt tokens (model.generation applies to both)
    type: Literal[MODEL_TYPE_NAMES] = DEFAULT_MODEL_TYPE
    whisper: WhisperModelConfig = field(default_factory=WhisperModelConfig)
    init_from: str | None = None  # an osum model directory of the same type: start from its weights
    prompts: str | None = None  # a prompt YAML (task tag -> prompts); default: osum's packaged prompts

    def __post_init__(self) -> None:
        super().__post_init__()  # the speech LLM's own checks (utterance_labels), when the YAML is read
        model_type(self.type).check_section(self)  # keys that do not apply to the type are named


@dataclass
class DataSection:
    # Training lists: manifests, shards.list files, or an OSUM data config YAML (name: {path, weight});
    # entries are paths or {path, weight, tasks, format}. Weights repeat a list per epoch (0.5 = a half).
    train: list[DataSource | str] = field(default_factory=list)
    dev: list[DataSource | str] = field(default_factory=list)  # validation lists (read in order, no shuffle)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    prompt_choice: Literal["random", "first"] = "random"  # a random prompt of the task per sample, or the first
    dev_decode: int = 0  # also decode this many dev utterances at each validation: WER and label accuracy

    def __post_init__(self) -> None:
        self.train = expand_sources(self.train, "data.train")
        self.dev = expand_sources(self.dev, "data.dev")


def expand_sources(entries: list, where: str) -> list[DataSource]:
    """Paths become DataSources; an OSUM data config YAML becomes its entries; task tags are checked."""
    sources: list[DataSource] = []
    for entry in entries:
        if isinstance(entry, str):
            if entry.endswith((".yaml", ".yml")):
                sources.extend(read_data_config(entry))
                continue
            entry = DataSource(entry)
        sources.append(entry)
    for source in sources:
        try:
            source.tasks = [canonical_task(t) for t in source.tasks]
        except UnknownTaskError as err:
            raise ValueError(f"{where}: {source.path}: {err}") from err
    return sources


@dataclass
class OptimConfig:
    lr: float = 1e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not on biases and norms)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW moment decay rates
    eps: float = 1e-8  # AdamW denominator term
    clip_grad_norm: float = 5.0  # 0 = no clipping
    accum_steps: int = 1  # micro-batches per optimizer step; gradients are all-reduced once per step

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.accum_steps < 1 or len(self.betas) != 2:
            raise ValueError("need lr > 0, accum_steps >= 1 and two betas")


@dataclass
class ScheduleConfig:
    # warmup_invsqrt: linear warm-up, then lr * sqrt(warmup / step) (WeNet/OSUM WarmupLR);
    # warmup_cosine: linear warm-up, then cosine down to min_lr_ratio * lr at the last step; constant.
    kind: Literal["warmup_invsqrt", "warmup_cosine", "constant"] = "warmup_invsqrt"
    warmup_steps: int = 100  # optimizer steps of linear warm-up from 0 to lr
    min_lr_ratio: float = 0.0  # warmup_cosine: the final lr as a fraction of lr

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("need warmup_steps >= 0 and 0 <= min_lr_ratio <= 1")


@dataclass
class TrainSection:
    max_epochs: int = 1  # passes over the (weighted) training lists
    max_steps: int = 0  # optimizer steps; when > 0 it ends the run even mid-epoch
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16 autocast; fp16 adds a gradient scaler
    engine: Literal["ddp", "fsdp2", "deepspeed"] = "ddp"  # one process is plain; fsdp2 shards full fine-tuning
    deepspeed_stage: int = 2  # ZeRO stage for engine=deepspeed (1, 2 or 3)
    device: str = "auto"  # auto: cuda (this rank's GPU), npu (Ascend), else cpu
    seed: int = 0  # model initialization, dropout and prompt choice (per rank for dropout)
    val_every: int = 0  # validate every N optimizer steps; 0 = at the end of each epoch only
    max_bad_steps: int = 20  # stop when this many consecutive steps had non-finite loss or gradients
    find_unused_parameters: bool = False  # DDP: set when some trainable part is not used every step

    def __post_init__(self) -> None:
        if self.max_epochs < 1 and self.max_steps < 1:
            raise ValueError("train.max_epochs or train.max_steps must be positive")
        if self.deepspeed_stage not in (1, 2, 3):
            raise ValueError("train.deepspeed_stage must be 1, 2 or 3")


@dataclass
class CheckpointSection:
    every_steps: int = 500  # a checkpoint every N optimizer steps (0 = not by steps); always at the end and on SIGTERM
    at_epoch_end: bool = True  # also a checkpoint when an epoch ends
    keep_last: int = 2  # the newest K checkpoints are kept
    keep_best: int = 3  # and the N best by `metric` (needs validation)
    metric: Literal["loss", "accuracy", "wer"] = "loss"  # dev loss / token accuracy, or WER (needs data.dev_decode)
    resume: str = "auto"  # auto: the newest checkpoint in out_dir if any; none: start fresh; or a checkpoint dir


@dataclass
class LogSection:
    every_steps: int = 10  # one console + JSONL line per this many optimizer steps
    tensorboard: bool = True  # scalars under out_dir/tensorboard when tensorboard is installed
    progress: bool = True  # a progress bar with ETA on an interactive terminal


@dataclass
class TrainConfig:
    out_dir: str = "exp/osum"  # checkpoints/, model/ (the final model), train.log.jsonl, config.yaml
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)

    def __post_init__(self) -> None:
        if self.checkpoint.metric == "wer" and self.data.dev_decode <= 0:
            raise ValueError("checkpoint.metric=wer needs data.dev_decode > 0 (dev utterances to decode)")
        sharded = self.train.engine == "fsdp2" or (self.train.engine == "deepspeed" and self.train.deepspeed_stage == 3)
        if self.data.dev_decode and sharded:
            raise ValueError("data.dev_decode needs unsharded parameters (ddp, or deepspeed stage 1/2): "
                             "ranks of a sharded model cannot generate apart")
        kind = model_type(self.model.type)
        for where, sources in (("data.train", self.data.train), ("data.dev", self.data.dev)):
            for source in sources:
                kind.check_tasks(where, source)
        for key in ("ctc_weight", "utterance_labels"):
            if getattr(self.model, key) and sharded:
                raise ValueError(f"model.{key} needs unsharded parameters (ddp, or deepspeed stage 1/2): its loss "
                                 "reads the LLM's token embeddings outside the LLM's forward")


def check_paths(config: TrainConfig) -> None:
    """Fail before training when a named file is missing (the message names the key)."""
    if not config.data.train:
        raise ValueError("data.train is empty: name at least one manifest, shards.list or data config")
    for where, sources in (("data.train", config.data.train), ("data.dev", config.data.dev)):
        for source in sources:
            if "://" not in source.path and not source.path.startswith("pipe:") and not Path(source.path).exists():
                raise ValueError(f"{where}: {source.path} does not exist")
    for key in ("init_from", "prompts"):
        value = getattr(config.model, key)
        if value and not Path(value).exists():
            raise ValueError(f"model.{key}: {value} does not exist")
