"""A run fitted to minutes: its steps, its time limit, and the re-fit of its steps to its pace.

``calibration`` fits the steps once, from a timing of the first steps; the machine may then
run faster than it did then (the steps end early: fewer steps than the minutes allowed) or
slower (the time limit cuts the run before its schedule ends). So the loop re-fits the total
a few times while it trains, from the pace of its own steps: at about REFIT_AT of the steps,
each fit at least REFIT_LEAST_STEPS timed steps after the one before, and none after the
last of REFIT_AT. The pace is the seconds per optimizer step since the last fit, with the
validations and checkpoint writes left out; what the validations still due will take (as
measured in this run, or before the first one as ``validation_seconds`` estimates) is kept
aside. A new total is taken where it is larger by more than REFIT_CHANGE (the schedule moves
with each fit: not for a few steps), or smaller by more than REFIT_SHRINK (a run that goes on
past its end is cut by the time limit before its schedule ends); it never falls below the
steps done plus LEAST_LEFT. The warm-up stays as planned; the schedule, the validation and
checkpoint periods (``with_total``) follow the new total.

Imported by the loop and by ``calibration`` (which imports the loop): the rules both share
live here.
"""
from __future__ import annotations

import math

import numpy as np

from ..config import TrainConfig
from .threshold import FIT_PIXELS

VALIDATIONS = 4  # in a planned run
RESERVE_SHARE = 0.05  # of the budget, for start-up, checkpoints and the end
FIT_SHARE = 0.1  # of a --minutes budget, the most kept for fitting the threshold
FORWARD_SHARE = 0.35  # a forward pass (validation) against a training step, per pixel
REFIT_AT = (0.10, 0.25, 0.50, 0.75)  # shares of the steps where they are re-fitted
REFIT_LEAST_STEPS = 20  # timed steps behind a fit (fewer: too noisy a pace)
REFIT_CHANGE = 0.10  # more steps only where the new total is larger by more than this share
REFIT_SHRINK = 0.02  # fewer where smaller by more: less than the time limit's slack (2.5 %)
UNTIMED_STEPS = 3  # a run's first steps, slow while kernels are built: not in the pace
LEAST_LEFT = 5  # steps a re-fit leaves at least after those done


def with_total(config: TrainConfig, steps: int) -> TrainConfig:
    """`config` trained `steps` steps, with the validation and checkpoint periods of a
    fitted run of that many steps (VALIDATIONS validations); the warm-up as it is."""
    every = max(1, math.ceil(steps / VALIDATIONS))
    return config.replace(steps=steps, val_every=every, checkpoint_every=every)


