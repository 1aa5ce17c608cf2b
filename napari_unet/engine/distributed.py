"""DistributedDataParallel set-up from the environment that torchrun (or a scheduler) sets.

One process per GPU (or per CPU slot with gloo). Nothing here manages processes: the CLI's
``--nproc`` launches ``torchrun``, which sets RANK, WORLD_SIZE and LOCAL_RANK.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

# A process that waits longer than this on its peers gives up, so a dead rank ends the job.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("NAPARI_UNET_DDP_TIMEOUT", 45)))


@dataclass
class DistributedContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def setup(self, device: torch.device) -> None:
        if not self.enabled or torch_dist.is_initialized():
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT,
                                      device_id=device if device.type == "cuda" else None)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar over all processes."""
        if not self.enabled:
            return float(value)
        value = value.detach().float().clone()
        torch_dist.all_reduce(value)
        return float(value) / self.world_size

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes, in place."""
        if self.enabled:
            torch_dist.all_reduce(tensor)
        return tensor

    def cleanup(self) -> None:
        if self.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def context() -> DistributedContext:
    """The process's place in the job, from torchrun's environment (one process when unset)."""
    return DistributedContext(rank=int(os.environ.get("RANK", 0)),
                              local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                              world_size=int(os.environ.get("WORLD_SIZE", 1)))
