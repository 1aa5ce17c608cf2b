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

import numpy as np
import torch

from ...errors import OutOfMemory
from ...runs import BEST, LAST, RunFolder
from ..checkpoint import read_checkpoint, save_checkpoint
from ..config import TrainConfig
from ..data.dataset import split_folds
from ..data.normalization import NormStats, compute_norm_stats
from ..data.patches import PatchSampler
from ..events import CheckpointSaved, Finished, Message, Progress, Started, Validation
from ..labels import LabelHead
from ..runtime import configure_backends, memory_format, resolve_device
from . import distributed
from .losses import build_loss
from .pipeline import DeviceBatches
from .setup import (
    as_dataset,
    check_data_fits_model,
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
from .validation import validate


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
    head = LabelHead.from_config(config, num_classes)  # what the outputs mean, saved below

    torch.manual_seed(config.seed)
    model = make_model(config, dataset.in_channels, num_classes)
    input_size, output_size = window_sizes(model, config.patch_size)
    norm = compute_norm_stats(train_set.images, config.normalization)
    data_info = {"num_classes": num_classes, "in_channels": dataset.in_channels,
                 "spatial_dims": config.spatial_dims, "input_size": list(input_size),
                 "output_size": list(output_size), "foreground_value": config.foreground_value,
                 "labels": head.to_dict()}

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
        init_weights(init_from, model)

    net = dist.wrap(model, device)
    if config.compile:
        net = torch.compile(net)
    loss_fn = build_loss(config.loss, head.outputs, head.regions)
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
    window = ThroughputWindow()
    losses = LossReader(loss_read_interval(device, config), stop_on_nonfinite=not scaler.is_enabled())
    cancel = distributed.AgreedStop() if dist.enabled else None
    batches = DeviceBatches(sampler, range(start_step, config.steps), device)
    try:
        if cancel is not None:
            cancel.install()
        for step in range(start_step, config.steps):
            try:
                loss = train_step(net, model, batches, augment, loss_fn, optimizer, scaler,
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
                                  input_size, device, dist, head)
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
