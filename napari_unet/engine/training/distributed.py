"""DistributedDataParallel set-up from the environment that torchrun (or a scheduler) sets.

One process per GPU (or per CPU slot with gloo). Nothing here manages processes: the CLI's
``--nproc`` launches ``torchrun``, which sets RANK, WORLD_SIZE and LOCAL_RANK.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import signal
import threading
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from ...errors import ConfigError

# How long a process waits on its peers in a collective before giving up: long enough for a
# first compiled step and a checkpoint write on a slow disk. A *dead* rank ends the job much
# sooner: torchrun notices the exit and stops the other workers (tests/test_distributed.py).
TIMEOUT_VARIABLE = "NAPARI_UNET_DDP_TIMEOUT"  # minutes; `napari_unet train --ddp-timeout`
DEFAULT_TIMEOUT_MINUTES = 10.0


def collective_timeout() -> datetime.timedelta:
    """The collective timeout: NAPARI_UNET_DDP_TIMEOUT minutes (default 10)."""
    text = os.environ.get(TIMEOUT_VARIABLE, "")
    try:
        minutes = float(text) if text.strip() else DEFAULT_TIMEOUT_MINUTES
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ConfigError(f"{TIMEOUT_VARIABLE}={text!r}: give the DDP timeout in minutes, "
                          f"a number above 0 (e.g. --ddp-timeout 10)")
    return datetime.timedelta(minutes=minutes)


def threads_per_process(processes: int, cores: int | None = None) -> int:
    """CPU threads for each of `processes` processes sharing `cores` (default: this machine's;
    OMP_NUM_THREADS, where set, is the budget a parent gave us)."""
    if cores is None:
        budget = os.environ.get("OMP_NUM_THREADS", "")
        cores = int(budget) if budget.isdigit() and int(budget) > 0 else (os.cpu_count() or 1)
    return max(1, int(cores) // max(1, int(processes)))


def check_process_count(nproc: int, device: str) -> None:
    """--nproc on GPUs: at most one process per GPU of this machine."""
    if nproc <= 1 or device == "cpu":
        return
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cuda" and gpus == 0:
        return  # resolve_device reports the missing GPU in each worker
    if gpus and nproc > gpus:
        raise ConfigError(f"--nproc {nproc} but this machine has {gpus} GPU(s): use --nproc "
                          f"{gpus} or fewer (one process per GPU), or --device cpu")


class CancelRequest:
    """SIGINT while training, turned into a stop between steps, so that the checkpoint saved on
    cancel holds one whole step (weights, optimizer, scheduler, EMA and step count agree).

    One process: a SIGINT during a step or a checkpoint write (inside ``deferred()``) is noted
    and the run stops as soon as that is over (``stop_now``); anywhere else (validation,
    batches, the caller's code between events) it interrupts at once, as Python's own handler
    does. Under DDP (``agreed=True``) it is always noted, never raised: the ranks agree on it
    at the next loss read (the trainer's all-reduce carries the flag), so every rank stops
    after the same step and rank 0 saves it. A second SIGINT interrupts at once.
    """

    def __init__(self, agreed: bool = False):
        self.agreed = agreed
        self.requested = False
        self._deferring = 0
        self._previous = None

    def install(self):
        """From the main thread only (where Python delivers signals); a process that ignores
        SIGINT keeps ignoring it (the CLI, which must obey it, installs Python's handler)."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._on_signal)

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    @contextlib.contextmanager
    def deferred(self):
        """A step or a checkpoint write: a SIGINT that arrives meanwhile waits for its end."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1

    @property
    def stop_now(self) -> bool:
        """One process: a SIGINT was noted during a step or a checkpoint; stop here."""
        return self.requested and not self.agreed

    def _on_signal(self, signum, frame):
        if self.requested or not (self.agreed or self._deferring):
            raise KeyboardInterrupt
        self.requested = True


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
        torch_dist.init_process_group(backend=backend, timeout=collective_timeout(),
                                      device_id=device if device.type == "cuda" else None)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes, in place."""
        if self.enabled:
            torch_dist.all_reduce(tensor)
        return tensor

    def cleanup(self, together: bool = False) -> None:
        """Leave the process group. ``together`` (a run that ended normally): wait for every
        rank first, so that no rank closes its connections while a peer is still working
        (rank 0 writing the last checkpoint); gloo aborts a process whose peer vanished."""
        if self.enabled and torch_dist.is_initialized():
            if together:
                torch_dist.barrier()
            torch_dist.destroy_process_group()


def context() -> DistributedContext:
    """The process's place in the job, from torchrun's environment (one process when unset)."""
    return DistributedContext(rank=int(os.environ.get("RANK", 0)),
                              local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                              world_size=int(os.environ.get("WORLD_SIZE", 1)))
