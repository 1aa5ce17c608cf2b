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

from ...errors import ConfigError
from ..config import TrainConfig
from ..events import Progress
from .loop import train

CALIBRATION_SECONDS = 12.0  # timed steps after the warm-up ones
WARMUP_STEPS = 3  # oneDNN builds its kernels in the first steps
VALIDATIONS = 4  # in a planned run
RESERVE_SHARE = 0.05  # of the budget, for start-up, checkpoints and the end
MIN_STEPS = 10  # fewer steps in a budget: too short to mean anything
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


def check_budget(minutes: float, seconds: float = CALIBRATION_SECONDS) -> None:
    """One line, before anything runs, for a budget that the timing of the first steps would
    take (nearly) whole: it must be at least twice `seconds` (the timed steps; the warm-up
    steps come on top). Zero and less: the config's own check."""
    if 0 < minutes * 60.0 < 2 * seconds:
        least = math.ceil(2 * seconds / 6.0) / 10.0  # minutes, rounded up to a tenth
        raise ConfigError(
            f"--minutes {minutes:g} ({minutes * 60:.0f} s) is too short to plan: timing the "
            f"first steps alone takes {WARMUP_STEPS} warm-up steps and about {seconds:.0f} s "
            f"before training starts; give --minutes {least:g} or more, or --steps N")


def fit_to_minutes(config: TrainConfig, dataset, started: float | None = None,
                   seconds: float = CALIBRATION_SECONDS) -> tuple[TrainConfig, float]:
    """`config` with the steps (and the validation and checkpoint periods) that end training
    about ``config.minutes`` after `started` (time.monotonic(); default: now), and the
    measured seconds per step. A budget too short for the timing (check_budget) or, after
    it, for MIN_STEPS steps with their validations is a ConfigError that says what the fixed
    costs took and what budget would do."""
    started = time.monotonic() if started is None else started
    check_budget(config.minutes, seconds)
    per_step = seconds_per_step(config, dataset, seconds)
    budget = config.minutes * 60.0
    spent = time.monotonic() - started
    left = budget * (1 - RESERVE_SHARE) - spent
    validating = config.fold is not None
    one_validation = _validation_seconds(config, dataset, per_step) if validating else 0.0
    steps = int((left - VALIDATIONS * one_validation) / per_step)
    if steps < MIN_STEPS:
        needed = (spent + VALIDATIONS * one_validation + MIN_STEPS * per_step) \
            / (1 - RESERVE_SHARE) / 60.0
        validations = (f", {VALIDATIONS} validations of {one_validation:.1f} s"
                       if validating else "")
        raise ConfigError(
            f"--minutes {config.minutes:g} leaves room for {max(steps, 0)} steps: the start "
            f"and the timing took {spent:.0f} s, a step takes {per_step:.2f} s{validations}; "
            f"give --minutes {math.ceil(needed * 10) / 10:g} or more for {MIN_STEPS} steps, "
            f"or --steps N")
    return with_steps(config, steps), per_step


def with_steps(config: TrainConfig, steps: int) -> TrainConfig:
    """`config` trained `steps` steps, with the validation and checkpoint periods and the
    warm-up a fitted run of that many steps gets (fit_to_minutes); a planned warm-up that
    is cut to a tenth of the steps says so in the plan's reasons (what config.yaml holds is
    what the plan prints)."""
    every = max(1, math.ceil(steps / VALIDATIONS))
    warmup = min(config.warmup_steps, max(0, steps // 10))
    plan = dict(config.plan)
    if warmup != config.warmup_steps and "warmup_steps" in plan:
        plan["warmup_steps"] = (f"a tenth of the {steps} steps (the plan's "
                                f"{config.warmup_steps}, cut to fit)")
    return config.replace(steps=steps, val_every=every, checkpoint_every=every,
                          warmup_steps=warmup, plan=plan)


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
