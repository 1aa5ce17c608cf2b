"""``--minutes``: the step count that ends training on time, from a timing of the first steps.

People think in the time they can wait, not in optimizer steps. A short calibration runs the
engine's own ``train()`` (data sampling, augmentation, the step, its logging) in a throw-away
folder for a few seconds; the steps then fill what is left of the budget, less what the
validations and the last checkpoint will take. The schedule (warm-up, cosine) is laid over
those steps, so the learning rate reaches its end when the time does.

The steps are re-fitted while the run trains: the loop times its own steps and, a few times
(``pace``), sets a new total where the machine turned out faster or slower than in this
timing, so that the run still ends on time with its schedule complete (issue 36: a 10-minute
run timed on a busy machine ended after 5.6 minutes).
"""
from __future__ import annotations

import math
import tempfile
import time

from ...errors import ConfigError
from ..config import TrainConfig
from ..events import Progress, Started
from ..plan import COMPILE_TIMED
from .loop import train
from .pace import (
    FIT_SHARE,
    RESERVE_SHARE,
    UNTIMED_STEPS,
    VALIDATIONS,
    threshold_fit_seconds,
    validation_seconds,
    with_steps,
)

CALIBRATION_SECONDS = 12.0  # timed steps after the warm-up ones
WARMUP_STEPS = UNTIMED_STEPS  # oneDNN builds its kernels in the first steps
MIN_STEPS = 10  # fewer steps in a budget: too short to mean anything
COMPILE_GAIN = 1.05  # torch.compile where it trains at least this many times the eager steps
COMPILE_LEAST_SECONDS = 120.0  # left after the eager timing, to time a compiled step at all


def seconds_per_step(config: TrainConfig, dataset, seconds: float = CALIBRATION_SECONDS,
                     warmup: int = WARMUP_STEPS) -> float:
    """Seconds per optimizer step of `config` on `dataset`, measured on ``train()`` itself
    in a throw-away run folder: `warmup` steps, then about `seconds` of steps (3 at least)."""
    return _time_train(config, dataset, seconds, warmup)[0]


def time_compiled(config: TrainConfig, dataset, seconds: float = CALIBRATION_SECONDS,
                  warmup: int = WARMUP_STEPS) -> tuple[float, float]:
    """(seconds per step, seconds of compiling) of `config` with torch.compile, measured as
    seconds_per_step does; the compiling is what the warm-up steps took beyond as many
    compiled steps (the first steps trace and compile the network)."""
    per_step, warming = _time_train(config.replace(compile=True), dataset, seconds, warmup)
    return per_step, max(0.0, warming - warmup * per_step)


def _time_train(config, dataset, seconds, warmup) -> tuple[float, float]:
    """(seconds per timed step, seconds from the run's start to the end of the warm-up)."""
    probe = config.replace(steps=1_000_000, val_every=1_000_000, checkpoint_every=1_000_000,
                           minutes=None, fold=None)
    with tempfile.TemporaryDirectory(prefix="napari-unet-calibration-") as folder:
        events = train(probe, dataset, run_dir=folder)
        begun, start, timed = time.perf_counter(), None, 0
        try:
            for event in events:
                if isinstance(event, Started):
                    begun = time.perf_counter()
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
    return (time.perf_counter() - start) / timed, start - begun


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
    validating = config.fold is not None
    one_validation = validation_seconds(config, dataset, per_step) if validating else 0.0
    config, per_step, compiling = _plan_compile(config, dataset, started, per_step,
                                                VALIDATIONS * one_validation, seconds)
    spent = time.monotonic() - started
    left = config.minutes * 60.0 * (1 - RESERVE_SHARE) - spent - compiling \
        - threshold_fit_seconds(config, dataset, per_step)
    steps = int((left - VALIDATIONS * one_validation) / per_step)
    if steps < MIN_STEPS:
        fixed = spent + compiling + VALIDATIONS * one_validation + MIN_STEPS * per_step
        fitting = threshold_fit_seconds(config, dataset, per_step, capped=False)
        # the fit takes its whole estimate, or FIT_SHARE of a budget: whichever asks less
        needed = min((fixed + fitting) / (1 - RESERVE_SHARE),
                     fixed / (1 - RESERVE_SHARE - (FIT_SHARE if fitting else 0.0))) / 60.0
        validations = (f", {VALIDATIONS} validations of {one_validation:.1f} s"
                       if validating else "")
        raise ConfigError(
            f"--minutes {config.minutes:g} leaves room for {max(steps, 0)} steps: the start "
            f"and the timing took {spent:.0f} s, a step takes {per_step:.2f} s{validations}; "
            f"give --minutes {math.ceil(needed * 10) / 10:g} or more for {MIN_STEPS} steps, "
            f"or --steps N")
    return with_steps(config, steps), per_step


def _plan_compile(config, dataset, started, per_step, validations, seconds):
    """(config, seconds per step, seconds of compiling) once the plan's compile rule is
    applied: where the plan left torch.compile to the timing (a CUDA GPU, the user gave no
    --compile), a compiled step is timed too and compiling is on where the steps it buys
    in the time left outnumber those its compile time costs (compile_pays)."""
    if config.plan.get("compile") != COMPILE_TIMED or config.compile:
        return config, per_step, 0.0

    def left() -> float:  # for training steps, from now on
        return config.minutes * 60.0 * (1 - RESERVE_SHARE) - (time.monotonic() - started) \
            - validations
    if left() < COMPILE_LEAST_SECONDS:
        reason = (f"off: {max(left(), 0):.0f} s left after the timing, too short to time a "
                  f"compiled step and win its compile time back (needs "
                  f"{COMPILE_LEAST_SECONDS:.0f} s)")
        return _with_compile(config, False, reason), per_step, 0.0
    compiled, compiling = time_compiled(config, dataset, seconds)
    pays, reason = compile_pays(left(), per_step, compiled, compiling)
    if not pays:
        return _with_compile(config, False, reason), per_step, 0.0
    return _with_compile(config, True, reason), compiled, compiling


def compile_pays(left: float, eager: float, compiled: float, compiling: float):
    """(whether to compile, why): a compiled run of `left` seconds trains (left - compiling)
    / compiled steps, an eager one left / eager; compiling pays where it trains
    COMPILE_GAIN times the eager steps or more."""
    eager_steps = max(0.0, left) / eager
    compiled_steps = max(0.0, left - compiling) / compiled
    pays = compiled_steps >= COMPILE_GAIN * eager_steps
    return pays, (f"{'on' if pays else 'off'}: timed here, a compiled step takes "
                  f"{1e3 * compiled:.3g} ms against {1e3 * eager:.3g} ms eager and compiling "
                  f"took {compiling:.0f} s: the {max(0.0, left):.0f} s left train "
                  f"{compiled_steps:,.0f} steps compiled against {eager_steps:,.0f} eager")


def _with_compile(config, compile_: bool, reason: str):
    return config.replace(compile=compile_, plan={**config.plan, "compile": reason})
