"""The training loop: one readable generator.

``train(config, images, masks, run_dir=...)`` yields events (Started, Progress, Validation,
CheckpointSaved, Finished). Closing the generator (or Ctrl-C inside it) saves a checkpoint of
the last completed step and stops; a SIGINT during a step or a checkpoint write takes effect
when it is over (distributed.CancelRequest), so that checkpoint always holds whole steps. Batches, augmentation and dropout are pure functions of
``(seed, step)``, so a resumed run reproduces an uninterrupted one, and a DDP run with the same
global batch sees a single-process run's batches bit for bit (its sums differ in the last bits).

Batches are cut one step ahead in a background thread (on a CPU with images in memory, in
the step itself) and normalised and augmented on the device (engine.pipeline). Losses stay on the device and are read every `log_every` steps and
before validation, checkpoints and the end (on a CPU, where a read costs nothing, after every
step), so a GPU never waits for the host; a non-finite loss stops the run at the next read,
before any checkpoint of a step after it is written.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from ...choices import IGNORE_CLASS, PER_IMAGE_NORMALIZATIONS
from ...errors import DataError, OutOfMemory
from ...masks import distinct_values, value_listing
from ...runs import BEST, LAST, RunFolder
from ..checkpoint import read_checkpoint, save_checkpoint, write_state
from ..config import TrainConfig
from ..data.dataset import split_folds
from ..data.normalization import NormStats, compute_norm_stats
from ..data.patches import PatchSampler
from ..events import CheckpointSaved, Finished, Message, Progress, Started, Validation
from ..export.loader import load_checkpoint
from ..labels import LabelHead
from ..runtime import configure_backends, memory_format, resolve_amp, resolve_device
from . import distributed
from .losses import build_loss
from .pace import Pace, fitted_end, threshold_fit_seconds, validation_seconds, with_total
from .pipeline import DeviceBatches
from .setup import (
    as_dataset,
    as_luminance,
    check_data_fits_model,
    check_objects_start,
    init_weights,
    lr_factor,
    make_augmenter,
    make_ema,
    make_model,
    make_optimizer,
    normalized_copy,
    window_sizes,
)
from .steps import LossReader, ThroughputWindow, loss_read_interval, train_step
from .threshold import fit_threshold, fittable
from .validation import validate


# -- the loop ------------------------------------------------------------------------------------
def train(config: TrainConfig, images=None, masks=None, *, run_dir, resume: bool = False,
          init_from=None, val_images=None, val_masks=None, deadline: float | None = None):
    """Train a model; a generator of events. See the module docstring. `deadline`
    (time.monotonic(); one process only): a run still going then ends there, as if its
    steps were done, with a message (``--minutes`` on a machine that slowed down). With
    ``config.minutes``, `deadline` is the time_limit of steps fitted to them: the steps are
    then re-fitted to the run's own pace a few times (``pace``), each change with a
    message, so that the run ends when its steps were fitted to end."""
    start = init_from if init_from is not None else config.init_from
    check_objects_start(config, start, resume)
    run = _Run(config, images, masks, val_images, val_masks, run_dir, resume)
    run.deadline = None if run.dist.enabled else deadline
    run.pace = None
    if run.deadline is not None and config.minutes is not None:
        timed = validation_seconds(config, run.dataset, 1.0) if len(run.val_set.images) else 0.0
        run.pace = Pace(fitted_end(config, run.deadline), config.minutes, run.start_step, timed,
                        after=threshold_fit_seconds(config, run.dataset, 1.0, capped=False))
    run.build_training(resume, start)
    yield run.started()
    if run.amp_note:
        yield Message("warning", run.amp_note)
    if run.head_note:
        yield Message("info", run.head_note)
    for note in run.notes:  # what the masks hold that was probably not meant
        yield Message("warning", note)
    if run.dataset.num_classes < 2 or not any(_has_objects(m) for m in run.train_set.masks):
        yield Message("warning", "every training mask is background only: the model will learn "
                                 "to predict nothing; paint some foreground")
    if run.train_set.sparse:
        yield Message("info", f"{_labelled_share(run.train_set.masks)} of the training pixels are "
                              "labelled: the loss and the windows use those, the rest is ignored")
    run.cancel.install()
    run.batches = DeviceBatches(run.sampler, range(run.start_step, run.config.steps), run.device)
    try:
        yield from _train_steps(run)
    except (GeneratorExit, KeyboardInterrupt):
        if run.losses.pending_are_finite():  # a cancelled run stays resumable, if it is sound
            run.save(LAST, run.done)
        run.dist.cleanup()
        raise
    except BaseException:
        run.dist.cleanup()
        raise
    finally:
        run.batches.close()
        run.cancel.restore()
    yield from _finish(run)


def _has_objects(mask) -> bool:
    mask = np.asarray(mask)
    return bool(np.any((mask > 0) & (mask != IGNORE_CLASS)))


def _empty_regions(head: LabelHead, masks) -> list[str]:
    """A warning for each region of a region run that no mask holds a value of (its output
    would learn nothing but background)."""
    if not head.regions:
        return []
    found = np.unique(np.concatenate([distinct_values(np.asarray(m)).ravel() for m in masks]))
    found = found[found != IGNORE_CLASS]
    return [f"region {name} (mask values {', '.join(map(str, region))}) is in no mask "
            f"(values found: {value_listing(found)}): its output learns nothing; check the "
            "masks' values or the regions"
            for name, region in zip(head.names, head.regions) if not set(region) & set(
                found.tolist())]


def _labelled(mask) -> bool:
    return bool(np.any(np.asarray(mask) != IGNORE_CLASS))


def _labelled_share(masks) -> str:
    """The share of labelled (not IGNORE_CLASS) pixels of the masks, in words."""
    total = sum(int(np.asarray(m).size) for m in masks)
    unknown = sum(int(np.count_nonzero(np.asarray(m) == IGNORE_CLASS)) for m in masks)
    share = 100 * (total - unknown) / max(total, 1)
    return f"{share:.0f}%" if share >= 9.5 else f"{share:.2g}%"


class _Run:
    """What one training run builds once: data, model, optimisation, batches, run folder; and
    where it stands (``done``: completed optimizer steps, ``best_dice``)."""

    def __init__(self, config, images, masks, val_images, val_masks, run_dir, resume,
                 live=False):
        config.validate()
        self.live = live  # a live run (training.live): masks change, nothing painted is fine
        self.dist = distributed.context()
        self.device = resolve_device(config.device, self.dist.local_rank)
        # auto -> what this device computes natively; config.yaml records what ran
        amp, self.amp_note = resolve_amp(self.device, config.amp)
        self.config = config = replace(config, amp=amp)
        configure_backends(self.device, config.tf32)
        self.dist.setup(self.device)
        self.dataset = self._colour(as_dataset(images, masks, config))
        check_data_fits_model(self.dataset, config)
        if val_images is not None:
            self.train_set = self.dataset
            self.val_set = self._colour(as_dataset(val_images, val_masks, config))
        else:
            train_idx, val_idx = split_folds(len(self.dataset.images), config.fold,
                                             config.folds, config.split_seed)
            self.train_set = self.dataset.subset(train_idx)
            self.val_set = self.dataset.subset(val_idx)
        if not live and not any(_labelled(mask) for mask in self.train_set.masks):
            raise DataError("no training mask holds a labelled pixel (all unlabelled): "
                            "nothing to learn from; label some pixels of the training images "
                            "(or choose another --fold)")
        num_classes = max(2, self.dataset.num_classes)
        self.head = LabelHead.from_config(config, num_classes)  # what the outputs mean, saved
        self.notes = list(self.dataset.notes) + _empty_regions(self.head, self.dataset.masks)
        torch.manual_seed(config.seed)
        self.model = make_model(config, self.dataset.in_channels, num_classes)
        self.input_size, self.output_size = window_sizes(self.model, config.patch_size)
        self.norm = compute_norm_stats(self.train_set.images, config.normalization)
        self.data_info = {"num_classes": num_classes, "in_channels": self.dataset.in_channels,
                          "spatial_dims": config.spatial_dims,
                          "input_size": list(self.input_size),
                          "output_size": list(self.output_size),
                          "foreground_value": config.foreground_value,
                          "labels": self.head.to_dict()}
        if config.colour == "luminance":  # prediction reads colour images so too
            self.data_info["colour"] = "luminance"
        self.folder = RunFolder(run_dir, writer=self.dist.is_main)
        self.folder.prepare(config, resume)
        self.start_step, self.best_dice = 0, float("-inf")
        self.head_note = None

    def _colour(self, dataset):
        return as_luminance(dataset) if self.config.colour == "luminance" else dataset

    def build_training(self, resume, init_from):
        """Optimizer, schedule, scaler, EMA (restored on resume), the loss and the batches."""
        config, model, device = self.config, self.model, self.device
        self.mem_format = memory_format(config.spatial_dims, config.channels_last)
        model.to(device=device, memory_format=self.mem_format)
        self.optimizer = make_optimizer(config, model.parameters())
        # the run's config, not this one: a re-fit of the steps moves the schedule's end
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda s: lr_factor(self.config, s))
        # disabled unless fp16: one path for every precision, as nanoGPT
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
        self.ema = make_ema(model, config.ema)
        if resume and (self.folder.checkpoints / LAST).exists():
            self.start_step, self.best_dice, self.norm = _restore(
                self.folder.checkpoints / LAST, model, self.optimizer, self.scheduler,
                self.scaler, self.ema)
        elif init_from is not None:
            self.head_note = init_weights(init_from, model)
        self.net = self.dist.wrap(model, device)
        if config.compile:
            self.net = torch.compile(self.net)
        self.loss_fn = build_loss(config.loss, self.head.outputs, self.head.regions,
                                  masked=self.train_set.sparse or self.live,
                                  objects_area=config.instances == "foreground")
        self.augment = make_augmenter(config)
        self._build_sampler()
        self.done = self.start_step  # completed optimizer steps
        self.losses = LossReader(loss_read_interval(device, config),
                                 stop_on_nonfinite=not self.scaler.is_enabled())
        self.cancel = distributed.CancelRequest(agreed=self.dist.enabled)

    def _build_sampler(self):
        config, dist = self.config, self.dist
        windows, self.window_norm = self.train_set, self.norm
        if config.normalization in PER_IMAGE_NORMALIZATIONS or config.resample > 1:
            windows = normalized_copy(self.train_set, self.norm, config)
            self.window_norm = compute_norm_stats(windows.images, "none")  # normalised already
        self.sampler = PatchSampler(windows.images, windows.masks, self.input_size,
                                    self.output_size, config.batch_size, self.window_norm,
                                    seed=config.seed,
                                    foreground_oversample=config.foreground_oversample,
                                    rank=dist.rank, world_size=dist.world_size,
                                    sparse=self.train_set.sparse or self.live)

    def started(self) -> Started:
        return Started(total_steps=self.config.steps, start_step=self.start_step,
                       run_dir=str(self.folder.path), device=str(self.device),
                       world_size=self.dist.world_size,
                       global_batch_size=self.config.batch_size * self.dist.world_size,
                       train_samples=len(self.train_set.images),
                       val_samples=len(self.val_set.images))

    def save(self, name, step):
        """Write checkpoints/NAME (rank 0 only); a SIGINT meanwhile waits for the write."""
        if not self.dist.is_main:
            return None
        with self.cancel.deferred():
            return save_checkpoint(self.folder.checkpoints / name, model=self.model,
                                   config=self.config, norm_stats=self.norm.to_dict(), step=step,
                                   best_dice=self.best_dice, data_info=self.data_info,
                                   optimizer=self.optimizer, scheduler=self.scheduler,
                                   scaler=self.scaler, ema=self.ema)

    def retotal(self, steps: int):
        """Train `steps` steps in all from now on (a re-fit to the run's pace): the schedule,
        the validation and checkpoint periods, the batches and config.yaml (what a resumed run
        reads) follow; a SIGINT meanwhile waits for its end, as for a step."""
        with self.cancel.deferred():
            self.config = with_total(self.config, steps)
            self.folder.write_config(self.config)
            self.batches.close()
            self.batches = DeviceBatches(self.sampler, range(self.done, steps), self.device)

    def step(self, step):
        """One optimizer step, EMA and schedule included; a SIGINT meanwhile waits for its end
        (one process) so that a cancelled run saves whole steps."""
        config = self.config
        with self.cancel.deferred():
            try:
                loss = train_step(self.net, self.model, self.batches, self.augment,
                                  self.loss_fn, self.optimizer, self.scaler, self.window_norm,
                                  config, self.device, self.mem_format, step, self.dist)
            except torch.OutOfMemoryError:
                raise OutOfMemory(
                    f"out of {self.device.type.upper()} memory at batch size "
                    f"{config.batch_size} and patch {'x'.join(map(str, config.patch_size))}: "
                    f"lower --batch-size or --patch-size, or use --amp bf16") from None
            self.batches.start_next()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.scheduler.step()
            self.done = step + 1
            self.losses.add(self.done, loss)


def _train_steps(run):
    """The steps from the start (or the resumed) step to the last: Progress after each, and
    Validation and CheckpointSaved when due; a run fitted to minutes re-fits its last step
    (run.pace). Cancel: KeyboardInterrupt, between steps."""
    dist, losses = run.dist, run.losses
    window = ThroughputWindow()
    started = time.monotonic()
    while run.done < run.config.steps:
        if run.cancel.stop_now:  # noted during the last checkpoint write
            raise KeyboardInterrupt
        run.step(run.done)
        config, done = run.config, run.done
        validating = len(run.val_set.images) and (done % config.val_every == 0
                                                 or done == config.steps)
        saving = done % config.checkpoint_every == 0 and done != config.steps
        stopping = False
        if validating or saving or losses.due(done, run.start_step, config.steps):
            stopping = losses.read(dist, run.cancel.requested)
        img_s = window.add(config.batch_size * dist.world_size)
        lr = run.optimizer.param_groups[0]["lr"]
        yield Progress(step=done, total=config.steps, loss=losses.last, lr=lr, img_s=img_s)
        if done % config.log_every == 0 or done == config.steps:
            run.folder.log_progress(done, losses.last, lr, img_s)
        if stopping or run.cancel.stop_now:  # under DDP every rank stops here, after one step
            raise KeyboardInterrupt
        paused = time.monotonic()
        if validating:
            yield from _validate_and_save(run)
            window.reset()
        if saving:
            path = run.save(LAST, done)
            if path:
                yield CheckpointSaved(str(path), done)
        now = time.monotonic()
        refit = None if run.pace is None else run.pace.refit(
            done, config.steps, now, now - paused if validating or saving else 0.0)
        if refit is not None:
            run.retotal(refit[0])
            config = run.config
            yield Message("info", refit[1])
        if run.deadline is not None and done < config.steps \
                and time.monotonic() > run.deadline:
            if losses.pending and losses.read(dist, run.cancel.requested):
                raise KeyboardInterrupt
            took = time.monotonic() - started
            yield Message("warning", f"the time is up: training ends at step {done} of "
                                     f"{config.steps} (the {done - run.start_step} steps took "
                                     f"{took:.0f} s here, {took / (done - run.start_step):.2f} s "
                                     f"a step with the validations and checkpoint writes)")
            return


def _validate_and_save(run):
    """Validation (of the EMA weights, if any) at step ``run.done``; best.pt when it is best."""
    model = run.model if run.ema is None else run.ema.module
    result = validate(model, run.val_set, run.norm, run.config, run.input_size, run.device,
                      run.dist, run.head)
    is_best = result["dice"] > run.best_dice
    run.best_dice = max(run.best_dice, result["dice"])
    run.folder.log_validation(run.done, result["dice"], result["dice_per_class"])
    yield Validation(step=run.done, dice=result["dice"],
                     dice_per_class=tuple(result["dice_per_class"]), best=is_best)
    if is_best and run.dist.is_main:
        yield CheckpointSaved(str(run.save(BEST, run.done)), run.done)


def _finish(run):
    """The last checkpoint; the final model is the best one, if there was a validation; its
    threshold fitted where the config asks (training.threshold). Ends with Finished."""
    last = run.save(LAST, run.done)
    if not len(run.val_set.images):
        run.best_dice = float("nan")
    best_path = run.folder.checkpoints / BEST
    final = best_path if best_path.exists() else last
    if run.dist.is_main and fittable(run.config, run.head, run.train_set.sparse or run.live):
        note = _fit_threshold(run, final)
        if note:
            yield Message("info", note)
    run.dist.cleanup(together=True)
    yield Finished(best_dice=run.best_dice, path=str(final), step=run.done)


def _fit_threshold(run, final) -> str | None:
    """Fit the final model's threshold on the validation part (else the training images),
    write it into its checkpoint (and config.yaml); what was done, in a line, or None."""
    images = run.val_set if len(run.val_set.images) else run.train_set
    where = "validation" if images is run.val_set else "training"
    checkpoint = load_checkpoint(final)
    fitted = fit_threshold(checkpoint, images, run.config, run.device, run.config.threshold,
                           until=run.deadline)
    if fitted is None:
        return None
    threshold, dice, before, count = fitted
    if threshold == run.config.threshold:
        return (f"threshold {threshold:g} kept: no other gives a better Dice on {count} "
                f"{where} image(s) ({before:.3f})")
    reason = (f"fitted after training on {count} {where} image(s): Dice {dice:.3f} there "
              f"against {before:.3f} at {run.config.threshold:g}")
    state = checkpoint.state  # the file as read: written back with the threshold
    state["config"] = {**state["config"], "threshold": threshold,
                       "plan": {**state["config"].get("plan", {}), "threshold": reason}}
    write_state(final, state)
    run.config = replace(run.config, threshold=threshold,
                         plan={**run.config.plan, "threshold": reason})
    run.folder.write_config(run.config)
    return f"threshold = {threshold:g}: {reason}"


def _restore(path, model, optimizer, scheduler, scaler, ema=None):
    state = read_checkpoint(path)
    model.load_state_dict(state["model_state"])
    if ema is not None and "ema_state" in state:
        ema.module.load_state_dict(state["ema_state"])
        ema.n_averaged.fill_(state["ema_averaged"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])  # does nothing when the scaler is disabled
    return state["step"], state["best_dice"], NormStats.from_dict(state["norm_stats"])
