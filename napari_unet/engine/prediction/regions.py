"""The probabilities of one region of an image, equal to the same region of the whole image's
sliding-window prediction: what a worker predicts for one block of a volume (prediction.workers).

The tiles are those of the whole image (the same starts, windows and mirrored borders,
``tiles.plan_axes`` over the image's full shape), restricted to the ones whose output overlaps
the region; each is read from the whole image with its full context, predicted in the same
batch as in one process (the whole image's batch of ``batch_size`` tiles that holds it: a
convolution over other tiles could round differently, ~1e-6), weighted by the same Gaussian
and added in the same order, so every pixel of the region holds the same weighted sum as in
one process, with the same ``batch_size``. The price: the other tiles of those batches.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from ..labels import LabelHead
from .sliding_window import _predict_batch, _tta_transforms
from .tiles import as_float32, gaussian_importance, plan_axes, read_window, tile_origin


def region_tiles(axes, region) -> list[tuple[int, ...]]:
    """The output starts of the whole image's tiles that overlap `region` (slices per axis),
    in the whole image's (row-major) order."""
    per_axis = [[s for s in axis.starts if s < part.stop and s + axis.tile > part.start]
                for axis, part in zip(axes, region)]
    return list(itertools.product(*per_axis))


def predict_region(model, image, region, *, head: LabelHead, tile_size, overlap=0.25,
                   batch_size=4, tta=False, amp="off", device="cpu", preprocess=None,
                   sigma_scale: float = 0.125) -> np.ndarray:
    """float32 probabilities of `region` (one slice per spatial axis of the channel-first
    `image`): ``(*region)`` for one blended channel, else ``(K, *region)``."""
    device = torch.device(device)
    axes = plan_axes(model, tuple(image.shape), tile_size, overlap)
    region = tuple(slice(*part.indices(axis.size)[:2]) for part, axis in zip(region, axes))
    dims = model.spatial_dims
    lead = len(axes) - dims
    tile = tuple(axis.tile for axis in axes[lead:])
    weight = gaussian_importance(tile, sigma_scale).reshape((1,) * lead + tile).to(device)
    shape = tuple(part.stop - part.start for part in region)
    channels = head.blended_channels
    sums = torch.zeros((channels, *shape), device=device)
    weights = torch.zeros(shape, device=device)
    transforms = _tta_transforms(dims, tta, tuple(axis.window for axis in axes))
    total = math.prod(len(axis.starts) for axis in axes)
    wanted = sorted({_index(axes, origin) // batch_size for origin in region_tiles(axes, region)})
    was_training = model.training
    model.eval()
    model.to(device)
    try:
        for number in wanted:  # the whole image's batches: the same tiles round alike
            batch_origins = [tile_origin(axes, i) for i in
                             range(number * batch_size, min((number + 1) * batch_size, total))]
            batch = np.stack([read_window(image, axes, origin, preprocess or as_float32)
                              .reshape((image.shape[0], *(a.window for a in axes[lead:])))
                              for origin in batch_origins])
            with torch.inference_mode():
                probs = _predict_batch(model, head, torch.from_numpy(batch).to(device),
                                       transforms, amp, tile)
                for tile_probs, origin in zip(probs, batch_origins):
                    _add(sums, weights, tile_probs.reshape(channels, *weight.shape), origin,
                         axes, region, weight)
    finally:
        model.train(was_training)
    result = (sums / weights).cpu().numpy()
    return result if channels > 1 else result[0]


def _index(axes, origin) -> int:
    """The row-major number of the tile at `origin` (tiles.tile_origin's inverse)."""
    index = 0
    for axis, start in zip(axes, origin):
        index = index * len(axis.starts) + axis.starts.index(start)
    return index


def _add(sums, weights, probs, origin, axes, region, weight) -> None:
    """One tile's weighted probabilities into the region's sums, cropped to the image and to
    the region (the whole image's ``Slab.add``, restricted)."""
    source, target = [], []
    for axis, start, part in zip(axes, origin, region):
        low, high = max(start, part.start), min(start + axis.tile, axis.size, part.stop)
        if high <= low:  # a tile of the batch that does not reach the region
            return
        source.append(slice(low - start, high - start))
        target.append(slice(low - part.start, high - part.start))
    sums[(slice(None), *target)].addcmul_(probs[(slice(None), *source)], weight[tuple(source)])
    weights[tuple(target)].add_(weight[tuple(source)])
