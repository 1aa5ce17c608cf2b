"""A fingerprint of the training pairs: what a plan needs to know about the user's data.

As nnU-Net does before it plans a run: the dimensionality, the image sizes, the channels
(and whether they are RGB), the stored type and intensity percentiles per channel, the voxel
spacing and its anisotropy, how much of the data is foreground and how big the objects are.
Everything is read from strided samples of the (often memory-mapped) arrays, so a fingerprint
of a stack bigger than RAM reads a small part of it and is the same on every call.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from ...choices import IGNORE_CLASS
from ...errors import ConfigError
from ...io import strided_sample
from .dataset import Dataset

PERCENTILES = (0.5, 50.0, 99.5)
WIDTH_PLANES = 16  # planes of a volume whose skeleton measures the foreground's width
SAMPLE_VALUES = 200_000  # per image and channel, for the intensity statistics


@dataclass(frozen=True)
class Fingerprint:
    """What the training pairs are, in numbers (sizes are spatial, slowest axis first)."""

    spatial_dims: int
    samples: int
    channels: int
    rgb: bool
    dtype: str
    smallest_size: tuple
    median_size: tuple
    largest_size: tuple
    spacing: tuple  # per spatial axis; 1.0 each where the files say nothing
    anisotropy: float  # coarsest spacing / finest spacing
    percentiles: tuple  # per channel: the PERCENTILES of its intensities
    mean: tuple  # per channel
    std: tuple  # per channel
    classes: int  # class values in the masks, background included
    foreground_fraction: float  # of the voxels, all foreground classes together
    objects: int  # connected foreground objects over the data set
    median_object_extent: tuple  # per axis, in voxels (0 where there are no objects)
    # the median object's share of its bounding box: about 0.79 for discs, 0.52 for balls,
    # small for thin networks (membranes, cracks)
    median_object_fill: float = 0.0
    # share of the samples whose mask holds no object (surface inspection: most parts are good)
    empty_share: float = 0.0
    # the median object's voxels as a share of its sample's voxels (0 where there are none)
    median_object_share: float = 0.0
    # the foreground's mean width in the image plane, in pixels: its area over the length of its
    # skeleton (a band w pixels wide: about w; membranes and cracks a few pixels, blobs many)
    foreground_width: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def fingerprint(dataset: Dataset, spacing=None) -> Fingerprint:
    """The fingerprint of a data set; ``spacing`` (one value per spatial axis) where known."""
    sizes = np.array([mask.shape for mask in dataset.masks])
    spacing = _spacing(spacing, dataset.spatial_dims)
    channels = dataset.in_channels
    stats = [_channel_statistics(dataset.images, c) for c in range(channels)]
    foreground, total, extents, fills, shares, empty = _objects(dataset.masks)
    dtype = np.result_type(*[image.dtype for image in dataset.images])
    return Fingerprint(
        spatial_dims=dataset.spatial_dims, samples=len(dataset.images), channels=channels,
        rgb=channels == 3 and dtype == np.uint8 and dataset.spatial_dims == 2,
        dtype=str(dtype),
        smallest_size=tuple(int(s) for s in sizes.min(axis=0)),
        median_size=tuple(int(s) for s in np.median(sizes, axis=0)),
        largest_size=tuple(int(s) for s in sizes.max(axis=0)),
        spacing=spacing, anisotropy=max(spacing) / min(spacing),
        percentiles=tuple(s[0] for s in stats), mean=tuple(s[1] for s in stats),
        std=tuple(s[2] for s in stats), classes=dataset.num_classes,
        foreground_fraction=foreground / max(total, 1), objects=len(extents),
        median_object_extent=tuple(int(e) for e in np.median(extents, axis=0))
        if extents else (0,) * dataset.spatial_dims,
        median_object_fill=float(np.median(fills)) if fills else 0.0,
        empty_share=empty / max(len(dataset.masks), 1),
        median_object_share=float(np.median(shares)) if shares else 0.0,
        foreground_width=_foreground_width(dataset.masks))


def _spacing(spacing, dims: int) -> tuple:
    if spacing is None:
        return (1.0,) * dims
    values = tuple(float(s) for s in spacing)
    if len(values) != dims or min(values) <= 0:
        raise ConfigError(f"spacing {spacing!r} needs {dims} positive values, one per spatial axis "
                          f"(slowest first, e.g. z y x)")
    return values


def _channel_statistics(images, channel: int) -> tuple:
    """(percentiles, mean, std) of one channel over every image, from strided samples."""
    values = np.concatenate([strided_sample(image[channel], SAMPLE_VALUES).ravel()
                             for image in images]).astype(np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return (0.0,) * len(PERCENTILES), 0.0, 0.0
    percentiles = tuple(float(p) for p in np.percentile(values, PERCENTILES))
    return percentiles, float(values.mean()), float(values.std())


def _objects(masks) -> tuple[int, int, list, list, list, int]:
    """(foreground voxels, voxels, extent, fill and share of its sample of each connected
    foreground object, samples without an object) of the masks,
    each mask read whole once (masks are small next to the images: one byte a voxel). Sparse
    masks count their labelled voxels only (the share of objects among what was labelled)."""
    foreground = total = 0
    extents, fills, shares, empty = [], [], [], 0
    for mask in masks:
        mask = np.asarray(mask)
        labelled = mask != IGNORE_CLASS
        inside = (mask > 0) & labelled
        foreground += int(inside.sum())
        total += int(labelled.sum())
        empty += not inside.any()
        labelled, _ = ndimage.label(inside)
        for number, box in enumerate(ndimage.find_objects(labelled), start=1):
            extent = [s.stop - s.start for s in box]
            extents.append(extent)
            voxels = np.count_nonzero(labelled[box] == number)
            fills.append(voxels / np.prod(extent))
            shares.append(voxels / mask.size)
    return foreground, total, extents, fills, shares, empty


def _foreground_width(masks) -> float:
    """The foreground's mean width in the image plane (pixels): its area over its skeleton's
    length, pooled over the masks (a volume: over up to WIDTH_PLANES evenly spaced planes)."""
    area = length = 0
    for mask in masks:
        mask = np.asarray(mask)
        planes = mask.reshape(-1, *mask.shape[-2:])
        for plane in planes[np.unique(np.linspace(0, len(planes) - 1, WIDTH_PLANES).astype(int))]:
            inside = (plane > 0) & (plane != IGNORE_CLASS)
            if inside.any():
                area += int(inside.sum())
                length += int(skeletonize(inside).sum())
    return area / length if length else 0.0
