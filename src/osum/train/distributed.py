"""One process or many under torchrun: process group, device, engine wrapping, full state gathering.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK and the rendezvous (c10d) for any number of nodes; osum never
needs an address or a per-rank script. The backend follows the device: nccl on CUDA, hccl on Ascend NPUs
(torch_npu), gloo on CPU.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..lifetime import signal_when_parent_dies
from ..models.weights import WeightError


@dataclass
class Env:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        """A few numbers summed (or maxed) over ranks, in float64."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return tensor.tolist()

    @property
    def comm_device(self) -> torch.device:
        return self.device if dist.is_initialized() and dist.get_backend() in ("nccl", "hccl") else torch.device("cpu")


def choose_device(name: str, local_rank: int) -> torch.device:
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if _npu_available():
        return torch.device("npu", local_rank)
    return torch.device("cpu")


def _npu_available() -> bool:
    try:
        import torch_npu  # noqa: F401  (registers the Ascend device with torch)
    except ImportError:
        return False
    return hasattr(torch, "npu") and torch.npu.is_available()


def setup(device_name: str) -> Env:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    if "TORCHELASTIC_RUN_ID" in os.environ:  # set by torchrun for its workers
        die_with_launcher()
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = choose_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = {"cuda": "nccl", "npu": "hccl"}.get(device.type, "gloo")
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return Env(rank, world_size, local_rank, device)


def die_with_launcher() -> None:
    """A SIGTERM when torchrun dies (even by kill -9): the loop checkpoints and exits, instead of training on
    as an orphan beside the rerun."""
    if not signal_when_parent_dies(signal.SIGTERM):
        sys.exit("osum: the torchrun launcher is gone; not starting")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, engine: str, env: Env, find_unused_parameters: bool = False) -> nn.Module:
    """The module the loop calls: the model itself (one process), DDP, or the model sharded by FSDP2."""
    if engine == "fsdp2" and env.distributed:
        from torch.distributed.fsdp import fully_shard

        # Shard block by block (each transformer layer is gathered just before it runs), then the rest.
        for block in list(_blocks(model)):
            fully_shard(block)
        fully_shard(model)
        return model
    if not env.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [env.device.index] if env.device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)
    ddp.register_comm_hook(SYNCS, _counting_allreduce)
    return ddp


class SyncCounter:
    """How many gradient buckets DDP has all-reduced: the log shows it, a test checks accumulation with it."""

    calls = 0


SYNCS = SyncCounter()


def _counting_allreduce(state: SyncCounter, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    state.calls += 1
    return allreduce_hook(None, bucket)


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


def _blocks(model: nn.Module) -> Iterator[nn.Module]:
    """The repeated layers of the encoder, adapter and LLM (the units FSDP2 gathers one at a time)."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1:
            yield from module


def unwrap(module: nn.Module) -> nn.Module:
    """The SpeechLLM inside a DDP wrapper (FSDP2 shards the model in place: nothing to unwrap)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(module, DistributedDataParallel) or type(module).__name__ == "DeepSpeedEngine":
        return module.module
    return module


@contextlib.contextmanager
def gradient_sync(module: nn.Module, engine: str, enabled: bool) -> Iterator[None]:
    """Let gradients all-reduce only on the last micro-batch of an optimizer step."""
    if engine == "deepspeed":
        module.set_gradient_accumulation_boundary(enabled)
        yield
        return
    if enabled or not dist.is_initialized():
        if engine == "fsdp2" and hasattr(module, "set_requires_gradient_sync"):
            module.set_requires_gradient_sync(True)
        yield
        return
    if engine == "fsdp2":
        module.set_requires_gradient_sync(False)
        yield
    elif hasattr(module, "no_sync"):
        with module.no_sync():
            yield
    else:
        yield


def full_states(module: nn.Module, optimizer: torch.optim.Optimizer, engine: str, env: Env,
                names: dict[nn.Parameter, str]) -> tuple[dict[str, Any] | None, dict | None]:
    """(model state, optimizer state by parameter name), complete, on rank 0 (None elsewhere).

    Under FSDP2 every rank takes part in gathering its shards; otherwise the local copies are complete.
    """
    from .state import optimizer_state_by_name

    if engine == "fsdp2" and env.distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state, optimizer_state = get_state_dict(module, optimizer, options=options)
        return (model_state, optimizer_state) if env.main else (None, None)
    if engine == "deepspeed":
        # The optimizer's partitions are saved by DeepSpeed itself (save_deepspeed_state).
        if module.zero_optimization_stage() == 3:
            model_state = module._zero3_consolidated_16bit_state_dict()  # collective
            return (model_state, None) if env.main else (None, None)
        return (unwrap(module).state_dict(), None) if env.main else (None, None)
    if not env.main:
        return None, None
    return unwrap(module).state_dict(), optimizer_state_by_name(optimizer, names)


def load_optimizer(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict, engine: str, env: Env,
                   names: dict[nn.Parameter, str]) -> None:
    """Every rank holds the full optimizer state (read from the checkpoint); each keeps what it owns."""
    from .state import load_optimizer_state_by_name

    if engine == "fsdp2" and env.distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))
        return
    load_optimizer_state_by_name(optimizer, names, state)


DEEPSPEED_DIR = "deepspeed"


def save_deepspeed_state(module: nn.Module, checkpoint_dir) -> None:
    """Every rank writes its optimizer partition (DeepSpeed's own files, torch pickles read by DeepSpeed)."""
    module.save_checkpoint(str(checkpoint_dir / DEEPSPEED_DIR), tag="state", save_latest=False)


def load_deepspeed_state(module: nn.Module, checkpoint_dir) -> None:
    check_deepspeed_files(checkpoint_dir / DEEPSPEED_DIR)
    path, _ = module.load_checkpoint(str(checkpoint_dir / DEEPSPEED_DIR), tag="state", load_lr_scheduler_states=False)
    if path is None:
        raise RuntimeError(f"{checkpoint_dir}: no DeepSpeed state to resume from (was it written by another engine?)")


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
