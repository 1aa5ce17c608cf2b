"""What a run is made of, built from its config: the data set from the user's arrays, the model
and its windows, the optimizer and its schedule, the augmentation, the weight average.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from ...errors import ConfigError, DataError, NapariUnetError
from ...layouts import LUMINANCE, interpret
from ...masks import check_mask_values, distinct_values, rule_of
from ...models import build_model
from ..config import TrainConfig
from ..data.dataset import Dataset, masks_to_classes
from ..data.layout import as_channel_first
from ..data.normalization import normalize, stats_for_image
from ..data.resolution import downsample_image, downsample_labels
from ..export.loader import load_checkpoint
from ..labels import LabelHead
from ..start import start_name
from .augment import Augmenter


# -- data --------------------------------------------------------------------------------------
def as_dataset(images, masks, config: TrainConfig, checked: bool = True) -> Dataset:
    """A Dataset from a Dataset, or from lists/stacks of raw arrays and masks. `checked`
    False (a live run, whose masks may hold no paint yet): the set's values are not checked
    against the mask rule (check_mask_values), each mask is still read by it."""
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
    rule = rule_of(config)
    notes = check_mask_values(np.unique(np.concatenate(
        [distinct_values(np.asarray(mask)).ravel() for mask in masks])), **rule) \
        if masks and checked else []
    samples, classes = [], []
    for i, (image, mask) in enumerate(zip(images, masks)):
        image = as_channel_first(np.asarray(image) if not hasattr(image, "shape") else image,
                                 config.spatial_dims)
        mask = masks_to_classes(np.asarray(mask), **rule)
        if tuple(image.shape[1:]) != tuple(mask.shape):
            raise DataError(f"image {i} has shape {tuple(image.shape[1:])} but its mask "
                            f"{tuple(mask.shape)}: image and mask must cover the same pixels")
        samples.append(image)
        classes.append(mask)
    return Dataset(images=samples, masks=classes, names=[f"sample{i}" for i in range(len(samples))],
                   spatial_dims=config.spatial_dims, notes=notes)


def _as_sample_list(images, spatial_dims):
    """A list of per-sample arrays; a 2D model sees each page of a (Z,Y,X) stack as a sample
    (the input-layout rule tells a stack from a 2D image with channels or colour)."""
    if isinstance(images, (list, tuple)):
        if len(images) == 1 and _is_stack(images[0], spatial_dims):
            return list(images[0])
        return list(images)
    if _is_stack(images, spatial_dims):
        return list(images)
    if spatial_dims == 3 and images.ndim == 5:
        return list(images)
    return [images]


def _is_stack(image, spatial_dims) -> bool:
    """A (Z, Y, X) stack of 2D samples (not an RGB picture) under a 2D model."""
    return spatial_dims == 2 and np.ndim(image) == 3 \
        and interpret(np.shape(image), 2, stack=True).kind == "stack"


def as_luminance(dataset: Dataset) -> Dataset:
    """Colour samples (3 channels) as their luminance (ITU-R 709, one channel): a run that
    starts from a one-channel model that reads colour so (config colour: luminance)."""
    images = [np.tensordot(LUMINANCE, np.asarray(image, np.float32), axes=([0], [0]))[None]
              if image.shape[0] == 3 else image for image in dataset.images]
    return replace(dataset, images=images)


def check_data_fits_model(dataset: Dataset, config: TrainConfig):
    if dataset.spatial_dims != config.spatial_dims:
        raise DataError(
            f"the data is {dataset.spatial_dims}D but the run is {config.spatial_dims}D: "
            f"train with --set spatial_dims={dataset.spatial_dims}, or --preset auto, or the "
            f"{'volume3d' if dataset.spatial_dims == 3 else 'industrial or isbi2012'} preset")
    if len(dataset.images) == 0:
        raise DataError("the data set is empty: give at least one image with its mask")


def normalized_copy(dataset: Dataset, norm, config: TrainConfig) -> Dataset:
    """The training samples normalised (zscore_case: each with its own statistics) and, with
    resample > 1, averaged down, as float32 arrays in memory, with their masks at the same
    resolution (region-aware, engine.labels). The windows are then cut from these."""
    images, masks = [], []
    for image, mask in zip(dataset.images, dataset.masks):
        images.append(downsample_image(normalize(image, stats_for_image(image, norm)),
                                       config.resample))
        masks.append(downsample_labels(mask, config.resample, config.regions))
    return Dataset(images, masks, list(dataset.names), dataset.spatial_dims)


# -- model, optimizer, schedule ------------------------------------------------------------------
def output_channels(config: TrainConfig, num_classes: int) -> int:
    """The network's outputs for masks of `num_classes` classes, as the label head says."""
    return LabelHead.from_config(config, num_classes).outputs


