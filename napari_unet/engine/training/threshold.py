"""The decision threshold, fitted after training on whole images (``fit_threshold``).

Where objects are rare, the plan centres a third or half of the patches on one, so the model
sees far more object than the images hold and its probabilities lean towards the objects:
at 0.5 a model can mark a textured background as defect (DAGM 2007, BSData: precision 0.04-0.3
where recall is 0.9). Whole images are what prediction sees, so after the last step the
final model predicts a share of them (the validation part where there is one, else the
training images, at most FIT_PIXELS pixels spread evenly over them) and the threshold of the
foreground probability that gives the best Dice there, on a coarse grid, becomes the run's
own ``threshold`` (written into the final checkpoint, so that prediction, evaluation and
export use it; a threshold given to them still wins). It changes only where it gains at
least MIN_GAIN there: a model that is right at 0.5 keeps 0.5.
"""
from __future__ import annotations

import math
import time

import numpy as np

from ...choices import IGNORE_CLASS
from ..data.normalization import NormStats
from ..prediction.predict import predict_with_model, run_to_end

GRID = (0.02, *(round(0.05 * k, 2) for k in range(1, 20)), 0.98)  # 0.02, 0.05 .. 0.95, 0.98
FIT_PIXELS = 24_000_000  # pixels (voxels) predicted at most to fit it
MIN_GAIN = 0.005  # Dice on the fitted images a new threshold must add
BINS = 1000  # histogram of the foreground probability


def fittable(config, head, sparse: bool) -> bool:
    """Whether a run's threshold can be fitted: ``config.fit_threshold``, a model whose one
    foreground probability is thresholded (two classes; not regions, not a model of objects),
    masks that are whole (strokes leave most pixels unknown: no Dice to fit)."""
    return bool(config.fit_threshold and head.blended_channels == 1 and not head.regions
                and not head.objects and not sparse)


def spread(sizes: list[int], budget: int = FIT_PIXELS) -> list[int]:
    """Indices of images, evenly spread over `sizes` (pixels each), that fit in `budget`
    (one at least)."""
    total = sum(sizes)
    if total <= budget:
        return list(range(len(sizes)))
    count = max(1, int(len(sizes) * budget / total))
    return sorted({int(i) for i in np.linspace(0, len(sizes) - 1, count)})


def spread_order(items: list) -> list:
    """`items` in an order whose every beginning is spread over them (golden-ratio steps),
    so that a fit cut short by the time still sees the whole set's variety."""
    golden = (math.sqrt(5) - 1) / 2
    return [items[i] for i in sorted(range(len(items)), key=lambda i: (i * golden) % 1.0)]


def fit_threshold(checkpoint, dataset, config, device, current: float = 0.5,
                  until: float | None = None):
    """(threshold, Dice at it, Dice at `current`, images used) of `checkpoint` (loaded: its
    model, norm and head) on `dataset`'s images (spread to FIT_PIXELS); the threshold stays
    `current` unless another on GRID gains MIN_GAIN. `until` (time.monotonic()): no image is
    started after it once one with an object was predicted (the images come in an order
    whose every beginning is spread over the set). None where no image predicted holds an object."""
    norm = NormStats.from_dict(checkpoint.norm_stats)  # as predict reads a checkpoint's
    chosen = spread([int(np.prod(np.shape(mask))) for mask in dataset.masks])
    on_object = np.zeros(BINS, np.int64)  # object pixels per probability bin
    on_background = np.zeros(BINS, np.int64)
    used = 0
    for index in spread_order(chosen):
        if until is not None and time.monotonic() > until and on_object.any():
            break  # out of time, with an object seen
        used += 1
        done = run_to_end(predict_with_model(
            checkpoint.model, np.asarray(dataset.images[index]), norm, head=checkpoint.head,
            tile_size=config.val_tile_size or list(config.patch_size),
            overlap=config.val_overlap, batch_size=max(1, config.batch_size), amp=config.amp,
            device=device, threshold=current, resample=config.resample,
            channels_last=config.channels_last and config.spatial_dims == 2))
        probability = np.asarray(done.probabilities, dtype=np.float32).ravel()
        mask = np.asarray(dataset.masks[index]).ravel()
        known = mask != IGNORE_CLASS
        bins = np.minimum((probability * BINS).astype(np.int64), BINS - 1)
        on_object += np.bincount(bins[known & (mask > 0)], minlength=BINS)
        on_background += np.bincount(bins[known & (mask == 0)], minlength=BINS)
    objects = int(on_object.sum())
    # pixels at or above each bin's lower edge: what a threshold there marks
    true_at = np.cumsum(on_object[::-1])[::-1]
    false_at = np.cumsum(on_background[::-1])[::-1]

    def dice(threshold: float) -> float:
        edge = min(BINS - 1, int(round(threshold * BINS)))
        found = int(true_at[edge]) + int(false_at[edge])
        return 2 * int(true_at[edge]) / (found + objects) if found + objects else float("nan")

    if not objects:
        return None
    at_current = dice(current)
    best = max(GRID, key=lambda t: (round(dice(t), 6), -abs(t - current)))
    if dice(best) < at_current + MIN_GAIN:
        best = current
    return best, dice(best), at_current, used
