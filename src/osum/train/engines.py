"""Engines: what differs between DDP, FSDP2 and DeepSpeed, behind the few methods the training loop calls.

    engine = make_engine(config.train, config.optim, env)
    module = engine.wrap(model, make_optimizer)     # the module the loop calls; engine.optimizer is built
    with engine.gradient_sync(last_micro_batch):    # all-reduce once per optimizer step
        engine.backward(loss)
    applied, grad_norm = engine.step(lr, skip)      # clip, scale, step (or skip a non-finite step)
    model_state, optimizer_state = engine.full_states()   # complete, on rank 0, for a checkpoint
    engine.save_own_files(directory); engine.load(checkpoint, trainer_state)

`ENGINES` maps `train.engine` to a class; one process runs the plain model under every engine but DeepSpeed.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..models.weights import WeightError
from .distributed import Env
from .state import load_optimizer_file, load_optimizer_state_by_name, optimizer_state_by_name

if TYPE_CHECKING:
    from .config import OptimConfig, TrainSection

DEEPSPEED_DIR = "deepspeed"

MakeOptimizer = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


class Engine:
    """The interface every engine implements; `wrap` is shared, the rest each engine defines."""

    collective_forward = False  # True: every rank must run each forward together (dev batches stop together)

    def __init__(self, env: Env, precision: str, clip_grad_norm: float, find_unused_parameters: bool = False,
                 deepspeed_stage: int = 2):
        self.env, self.precision, self.clip_grad_norm = env, precision, clip_grad_norm
        self.find_unused_parameters, self.deepspeed_stage = find_unused_parameters, deepspeed_stage
        self.scaler: torch.amp.GradScaler | None = None

    def wrap(self, model: nn.Module, make_optimizer: MakeOptimizer) -> nn.Module:
        """Wrap `model` for this engine and build its optimizer over the trainable parameters; returns the
        module the loop calls (also `self.module`; the optimizer is `self.optimizer`)."""
        self.model = model
        self.module = self._wrap(model)
        self.names = {p: n for n, p in model.named_parameters()}
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in self.params)  # before DeepSpeed ZeRO-3 partitions them away
        if not self.params:
            raise ValueError("nothing to train: every part is frozen (see model.trainable and model.lora)")
        self.optimizer = make_optimizer(self.params)
        self._attach_optimizer()
        return self.module

    @property
    def lr(self) -> float:
        """The learning rate of the last applied step."""
        return self.optimizer.param_groups[0]["lr"]

    def trainer_state(self) -> dict[str, Any]:
        """What trainer_state.json keeps for this engine (the fp16 gradient scaler)."""
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def save_own_files(self, directory: Path) -> None:
        """Files of the engine's own beside the checkpoint's (every rank runs it); none but DeepSpeed's."""

    # Each engine's own:
    def _wrap(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def _attach_optimizer(self) -> None:
        raise NotImplementedError

    def gradient_sync(self, enabled: bool) -> contextlib.AbstractContextManager:
        """A context in which backward all-reduces the gradients only when `enabled` (the step's last
        micro-batch)."""
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self, lr: float, skip: bool) -> tuple[bool, float]:
        """Clip and apply the step at `lr` unless `skip` (a non-finite loss on some rank) or the gradients are
        not finite; returns (applied, gradient norm before clipping)."""
        raise NotImplementedError

    def full_states(self) -> tuple[dict[str, Any] | None, dict | None]:
        """(model state, optimizer state by parameter name), complete, on rank 0 (None elsewhere); every rank
        calls it (a sharded engine gathers)."""
        raise NotImplementedError

    def load(self, checkpoint: Path, state: dict[str, Any]) -> None:
        """Restore the optimizer state of `checkpoint`, whose trainer_state.json is `state`."""
        raise NotImplementedError


