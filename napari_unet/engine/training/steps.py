"""One training step and what watches the steps: the optimizer step, the loss reader (one host
sync per read, a non-finite loss stops the run), the throughput window.
"""
from __future__ import annotations

import math
import time

import torch

from ...errors import TrainingDiverged
from ..config import TrainConfig
from ..runtime import autocast
from .pipeline import prepare

SEED_STRIDE = 1_000_003  # step seeds: seed * stride + step, distinct for every (seed, step)


def train_step(net, model, batches, augment, loss_fn, optimizer, scaler, norm, config, device,
                mem_format, step, dist) -> torch.Tensor:
    """One optimizer step on the next batch; the loss stays on the device (no host sync)."""
    step_seed = config.seed * SEED_STRIDE + step
    batch_step, x, y = batches.next()
    assert batch_step == step, (batch_step, step)
    generator = torch.Generator().manual_seed(step_seed)
    x, y = prepare(x, y, norm, augment, generator, offset=dist.rank * config.batch_size,
                   global_batch=config.batch_size * dist.world_size, mem_format=mem_format)
    # dropout masks depend on (seed, step, rank): exact resume; DDP differs only through dropout
    # and float summation order
    seed_step(device, step_seed * 64 + dist.rank)
    if not net.training:  # a walk over every module: only after a validation set eval()
        net.train()
    return optimizer_step(net, model, x, y, loss_fn, optimizer, scaler, config, device)


def seed_step(device: torch.device, seed: int) -> None:
    """Seed the generators a step draws from (dropout): the CPU's and the training device's,
    as ``torch.manual_seed`` does for these two. Not ``torch.manual_seed`` itself: for every
    accelerator type torch has but did not start (CUDA on a CPU run, XPU, MTIA) it queues the
    seed with a formatted stack trace, about a millisecond a step (issue 35)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[
            device.index if device.index is not None else torch.cuda.current_device()
        ].manual_seed(seed)
    elif device.type != "cpu":
        getattr(torch, device.type).manual_seed(seed)


def optimizer_step(net, model, x, y, loss_fn, optimizer, scaler, config, device) -> torch.Tensor:
    """Forward, loss, backward, clip and step on one prepared batch (training and benchmark)."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, config.amp):
        logits = net(x)
    loss = loss_fn(logits.float(), y)
    # disabled (not fp16): scale and unscale_ do nothing, step is optimizer.step(); enabled:
    # the scaler skips steps with inf/NaN gradients
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    _clip(model, config)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def loss_read_interval(device: torch.device, config: TrainConfig) -> int:
    """Steps between loss reads: every step on a CPU (the loss is computed by the time the
    step returns, a read costs nothing), every `log_every` steps on an accelerator."""
    return 1 if device.type == "cpu" else config.log_every


class LossReader:
    """Step losses kept on the device until read: one host sync (under DDP one all-reduce,
    which also agrees on a stop request) per read. A non-finite loss raises TrainingDiverged
    naming its step (unless fp16's scaler handles it by skipping the step)."""

    def __init__(self, every: int, stop_on_nonfinite: bool = True):
        self.every, self.stop_on_nonfinite = max(1, int(every)), stop_on_nonfinite
        self.pending: list = []  # (step, loss on the device)
        self.last = math.nan

    def add(self, step: int, loss: torch.Tensor):
        self.pending.append((step, loss))

    def due(self, done: int, start_step: int, total: int) -> bool:
        """Every `every` steps, the first step of a run (a loss to show early) and the last."""
        return done % self.every == 0 or done == start_step + 1 or done == total

    def read(self, dist, stop_requested: bool = False) -> bool:
        """Read (and under DDP average) the pending losses; True if any rank asked to stop."""
        steps = [step for step, _ in self.pending]
        if dist.enabled:  # the stop request travels with the losses: one all-reduce
            values = [loss.float().reshape(1) for _, loss in self.pending]
            flag = torch.tensor([1.0 if stop_requested else 0.0]).to(values[0].device)
            combined = torch.cat(values + [flag])
            dist.sum_(combined)
            read = combined.tolist()  # the one host sync
            stop_requested = read.pop() > 0
        elif len(self.pending) == 1:  # a CPU reads every step: no new tensors for it
            read = [self.pending[0][1].item()]
        else:
            read = torch.stack([loss.float() for _, loss in self.pending]).tolist()
        self.pending = []
        for step, value in zip(steps, read):
            value /= dist.world_size
            self._check(step, value)
            self.last = value
        return stop_requested

    def pending_are_finite(self) -> bool:
        """Whether the unread losses of this process are finite (no collective: for a run
        being cancelled, which must not save weights a non-finite loss has reached)."""
        if not self.stop_on_nonfinite or not self.pending:
            return True
        values = torch.stack([loss.float() for _, loss in self.pending])
        return bool(torch.isfinite(values).all())

    def _check(self, step, value):
        if not math.isfinite(value) and self.stop_on_nonfinite:
            self.pending = []
            raise TrainingDiverged(
                f"the loss became {value} at step {step}: lower --lr or try --amp off; "
                f"the last good checkpoint is kept in the run folder")


def _clip(model, config):
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)


class ThroughputWindow:
    """Images per second over the recent steps (excludes validation pauses)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.start, self.images, self.last = time.perf_counter(), 0, 0.0

    def add(self, images: int) -> float:
        self.images += images
        elapsed = time.perf_counter() - self.start
        if elapsed > 0:
            self.last = self.images / elapsed
        if elapsed > 10:  # keep the window recent
            self.start, self.images = time.perf_counter(), 0
        return self.last