def make_model(config: TrainConfig, in_channels: int, num_classes: int) -> torch.nn.Module:
    options = {"in_channels": in_channels, "num_classes": output_channels(config, num_classes)}
    options.update(config.model_options)
    if config.model == "unet3d" and "spatial_dims" not in options and config.spatial_dims == 2:
        options["spatial_dims"] = 2
    model = build_model(config.model, **options)
    if model.spatial_dims != config.spatial_dims:
        raise ConfigError(f"the {config.model} model is {model.spatial_dims}D but the run is "
                          f"{config.spatial_dims}D: use --set model=unet3d for volumes (or "
                          f"--preset auto, or a 3D preset), or --set spatial_dims="
                          f"{model.spatial_dims} to train {model.spatial_dims}D samples")
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


FUSED_DEVICES = ("cpu", "cuda")  # where the fused Adam, AdamW and SGD kernels are used


def make_optimizer(config: TrainConfig, params):
    """The config's optimizer over `params` (already on the training device), in one kernel
    for all parameters where torch has one (``fused``: Adam, AdamW, SGD on a CPU or a CUDA
    GPU), else a loop in C++ (``foreach``): a small model's step is otherwise mostly Python
    (issue 35: Adam over the 36 tensors of a 29k-parameter UNet took 3.3 ms a step one
    tensor at a time, 1.2 ms foreach, 0.3 ms fused on the 2-core development CPU)."""
    params = list(params)
    device = params[0].device.type if params else "cpu"
    fast = {"fused": True} if device in FUSED_DEVICES else {}
    if config.optimizer == "rmsprop":  # no fused kernel
        return torch.optim.RMSprop(params, lr=config.lr, alpha=config.rmsprop_alpha,
                                   momentum=config.momentum, centered=config.rmsprop_centered,
                                   weight_decay=config.weight_decay, eps=1e-8,
                                   foreach=True if fast else None)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=tuple(config.adam_betas),
                                weight_decay=config.weight_decay, **fast)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.adam_betas),
                                 weight_decay=config.weight_decay, **fast)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=True,
                           weight_decay=config.weight_decay, **fast)


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
                     elastic_grid=config.elastic_grid, contrast=config.contrast,
                     gamma=config.gamma, low_resolution=config.low_resolution)


def make_ema(model, decay: float):
    """The moving average of `model`'s weights and buffers (batch-norm statistics too), or
    None when `decay` is 0. The first update copies the weights."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


HEAD_PREFIX = "head."  # every model's last layer (models/)


def check_objects_start(config, init_from, resume: bool) -> None:
    """``--instances foreground`` keeps the interior / boundary split of the model it starts
    from: a one-line error unless that is a model of objects (checked before anything is
    written)."""
    if config.instances != "foreground" or resume:
        return
    if start_name(init_from) is None:
        raise ConfigError("--instances foreground keeps the interior / boundary split of the "
                          "model it starts from: give --init-from a model of objects (e.g. "
                          "nuclei), or use --instances merge")
    source = load_checkpoint(init_from)
    if not source.head.objects:
        raise ConfigError(f"--instances foreground keeps the interior / boundary split of the "
                          f"model it starts from, and {init_from} is no model of objects (its "
                          f"outputs are {source.head.kind}): start from one (e.g. nuclei), or "
                          f"use --instances merge")


def init_weights(init_from, model) -> str | None:
    """Fine-tune: start from another run's or a built-in model's weights. A different number
    of outputs (classes, regions, the boundary head) gets a new head, initialised afresh;
    returns a note saying so, else None. Anything else that differs is a one-line error."""
    source = load_checkpoint(init_from)
    theirs, ours = source.model.state_dict(), model.state_dict()
    differ = sorted(k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape)
    if any(not key.startswith(HEAD_PREFIX) for key in differ) or set(theirs) - set(ours):
        raise NapariUnetError(
            f"cannot fine-tune from {init_from}: its {source.model.hparams['name']} model "
            f"differs from this run's (model, size or image channels: it takes "
            f"{source.model.in_channels} channel(s)); choose a matching run, or let the plan "
            f"take the model from it (--preset auto)")
    model.load_state_dict({k: v for k, v in theirs.items() if k not in differ}, strict=False)
    if differ:
        return (f"{init_from} has {source.model.num_classes} outputs and this run "
                f"{model.num_classes}: a new head is trained on its features")
    return None
