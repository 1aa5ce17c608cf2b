"""``--minutes``: the step count that ends training on time, from a timing of the first steps.

People think in the time they can wait, not in optimizer steps. A short calibration runs the
engine's own ``train()`` (data sampling, augmentation, the step, its logging) in a throw-away
folder for a few seconds; the steps then fill what is left of the budget, less what the
validations and the last checkpoint will take. The schedule (warm-up, cosine) is laid over
those steps, so the learning rate reaches its end when the time does.
"""
from __future__ import annotations

import math
import tempfile
import time

import numpy as np

from ..config import TrainConfig
from ..events import Progress
from .loop import train

CALIBRATION_SECONDS = 12.0  # timed steps after the warm-up ones
WARMUP_STEPS = 3  # oneDNN builds its kernels in the first steps
VALIDATIONS = 4  # in a planned run
RESERVE_SHARE = 0.05  # of the budget, for start-up, checkpoints and the end
FORWARD_SHARE = 0.35  # a forward pass (validation) against a training step, per pixel


def seconds_per_step(config: TrainConfig, dataset, seconds: float = CALIBRATION_SECONDS,
                     warmup: int = WARMUP_STEPS) -> float:
    """Seconds per optimizer step of `config` on `dataset`, measured on ``train()`` itself
    in a throw-away run folder: `warmup` steps, then about `seconds` of steps (3 at least)."""
    probe = config.replace(steps=1_000_000, val_every=1_000_000, checkpoint_every=1_000_000,
                           minutes=None, fold=None)
    with tempfile.TemporaryDirectory(prefix="napari-unet-calibration-") as folder:
        events = train(probe, dataset, run_dir=folder)
        start, timed = None, 0
        try:
            for event in events:
                if not isinstance(event, Progress):
                    continue
                if event.step == warmup:
                    start = time.perf_counter()
                elif start is not None:
                    timed = event.step - warmup
                    if time.perf_counter() - start > seconds and timed >= 3:
                        break
        finally:
            events.close()
    return (time.perf_counter() - start) / timed


def fit_to_minutes(config: TrainConfig, dataset, started: float | None = None,
                   seconds: float = CALIBRATION_SECONDS) -> tuple[TrainConfig, float]:
    """`config` with the steps (and the validation and checkpoint periods) that end training
    about ``config.minutes`` after `started` (time.monotonic(); default: now), and the
    measured seconds per step."""
    started = time.monotonic() if started is None else started
    per_step = seconds_per_step(config, dataset, seconds)
    budget = config.minutes * 60.0
    left = budget * (1 - RESERVE_SHARE) - (time.monotonic() - started)
    validating = config.fold is not None
    one_validation = _validation_seconds(config, dataset, per_step) if validating else 0.0
    steps = int((left - VALIDATIONS * one_validation) / per_step)
    return with_steps(config, max(10, steps)), per_step


def with_steps(config: TrainConfig, steps: int) -> TrainConfig:
    """`config` trained `steps` steps, with the validation and checkpoint periods and the
    warm-up a fitted run of that many steps gets (fit_to_minutes)."""
    every = max(1, math.ceil(steps / VALIDATIONS))
    warmup = min(config.warmup_steps, max(0, steps // 10))
    return config.replace(steps=steps, val_every=every, checkpoint_every=every,
                          warmup_steps=warmup)


def time_limit(config: TrainConfig, started: float) -> float | None:
    """When a run fitted to ``config.minutes`` from `started` must stop (time.monotonic()),
    whatever its steps: the trainer's guard for a machine that slows down after the timing.
    Half the reserve is left for the last checkpoint. None without minutes."""
    if config.minutes is None:
        return None
    return started + config.minutes * 60.0 * (1 - RESERVE_SHARE / 2)


def _validation_seconds(config: TrainConfig, dataset, per_step: float) -> float:
    """What one validation costs: the validation fold's pixels (tiles overlap by about half)
    through forward passes, each pixel FORWARD_SHARE of a training step's per-pixel cost."""
    fraction = 1.0 / max(2, config.folds)
    pixels = sum(float(np.prod(mask.shape)) for mask in dataset.masks) * fraction
    step_pixels = config.batch_size * float(np.prod(config.patch_size))
    return per_step * FORWARD_SHARE * 1.5 * pixels / step_pixels
