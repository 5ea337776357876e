"""Multi-process training through ``torchrun`` (DDP): gloo on CPU, nccl on GPU.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them training runs in one process.
Each rank sees a disjoint shard of every epoch's shuffled order; DDP averages the gradients, so
all ranks hold identical parameters after every step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "all_reduce_mean", "setup_distributed", "teardown_distributed"]


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str) -> DistributedContext:
    """Join the process group if launched by torchrun; pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        torch_device = torch.device("cuda", local_rank if world_size > 1 else 0)
        torch.cuda.set_device(torch_device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistributedContext(rank=rank, world_size=world_size, device=torch_device)


def teardown_distributed(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Average a tensor over ranks (a no-op in one process)."""
    if context.enabled:
        value = value.clone()
        dist.all_reduce(value)
        value /= context.world_size
    return value