class DDPEngine(Engine):
    """One process, or DistributedDataParallel: torch's optimizer, clipping and (fp16) gradient scaler."""

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.env.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=self.find_unused_parameters)
        ddp.register_comm_hook(SYNCS, _counting_allreduce)
        return ddp

    def _attach_optimizer(self) -> None:
        if self.precision == "fp16":
            self.scaler = torch.amp.GradScaler(self.env.device.type)

    @contextlib.contextmanager
    def gradient_sync(self, enabled: bool) -> Iterator[None]:
        """Let gradients all-reduce only on the last micro-batch of an optimizer step."""
        if enabled or not self.env.distributed:
            yield
        else:
            with self.module.no_sync():
                yield

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, lr: float, skip: bool) -> tuple[bool, float]:
        """Clip and apply the step at `lr` unless `skip` (a non-finite loss on some rank) or the gradients are
        not finite; returns (applied, gradient norm before clipping)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.clip_grad_norm if self.clip_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        applied = not skip and math.isfinite(grad_norm)
        if applied:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return applied, grad_norm

    def full_states(self) -> tuple[dict[str, Any] | None, dict | None]:
        if not self.env.main:
            return None, None
        return self.model.state_dict(), optimizer_state_by_name(self.optimizer, self.names)

    def load(self, checkpoint: Path, state: dict[str, Any]) -> None:
        """Restore the optimizer (and scaler) of `checkpoint`, whose trainer_state.json is `state`."""
        self._load_optimizer(load_optimizer_file(checkpoint, state["optimizer"]))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def _load_optimizer(self, state: dict) -> None:
        """Every rank holds the full optimizer state (read from the checkpoint); each keeps what it owns."""
        load_optimizer_state_by_name(self.optimizer, self.names, state)


class FSDP2Engine(DDPEngine):
    """The model sharded in place by FSDP2 (fully_shard, block by block); one process runs it plain."""

    collective_forward = True

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.env.distributed:
            return model
        from torch.distributed.fsdp import fully_shard

        # Shard block by block (each transformer layer is gathered just before it runs), then the rest.
        for block in list(_blocks(model)):
            fully_shard(block)
        fully_shard(model)
        return model

    @contextlib.contextmanager
    def gradient_sync(self, enabled: bool) -> Iterator[None]:
        if self.env.distributed:
            self.module.set_requires_gradient_sync(enabled)
        yield

    def full_states(self) -> tuple[dict[str, Any] | None, dict | None]:
        if not self.env.distributed:
            return super().full_states()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state, optimizer_state = get_state_dict(self.module, self.optimizer, options=options)
        return (model_state, optimizer_state) if self.env.main else (None, None)

    def _load_optimizer(self, state: dict) -> None:
        if not self.env.distributed:
            return super()._load_optimizer(state)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.module, self.optimizer, state, options=StateDictOptions(full_state_dict=True))


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO (stage 1, 2 or 3): it owns mixed precision, clipping, the partitioned optimizer and its
    own checkpoint files."""

    def _wrap(self, model: nn.Module) -> nn.Module:
        return model  # the optimizer is built on the plain model's parameters, then handed to DeepSpeed

    def _attach_optimizer(self) -> None:
        self.module = deepspeed_initialize(self.model, self.optimizer, self.deepspeed_stage, self.precision,
                                           self.clip_grad_norm)
        self.optimizer = self.module.optimizer

    @contextlib.contextmanager
    def gradient_sync(self, enabled: bool) -> Iterator[None]:
        self.module.set_gradient_accumulation_boundary(enabled)
        yield

    def backward(self, loss: torch.Tensor) -> None:
        self.module.backward(loss)

    def step(self, lr: float, skip: bool) -> tuple[bool, float]:
        # DeepSpeed clips, and skips a step whose gradients are not finite, by itself (its overflow check
        # decides; `skip` is not consulted).
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.module.step()
        grad_norm = self.module.get_global_grad_norm()
        grad_norm = float("nan") if grad_norm is None else float(grad_norm)
        return not getattr(self.optimizer, "overflow", False) and math.isfinite(grad_norm), grad_norm

    def full_states(self) -> tuple[dict[str, Any] | None, dict | None]:
        # The optimizer's partitions are in DeepSpeed's own files (save_own_files).
        if self.module.zero_optimization_stage() == 3:
            model_state = self.module._zero3_consolidated_16bit_state_dict()  # collective
            return (model_state, None) if self.env.main else (None, None)
        return (self.model.state_dict(), None) if self.env.main else (None, None)

    def save_own_files(self, directory: Path) -> None:
        """Every rank writes its optimizer partition (DeepSpeed's own files, torch pickles read by DeepSpeed)."""
        self.module.save_checkpoint(str(directory / DEEPSPEED_DIR), tag="state", save_latest=False)

    def load(self, checkpoint: Path, state: dict[str, Any]) -> None:
        check_deepspeed_files(checkpoint / DEEPSPEED_DIR)
        path, _ = self.module.load_checkpoint(str(checkpoint / DEEPSPEED_DIR), tag="state",
                                              load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"{checkpoint}: no DeepSpeed state to resume from (was it written by another engine?)")


