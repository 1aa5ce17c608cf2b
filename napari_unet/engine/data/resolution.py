"""Training and prediction at a lower resolution (nnU-Net's low-resolution stage): images
averaged down by a factor on every spatial axis, masks pooled region-aware, probabilities
interpolated back to the image's grid.
"""
from __future__ import annotations

import numpy as np
import torch

from ...choices import IGNORE_CLASS
from ..labels import labels_from_regions, region_targets


def downsample_labels(mask: np.ndarray, factor: int, regions=None) -> np.ndarray:
    """A class-index mask at 1/factor of its size on every axis (edge-padded to a multiple of
    factor first). With regions each region is averaged over the factor^dims block and kept
    where it covers half of it, then written back innermost last, so that thin inner regions
    survive; without, the most frequent class of each block wins (ties to the larger index).
    Unlabelled pixels (IGNORE_CLASS) take no part: a block is unlabelled only when all of it
    is (one painted slice of two keeps its block labelled)."""
    mask = np.asarray(mask)
    if factor == 1:
        return mask
    if int(mask.max(initial=0)) == IGNORE_CLASS:
        return _downsample_sparse(mask, factor, regions)
    dims = mask.ndim
    t = torch.from_numpy(_pad_to_multiple(mask, factor, dims).astype(np.int64))[None]
    if regions:
        pooled = _avg_pool(region_targets(t, regions), factor, dims)[0]
        return labels_from_regions(pooled, regions, 0.5)
    classes = int(mask.max()) + 1
    onehot = torch.nn.functional.one_hot(t[0], classes).movedim(-1, 0)[None].float()
    pooled = _avg_pool(onehot, factor, dims)[0]
    flipped = pooled.flip(0)  # argmax takes the first maximum: prefer the larger class
    return (classes - 1 - flipped.argmax(0)).numpy().astype(np.uint8)


def _downsample_sparse(mask, factor, regions):
    dims = mask.ndim
    padded = _pad_to_multiple(mask, factor, dims)
    valid = torch.from_numpy(padded != IGNORE_CLASS)[None, None].float()
    t = torch.from_numpy(np.where(padded == IGNORE_CLASS, 0, padded).astype(np.int64))[None]
    labelled = _avg_pool(valid, factor, dims)[0, 0]
    share = labelled.clamp(min=1e-12)
    if regions:
        pooled = _avg_pool(region_targets(t, regions) * valid, factor, dims)[0] / share
        out = labels_from_regions(pooled, regions, 0.5)
    else:
        classes = int(t.max()) + 1
        onehot = torch.nn.functional.one_hot(t[0], classes).movedim(-1, 0)[None].float()
        pooled = _avg_pool(onehot * valid, factor, dims)[0]
        out = (classes - 1 - pooled.flip(0).argmax(0)).numpy().astype(np.uint8)
    return np.where(labelled.numpy() > 0, out, IGNORE_CLASS).astype(np.uint8)


def downsample_image(image: np.ndarray, factor: int) -> np.ndarray:
    """A float32 channel-first image averaged over factor^dims blocks (edge-padded to a
    multiple of factor first)."""
    if factor == 1:
        return image
    dims = image.ndim - 1
    x = torch.from_numpy(_pad_to_multiple(np.asarray(image, dtype=np.float32), factor, dims))
    return _avg_pool(x[None], factor, dims)[0].numpy()


def upsample_probabilities(probs: torch.Tensor, factor: int, shape) -> torch.Tensor:
    """(K, *s) probabilities of a downsampled image back at its full-resolution `shape`:
    (bi/tri)linear by `factor` (block centres stay in place), cropped to `shape`."""
    mode = {2: "bilinear", 3: "trilinear"}[probs.ndim - 1]
    full = torch.nn.functional.interpolate(probs[None].float(), scale_factor=factor, mode=mode,
                                           align_corners=False)[0]
    return full[(slice(None),) + tuple(slice(0, n) for n in shape)]


def _pad_to_multiple(array: np.ndarray, factor: int, dims: int) -> np.ndarray:
    lead = array.ndim - dims
    pad = [(0, 0)] * lead + [(0, -n % factor) for n in array.shape[lead:]]
    return np.pad(array, pad, mode="edge") if any(p for _, p in pad) else array


def _avg_pool(x: torch.Tensor, factor: int, dims: int) -> torch.Tensor:
    pool = {2: torch.nn.functional.avg_pool2d, 3: torch.nn.functional.avg_pool3d}[dims]
    return pool(x, factor, stride=factor)