def with_steps(config: TrainConfig, steps: int) -> TrainConfig:
    """with_total, and the warm-up a fitted run of `steps` steps gets (fit_to_minutes); a
    planned warm-up that is cut to a tenth of the steps says so in the plan's reasons (what
    config.yaml holds is what the plan prints)."""
    warmup = min(config.warmup_steps, max(0, steps // 10))
    plan = dict(config.plan)
    if warmup != config.warmup_steps and "warmup_steps" in plan:
        plan["warmup_steps"] = (f"a tenth of the {steps} steps (the plan's "
                                f"{config.warmup_steps}, cut to fit)")
    return with_total(config, steps).replace(warmup_steps=warmup, plan=plan)


def time_limit(config: TrainConfig, started: float) -> float | None:
    """When a run fitted to ``config.minutes`` from `started` must stop (time.monotonic()),
    whatever its steps: the trainer's guard for a machine that slows down after the timing.
    Half the reserve is left for the last checkpoint. None without minutes."""
    if config.minutes is None:
        return None
    return started + config.minutes * 60.0 * (1 - RESERVE_SHARE / 2)


def fitted_end(config: TrainConfig, limit: float) -> float:
    """When the steps of a run fitted to ``config.minutes`` are to end, from its time_limit
    (the trainer gets that guard only): the whole reserve before the minutes are up."""
    return limit - config.minutes * 60.0 * RESERVE_SHARE / 2


def _forward_seconds(config: TrainConfig, pixels: float, per_step: float) -> float:
    """`pixels` of whole images through forward passes (tiles overlap by about half), each
    pixel FORWARD_SHARE of a training step's per-pixel cost."""
    step_pixels = config.batch_size * float(np.prod(config.patch_size))
    return per_step * FORWARD_SHARE * 1.5 * pixels / step_pixels


def _pixels(dataset) -> float:
    return sum(float(np.prod(mask.shape)) for mask in dataset.masks)


def validation_seconds(config: TrainConfig, dataset, per_step: float) -> float:
    """What one validation costs: the validation fold's pixels through forward passes."""
    return _forward_seconds(config, _pixels(dataset) / max(2, config.folds), per_step)


def threshold_fit_seconds(config: TrainConfig, dataset, per_step: float,
                          capped: bool = True) -> float:
    """What fitting the threshold after the last step costs (config.fit_threshold): the
    pixels it predicts (the validation fold's, else all, at most threshold.FIT_PIXELS) as
    validation_seconds counts them, at most FIT_SHARE of a --minutes budget where `capped`
    (the fit then stops at the run's time limit, with the images it has); 0 unasked."""
    if not config.fit_threshold:
        return 0.0
    pixels = _pixels(dataset)
    if config.fold is not None:
        pixels /= max(2, config.folds)
    seconds = _forward_seconds(config, min(pixels, FIT_PIXELS), per_step)
    if capped and config.minutes is not None:
        seconds = min(seconds, FIT_SHARE * config.minutes * 60.0)
    return seconds


def pauses_left(done: int, steps: int) -> int:
    """The validations (each with its checkpoint writes) after step `done` of a fitted run of
    `steps` steps: one each with_total period, and one at the end."""
    every = max(1, math.ceil(steps / VALIDATIONS))
    return sum(1 for step in range(every, steps, every) if step > done) + (done < steps)


def refit_steps(done: int, steps: int, per_step: float, left: float, pause: float) -> int:
    """The steps in all that end a run `left` seconds from now, after `done` steps, at
    `per_step` seconds a step and `pause` seconds a validation still due; `steps` (the
    current total) where that is at most REFIT_CHANGE larger or REFIT_SHRINK smaller. Never
    below done + LEAST_LEFT."""
    total = steps
    for _ in range(2):  # the validations still due depend on the total
        total = done + int((left - pauses_left(done, total) * pause) / per_step)
    total = max(total, done + LEAST_LEFT)
    keep = -REFIT_SHRINK * steps <= total - steps <= REFIT_CHANGE * steps
    return steps if keep else total


def next_fit(mark: int, steps: int) -> int | None:
    """The step of the re-fit after one at step `mark` (or, at the start, after the untimed
    steps): the next of REFIT_AT's shares of `steps`, REFIT_LEAST_STEPS after `mark` at the
    earliest; None where that comes after the last share."""
    for share in REFIT_AT:
        if share * steps > mark:
            at = max(math.ceil(share * steps), mark + REFIT_LEAST_STEPS)
            return at if at <= REFIT_AT[-1] * steps else None
    return None


class Pace:
    """The clock of a run fitted to minutes, read after each step by the loop. ``refit``
    says when the steps should change, and why."""

    def __init__(self, ends: float, minutes: float, start_step: int, validation_factor: float,
                 after: float = 0.0):
        self.ends, self.minutes = ends, minutes
        self.validation_factor = validation_factor  # one validation / a step, estimated
        self.after = after  # what follows the last step (the threshold's fit) / a step,
        # at most FIT_SHARE of the minutes
        self.mark = start_step + UNTIMED_STEPS  # the step the pace is timed from
        self.since = None  # the clock at `mark`, moved on by the pauses since
        self.pauses: list[float] = []  # seconds of each validation and checkpoint write

    def refit(self, done: int, steps: int, now: float, paused: float = 0.0):
        """After step `done` of `steps`, at `now` (time.monotonic()), `paused` seconds of it
        spent validating and writing checkpoints: (new total, a note saying why) where a
        re-fit is due and changes the steps, else None."""
        if paused:
            self.pauses.append(paused)
            if self.since is not None:
                self.since += paused
        if done == self.mark:
            self.since = now
        due = next_fit(self.mark, steps)
        if self.since is None or due is None or done < due:
            return None
        per_step = (now - self.since) / (done - self.mark)
        pause = float(np.mean(self.pauses)) if self.pauses else self.validation_factor * per_step
        after = min(self.after * per_step, FIT_SHARE * self.minutes * 60.0)
        total = refit_steps(done, steps, per_step, self.ends - now - after, pause)
        timed, self.mark, self.since = done - self.mark, done, now
        if total == steps:
            return None
        minutes = f"{self.minutes:g} minute{'' if self.minutes == 1 else 's'}"
        return total, (f"the steps run {'faster' if total > steps else 'slower'} than "
                       f"planned ({per_step:.3g} s a step over the last {timed} steps): {total} "
                       f"steps instead of {steps} to end in the {minutes}")