ENGINES: dict[str, type[Engine]] = {"ddp": DDPEngine, "fsdp2": FSDP2Engine, "deepspeed": DeepSpeedEngine}


def make_engine(train: TrainSection, optim: OptimConfig, env: Env) -> Engine:
    """The engine `train.engine` names, set up as `train` and `optim` say."""
    return ENGINES[train.engine](env, train.precision, optim.clip_grad_norm, train.find_unused_parameters,
                                 train.deepspeed_stage)


# ------------------------------------------------------------------------------------------------ DDP

class SyncCounter:
    """How many gradient buckets DDP has all-reduced: the log shows it, a test checks accumulation with it."""

    calls = 0


SYNCS = SyncCounter()


def _counting_allreduce(state: SyncCounter, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    state.calls += 1
    return allreduce_hook(None, bucket)


# ------------------------------------------------------------------------------------------------ FSDP2

def _blocks(model: nn.Module) -> Iterator[nn.Module]:
    """The repeated layers of the encoder, adapter and LLM (the units FSDP2 gathers one at a time)."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1:
            yield from module


# ------------------------------------------------------------------------------------------------ DeepSpeed

def deepspeed_initialize(model: nn.Module, optimizer: torch.optim.Optimizer, stage: int, precision: str,
                         clip_grad_norm: float) -> nn.Module:
    """A DeepSpeed engine with ZeRO `stage` really enabled (OSUM's ds config never turns ZeRO on).

    osum forms batches and marks accumulation boundaries itself, so DeepSpeed sees one micro-batch per
    step and `set_gradient_accumulation_boundary` says when to reduce and step.
    """
    try:
        import deepspeed
    except ImportError as err:
        raise ValueError("train.engine=deepspeed needs DeepSpeed: pip install 'osum[deepspeed]'") from err
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": clip_grad_norm,
        "zero_optimization": {"stage": stage, "overlap_comm": False, "contiguous_gradients": True},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0},
        "zero_allow_untested_optimizer": True,  # torch's AdamW, so the same optimizer runs on every engine
        "steps_per_print": 2**31,
        "wall_clock_breakdown": False,
    }
    if not torch.cuda.is_available():
        # DeepSpeed would JIT-compile its shared-memory all-reduce (used only by its inference all-reduce)
        # at start: minutes without output on a small CPU machine, and forever after a build was killed
        # (torch's build lock file stays behind). Training reduces through torch.distributed (gloo) anyway.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not dist.is_initialized():  # one process without torchrun: a group of one on loopback
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(key, value)  # DeepSpeed asserts that LOCAL_RANK is set
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        backend = "nccl" if next(model.parameters()).is_cuda else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    if engine.zero_optimization_stage() != stage:
        raise RuntimeError(f"DeepSpeed runs ZeRO stage {engine.zero_optimization_stage()}, not the {stage} asked for")
    return engine


def check_deepspeed_files(directory) -> None:
    """Refuse a DeepSpeed state directory unless each of its .pt/.bin files unpickles with weights_only=True.

    DeepSpeed's own loader uses torch.load(weights_only=False), so a pickle planted in a checkpoint would run
    code on resume. Besides tensors and containers, DeepSpeed (0.19: engine._save_checkpoint,
    _save_zero_checkpoint, the ZeRO optimizers' state_dict) writes only the four types allowed here.
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    allowed = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    for path in sorted(p for p in Path(directory).rglob("*") if p.suffix in (".pt", ".bin")):
        try:
            with torch.serialization.safe_globals(allowed):
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mmap: no tensor data read
        except Exception as err:  # noqa: BLE001 (any failure is a refusal)
            lines = str(err).splitlines() or [type(err).__name__]
            reason = next((line.strip() for line in lines if "Unsupported global" in line), lines[0])
            reason = reason.split(" was not an allowed global")[0].rstrip(".")  # not torch's advice to allow it
            raise WeightError(f"{path}: refused, not handed to DeepSpeed (which unpickles it with weights_only=False, "
                              f"so it could run code): {reason}. Resume from a checkpoint osum wrote, or set "
                              "checkpoint.resume=none") from None
