"""One process or many under torchrun: the process group, this rank's device, a few numbers all-reduced.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK and the rendezvous (c10d) for any number of nodes; osum never
needs an address or a per-rank script. The backend follows the device: nccl on CUDA, hccl on Ascend NPUs
(torch_npu), gloo on CPU. What differs between DDP, FSDP2 and DeepSpeed is in `engines.py`.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..lifetime import signal_when_parent_dies


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
