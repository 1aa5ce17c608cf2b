"""The training loop: one readable generator.

``train(config, images, masks, run_dir=...)`` yields events (Started, Progress, Validation,
CheckpointSaved, Finished). Closing the generator (or Ctrl-C inside it) saves a checkpoint of
the last completed step and stops. Batches, augmentation and dropout are pure functions of
``(seed, step)``, so a resumed run - or a DDP run with the same global batch - reproduces an
uninterrupted single-process run.

Batches are cut one step ahead in a background thread and normalised and augmented on the
device (engine.pipeline). Losses stay on the device and are read every `log_every` steps and
before validation, checkpoints and the end (on a CPU, where a read costs nothing, after every
step), so a GPU never waits for the host; a non-finite loss stops the run at the next read,
before any checkpoint of a step after it is written.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..errors import ConfigError, DataError, NapariUnetError, OutOfMemory, TrainingDiverged
from ..models import build_model
from ..runs import BEST, LAST, RunFolder
from . import distributed
from .augment import Augmenter
from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import (
    Dataset,
    NormStats,
    PatchSampler,
    as_channel_first,
    compute_norm_stats,
    masks_to_classes,
    normalize,
    split_folds,
    stats_for_image,
)
from .events import CheckpointSaved, Finished, Message, Progress, Started, Validation
from .losses import build_loss
from .pipeline import DeviceBatches, prepare
from .regions import downsample_image, downsample_labels
from .runtime import autocast, configure_backends, memory_format, resolve_device
from .validation import validate

SEED_STRIDE = 1_000_003  # step seeds: seed * stride + step, distinct for every (seed, step)


# -- data --------------------------------------------------------------------------------------
def as_dataset(images, masks, config: TrainConfig) -> Dataset:
    """A Dataset from a Dataset, or from lists/stacks of raw arrays and masks."""
    if isinstance(images, Dataset):
        return images
    if masks is None:
        raise DataError("no masks given: paint labels for the image or pass --masks")
    images, masks = _as_sample_list(images, config.spatial_dims), list(masks)
    if len(images) != len(masks) and len(masks) == 1 and len(images) > 1:
        raise DataError(f"{len(images)} images but {len(masks)} mask: give one mask per image")
    if config.spatial_dims == 2 and len(masks) == 1 and np.ndim(masks[0]) == 3:
        masks = list(masks[0])
    if len(images) != len(masks):
        raise DataError(f"{len(images)} images but {len(masks)} masks: give one mask per image")
    samples, classes = [], []
    for i, (image, mask) in enumerate(zip(images, masks)):
        image = as_channel_first(np.asarray(image) if not hasattr(image, "shape") else image,
                                 config.spatial_dims)
        mask = masks_to_classes(np.asarray(mask), config.foreground_value)
        if tuple(image.shape[1:]) != tuple(mask.shape):
            raise DataError(f"image {i} has shape {tuple(image.shape[1:])} but its mask "
                            f"{tuple(mask.shape)}: image and mask must cover the same pixels")
        samples.append(image)
        classes.append(mask)
    return Dataset(images=samples, masks=classes, names=[f"sample{i}" for i in range(len(samples))],
                   spatial_dims=config.spatial_dims)


def _as_sample_list(images, spatial_dims):
    """A list of per-sample arrays; a 2D model sees each page of a (Z,Y,X) stack as a sample."""
    if isinstance(images, (list, tuple)):
        if spatial_dims == 2 and len(images) == 1 and np.ndim(images[0]) == 3 \
                and images[0].shape[-1] not in (3, 4):
            return list(images[0])
        return list(images)
    if spatial_dims == 2 and images.ndim == 3 and images.shape[-1] not in (3, 4):
        return list(images)
    if spatial_dims == 3 and images.ndim == 5:
        return list(images)
    return [images]


def check_data_fits_model(dataset: Dataset, config: TrainConfig):
    if dataset.spatial_dims != config.spatial_dims:
        raise DataError(
            f"the data is {dataset.spatial_dims}D but the {config.model} model is "
            f"{config.spatial_dims}D: use the "
            f"{'volume3d' if dataset.spatial_dims == 3 else 'industrial or isbi2012'} preset")
    if len(dataset.images) == 0:
        raise DataError("the data set is empty: give at least one image with its mask")


def normalized_copy(dataset: Dataset, norm, config: TrainConfig) -> Dataset:
    """The training samples normalised (zscore_case: each with its own statistics) and, with
    resample > 1, averaged down, as float32 arrays in memory, with their masks at the same
    resolution (region-aware, engine.regions). The windows are then cut from these."""
    images, masks = [], []
    for image, mask in zip(dataset.images, dataset.masks):
        images.append(downsample_image(normalize(image, stats_for_image(image, norm)),
                                       config.resample))
        masks.append(downsample_labels(mask, config.resample, config.regions))
    return Dataset(images, masks, list(dataset.names), dataset.spatial_dims)


# -- model, optimizer, schedule ------------------------------------------------------------------
def output_channels(config: TrainConfig, num_classes: int) -> int:
    """One sigmoid channel per region (region training), 1 sigmoid channel for binary losses
    that need it, else one channel per class."""
    if config.regions:
        return len(config.regions)
    if config.loss == "adaptive":
        if num_classes > 2:
            raise ConfigError(f"the adaptive loss is binary but the masks have {num_classes} "
                              f"classes: use --loss dice_ce")
        return 1
    return num_classes


def make_model(config: TrainConfig, in_channels: int, num_classes: int) -> torch.nn.Module:
    options = {"in_channels": in_channels, "num_classes": output_channels(config, num_classes)}
    options.update(config.model_options)
    if config.model == "unet3d" and "spatial_dims" not in options and config.spatial_dims == 2:
        options["spatial_dims"] = 2
    model = build_model(config.model, **options)
    model.regions = config.regions
    if model.spatial_dims != config.spatial_dims:
        raise ConfigError(f"the {config.model} model is {model.spatial_dims}D but the run is "
                          f"{config.spatial_dims}D: set spatial_dims or choose another model")
    return model


def window_sizes(model, patch_size) -> tuple[tuple, tuple]:
    """(input, output) window sizes: the smallest valid input whose output covers the patch."""
    candidate = list(patch_size)
    for _ in range(4096):
        size = tuple(model.valid_input_size(candidate))
        out = tuple(model.output_size(size))
        if all(o >= p for o, p in zip(out, patch_size)):
            return size, out
        candidate = [s + 1 if o < p else s for s, o, p in zip(size, out, patch_size)]
    raise ConfigError(f"no valid input size found for patch {patch_size}")


def make_optimizer(config: TrainConfig, params):
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=config.lr, alpha=config.rmsprop_alpha,
                                   momentum=config.momentum, centered=config.rmsprop_centered,
                                   weight_decay=config.weight_decay, eps=1e-8)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=tuple(config.adam_betas),
                                weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.adam_betas),
                                 weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=True,
                           weight_decay=config.weight_decay)


def lr_factor(config: TrainConfig, step: int) -> float:
    """The learning-rate multiplier at `step` (warm-up, then the schedule)."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "exponential_step":
        return config.lr_decay_rate ** (step // config.lr_decay_steps)
    progress = min(1.0, step / max(1, config.steps))
    if config.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if config.lr_schedule == "poly":
        return (1 - progress) ** 0.9
    return 1.0


def make_augmenter(config: TrainConfig) -> Augmenter:
    return Augmenter(config.spatial_dims, hflip=config.hflip, vflip=config.vflip,
                     rot90=tuple(config.rot90), crop_resize=config.crop_resize,
                     brightness=config.brightness, flip_all_axes=config.flip_all_axes,
                     elastic=config.elastic, elastic_magnitude=config.elastic_magnitude,
                     elastic_grid=config.elastic_grid, contrast=config.contrast)


# -- the loop ------------------------------------------------------------------------------------
def train(config: TrainConfig, images=None, masks=None, *, run_dir, resume: bool = False,
          init_from=None, val_images=None, val_masks=None):
    """Train a model; a generator of events. See the module docstring."""
    config.validate()
    dist = distributed.context()
    device = resolve_device(config.device, dist.local_rank)
    configure_backends(device, config.tf32)
    dist.setup(device)

    dataset = as_dataset(images, masks, config)
    check_data_fits_model(dataset, config)
    if val_images is not None:
        train_set, val_set = dataset, as_dataset(val_images, val_masks, config)
    else:
        train_idx, val_idx = split_folds(len(dataset.images), config.fold, config.folds,
                                         config.split_seed)
        train_set, val_set = dataset.subset(train_idx), dataset.subset(val_idx)
    num_classes = max(2, dataset.num_classes)

    torch.manual_seed(config.seed)
    model = make_model(config, dataset.in_channels, num_classes)
    input_size, output_size = window_sizes(model, config.patch_size)
    norm = compute_norm_stats(train_set.images, config.normalization)
    data_info = {"num_classes": num_classes, "in_channels": dataset.in_channels,
                 "spatial_dims": config.spatial_dims, "input_size": list(input_size),
                 "output_size": list(output_size), "foreground_value": config.foreground_value,
                 "regions": config.regions}

    folder = RunFolder(run_dir, writer=dist.is_main)
    folder.prepare(config, resume)
    start_step, best_dice = 0, float("-inf")
    mem_format = memory_format(config.spatial_dims, config.channels_last)
    model.to(device=device, memory_format=mem_format)
    optimizer = make_optimizer(config, model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(config, s))
    # disabled unless fp16: one path for every precision, as nanoGPT
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    ema = make_ema(model, config.ema)
    if resume and (folder.checkpoints / LAST).exists():
        start_step, best_dice, norm = _restore(folder.checkpoints / LAST, model, optimizer,
                                               scheduler, scaler, ema)
    elif init_from is not None:
        _init_weights(init_from, model)

    net = dist.wrap(model, device)
    if config.compile:
        net = torch.compile(net)
    loss_fn = build_loss(config.loss, output_channels(config, num_classes), config.regions)
    augment = make_augmenter(config)
    windows, window_norm = train_set, norm
    if config.normalization == "zscore_case" or config.resample > 1:
        windows = normalized_copy(train_set, norm, config)
        window_norm = compute_norm_stats(windows.images, "none")  # normalised already
    sampler = PatchSampler(windows.images, windows.masks, input_size, output_size,
                           config.batch_size, window_norm, seed=config.seed,
                           foreground_oversample=config.foreground_oversample,
                           rank=dist.rank, world_size=dist.world_size)

    def save(name, step):
        if not dist.is_main:
            return None
        return save_checkpoint(folder.checkpoints / name, model=model, config=config,
                               norm_stats=norm.to_dict(), step=step, best_dice=best_dice,
                               data_info=data_info, optimizer=optimizer, scheduler=scheduler,
                               scaler=scaler, ema=ema)

    yield Started(total_steps=config.steps, start_step=start_step, run_dir=str(folder.path),
                  device=str(device), world_size=dist.world_size,
                  global_batch_size=config.batch_size * dist.world_size,
                  train_samples=len(train_set.images), val_samples=len(val_set.images))
    if dataset.num_classes < 2 or not any(np.any(m) for m in train_set.masks):
        yield Message("warning", "every training mask is background only: the model will learn "
                                 "to predict nothing; paint some foreground")
    done = start_step  # completed optimizer steps
    window = _ThroughputWindow()
    losses = LossReader(loss_read_interval(device, config), stop_on_nonfinite=not scaler.is_enabled())
    cancel = distributed.AgreedStop() if dist.enabled else None
    batches = DeviceBatches(sampler, range(start_step, config.steps), device)
    try:
        if cancel is not None:
            cancel.install()
        for step in range(start_step, config.steps):
            try:
                loss = _train_step(net, model, batches, augment, loss_fn, optimizer, scaler,
                                   window_norm, config, device, mem_format, step, dist)
            except torch.OutOfMemoryError:
                raise OutOfMemory(
                    f"out of {device.type.upper()} memory at batch size {config.batch_size} and "
                    f"patch {'x'.join(map(str, config.patch_size))}: lower --batch-size or "
                    f"--patch-size, or use --amp bf16") from None
            batches.start_next()
            if ema is not None:
                ema.update_parameters(model)
            scheduler.step()
            done = step + 1
            losses.add(done, loss)
            validating = len(val_set.images) and (done % config.val_every == 0
                                                 or done == config.steps)
            saving = done % config.checkpoint_every == 0 and done != config.steps
            stopping = False
            if validating or saving or losses.due(done, start_step, config.steps):
                stopping = losses.read(dist, cancel is not None and cancel.requested)
            img_s = window.add(config.batch_size * dist.world_size)
            lr = optimizer.param_groups[0]["lr"]
            yield Progress(step=done, total=config.steps, loss=losses.last, lr=lr, img_s=img_s)
            if done % config.log_every == 0 or done == config.steps:
                folder.log_progress(done, losses.last, lr, img_s)
            if stopping:  # every rank stops here, after the same step
                raise KeyboardInterrupt
            if validating:
                result = validate(model if ema is None else ema.module, val_set, norm, config,
                                  input_size, device, dist)
                is_best = result["dice"] > best_dice
                best_dice = max(best_dice, result["dice"])
                folder.log_validation(done, result["dice"], result["dice_per_class"])
                yield Validation(step=done, dice=result["dice"],
                                 dice_per_class=tuple(result["dice_per_class"]), best=is_best)
                if is_best and dist.is_main:
                    yield CheckpointSaved(str(save(BEST, done)), done)
                window.reset()
            if saving:
                path = save(LAST, done)
                if path:
                    yield CheckpointSaved(str(path), done)
    except (GeneratorExit, KeyboardInterrupt):
        if losses.pending_are_finite():  # a cancelled run stays resumable, if it is sound
            save(LAST, done)
        dist.cleanup()
        raise
    except BaseException:
        dist.cleanup()
        raise
    finally:
        batches.close()
        if cancel is not None:
            cancel.restore()
    last = save(LAST, done)
    if not len(val_set.images):
        best_dice = float("nan")
    best_path = folder.checkpoints / BEST
    final = best_path if best_path.exists() else last
    dist.cleanup()
    yield Finished(best_dice=best_dice, path=str(final), step=done)


def _train_step(net, model, batches, augment, loss_fn, optimizer, scaler, norm, config, device,
                mem_format, step, dist) -> torch.Tensor:
    """One optimizer step on the next batch; the loss stays on the device (no host sync)."""
    step_seed = config.seed * SEED_STRIDE + step
    batch_step, x, y = batches.next()
    assert batch_step == step, (batch_step, step)
    generator = torch.Generator().manual_seed(step_seed)
    x, y = prepare(x, y, norm, augment, generator, offset=dist.rank * config.batch_size,
                   global_batch=config.batch_size * dist.world_size, mem_format=mem_format)
    # dropout masks depend on (seed, step, rank): exact resume; DDP differs only through dropout
    torch.manual_seed(step_seed * 64 + dist.rank)
    net.train()
    return optimizer_step(net, model, x, y, loss_fn, optimizer, scaler, config, device)


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
        values = [loss.float().reshape(1) for _, loss in self.pending]
        flag = torch.tensor([1.0 if stop_requested else 0.0]).to(values[0].device)
        combined = torch.cat(values + [flag])
        if dist.enabled:
            dist.sum_(combined)
        read = combined.tolist()  # the one host sync
        self.pending = []
        for step, value in zip(steps, read[:-1]):
            value /= dist.world_size
            self._check(step, value)
            self.last = value
        return read[-1] > 0

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


def make_ema(model, decay: float):
    """The moving average of `model`'s weights and buffers (batch-norm statistics too), or
    None when `decay` is 0. The first update copies the weights."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    # a deep copy of `model`: its regions come along
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


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


def _init_weights(init_from, model):
    """Fine-tune: start from another run's weights (same model and classes)."""
    source = load_checkpoint(init_from)
    try:
        model.load_state_dict(source.model.state_dict())
    except RuntimeError:
        raise NapariUnetError(
            f"cannot fine-tune from {source.path}: its {source.model.hparams['name']} model "
            f"differs from this run's (classes, channels or size); choose a matching run") from None


class _ThroughputWindow:
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
