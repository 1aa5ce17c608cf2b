"""Intensity normalisation: statistics per channel from the training set (saved with the
model, so prediction matches), applied on the host (numpy) or on the device (torch).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from ...choices import NORMALIZATIONS, PER_IMAGE_NORMALIZATIONS, PERCENTILES
from ...errors import ConfigError, DataError
from ...io import strided_sample


@dataclass
class NormStats:
    """Per-channel intensity statistics; saved with the checkpoint so prediction matches."""

    mode: str
    low: list
    high: list
    mean: list
    std: list

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> NormStats:
        if values.get("mode") not in NORMALIZATIONS:
            raise ConfigError(
                f"normalisation {values.get('mode')!r} is unknown: use one of {NORMALIZATIONS}"
            )
        return cls(**{f.name: values.get(f.name, []) for f in dataclasses.fields(cls)})


def compute_norm_stats(images, mode: str) -> NormStats:
    """Statistics for `normalize`, per channel over all `images` (from strided samples).

    minus_one_one: uint8 uses 0..255, other types the 0.5 and 99.5 percentiles.
    zscore: mean and standard deviation, leaving out a constant background (a single value
    covering a quarter of the voxels or more: zeros around skull-stripped MRI, or BraTS'
    z-scored zero at the channel minimum) so that the brain, not the air, sets the scale.
    """
    if mode not in NORMALIZATIONS:
        raise ConfigError(f"normalisation {mode!r} is unknown: use one of {NORMALIZATIONS}")
    stats = NormStats(mode, [], [], [], [])
    if mode in ("none", *PER_IMAGE_NORMALIZATIONS) or not images:
        return stats  # each image brings its own (stats_for_image)
    budget = max(10_000, 2_000_000 // len(images))
    # zscore: each volume has its own background value (BraTS: a different floor per case)
    select = _without_background if mode == "zscore" else (lambda values: values)
    for channel in range(images[0].shape[0]):
        values = np.concatenate(
            [select(_finite_sample(image[channel], budget)) for image in images]
        )
        if mode == "minus_one_one":
            low, high = _intensity_range(values, all(image.dtype == np.uint8 for image in images))
            stats.low.append(low)
            stats.high.append(high)
        else:
            std = float(values.std()) if values.size else 0.0
            stats.mean.append(float(values.mean()) if values.size else 0.0)
            stats.std.append(std if std > 0 else 1.0)
    return stats


def stats_for_image(image, stats: NormStats) -> NormStats:
    """The statistics that normalise `image`: `stats` itself, or for zscore_case the image's
    own mean and std per channel without its constant background (zscore over one case)."""
    if stats.mode == "percentile_case":
        return _percentiles_of(image)
    if stats.mode != "zscore_case":
        return stats
    return compute_norm_stats([image], "zscore")


def _percentiles_of(image) -> NormStats:
    stats = NormStats("minus_one_one", [], [], [], [])
    for channel in image:
        values = _finite_sample(channel, 2_000_000)
        low, high = (float(v) for v in np.percentile(values, PERCENTILES)) if values.size else (0, 1)
        stats.low.append(low)
        stats.high.append(high if high > low else low + 1.0)
    return stats


def _finite_sample(array, budget: int) -> np.ndarray:
    values = strided_sample(array, budget).ravel().astype(np.float64)
    return values[np.isfinite(values)]


def _intensity_range(values: np.ndarray, uint8: bool) -> tuple[float, float]:
    if uint8:  # the full 8-bit range: the same scaling for every picture, as the reference
        return 0.0, 255.0
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    return low, high if high > low else low + 1.0  # a constant image must not divide by 0


def _without_background(values: np.ndarray) -> np.ndarray:
    if values.size == 0:
        return values
    unique, counts = np.unique(values, return_counts=True)
    if counts.max() * 4 >= values.size and counts.size > 1:
        return values[values != unique[counts.argmax()]]
    return values


def normalize(array, stats: NormStats) -> np.ndarray:
    """A float32 copy of a channel-first array, scaled with `stats`; NaN and Inf become 0.

    minus_one_one maps [low, high] to [-1, 1] and clips to [-1.5, 1.5], so outliers stay
    bounded without flattening everything just outside the percentile range.
    """
    x = torch.from_numpy(np.array(array, dtype=np.float32))
    return normalize_tensor(x, stats, channel_dim=0).numpy()


def normalize_tensor(x: torch.Tensor, stats: NormStats, channel_dim: int = 1) -> torch.Tensor:
    """`normalize` for a tensor on any device in any stored dtype (channels on `channel_dim`;
    a batch by default): float32, bit for bit what `normalize` gives on the CPU. A float32
    input is scaled in place. No step reads a value back, so a GPU never waits for the host."""
    stored_integers = not (x.is_floating_point() or x.is_complex())
    x = x.to(torch.float32)
    if stats.mode in PER_IMAGE_NORMALIZATIONS:
        raise DataError(f"{stats.mode} statistics belong to one image: normalise with "
                        "stats_for_image(image, stats)")
    if stats.mode == "minus_one_one":
        low, high = _per_channel(stats.low, x, channel_dim), _per_channel(stats.high, x, channel_dim)
        x -= low
        x *= 2.0 / (high - low)
        x -= 1.0
    elif stats.mode == "zscore":
        x -= _per_channel(stats.mean, x, channel_dim)
        x /= _per_channel(stats.std, x, channel_dim)
    if not (stored_integers and _finite_scaling(stats)):  # else nothing can be inf or NaN
        x = torch.where(torch.isfinite(x), x, 0.0)
    if stats.mode == "minus_one_one":
        x.clamp_(-1.5, 1.5)
    return x


def _finite_scaling(stats: NormStats) -> bool:
    """Whether `stats` map every finite value to a finite one (no zero range or spread)."""
    if stats.mode == "minus_one_one":
        return all(math.isfinite(low) and math.isfinite(high) and high != low
                   for low, high in zip(stats.low, stats.high))
    if stats.mode == "zscore":
        return all(math.isfinite(mean) and math.isfinite(std) and std != 0
                   for mean, std in zip(stats.mean, stats.std))
    return True


def _per_channel(values, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    if len(values) != x.shape[channel_dim]:
        raise DataError(
            f"the image has {x.shape[channel_dim]} channels but the normalisation has "
            f"{len(values)}: use images with the channels the model was trained on"
        )
    return _stats_on(tuple(float(v) for v in values), x.ndim, channel_dim, x.device)


@functools.lru_cache(maxsize=64)
def _stats_on(values: tuple, ndim: int, channel_dim: int, device: torch.device) -> torch.Tensor:
    """The statistics as a tensor on `device`, made once (issue 35: every training step made
    and copied them anew; a copy to a GPU from pageable memory waits for the GPU's queue)."""
    shape = [1] * ndim
    shape[channel_dim] = -1
    return torch.tensor(values, dtype=torch.float32).view(shape).to(device)
