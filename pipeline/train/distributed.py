"""Multi-GPU / multi-node training with PyTorch DDP under ``torchrun``; a no-op in one process.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here degrades to a
single process, so the same code path serves a laptop and a cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only this process logs to MLflow and writes files."""
        return self.rank == 0


def is_main_process() -> bool:
    """Known before any process group exists: torchrun sets RANK for every process it starts."""
    return int(os.environ.get("RANK", "0")) == 0


def setup(device: torch.device) -> tuple[Topology, torch.device]:
    """Join the process group torchrun started (if any); returns this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Topology(), device
    topology = Topology(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(topology.local_rank)
        device = torch.device("cuda", topology.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return topology, device


def sum_across(values: list[float], topology: Topology, device: torch.device) -> list[float]:
    if not topology.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def from_main(value: Any, topology: Topology) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not topology.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
