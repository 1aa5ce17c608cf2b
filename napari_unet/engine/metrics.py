"""Evaluation metrics: hard Dice (and IoU) per class and per region, the reference figures' own
Dice variants.

Inputs may be numpy arrays or torch tensors (on any device); results are Python floats.
Label arrays hold class indices (``0`` = background) or, for regions, the data's label values.
Counting is done with torch in int64, on the device the labels are on (only a K x K table
comes back to the CPU), and is exact over whole data sets.

For binary problems the metrics count two classes (background, foreground) even when the
network has a single sigmoid output channel. Probabilities and labels from a network's outputs
are the label head's (engine.labels).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ..choices import IGNORE_CLASS
from ..errors import DataError

__all__ = [
    "DiceAccumulator",
    "dice_per_class",
    "mean_dice",
    "soft_dice_reference",
    "per_image_dice",
    "pixel_error",
    "region_dice",
]


def _tensor(array) -> torch.Tensor:
    """`array` as a tensor sharing its memory; a read-only array (a memory map, a napari
    layer's data) is only read here, so torch's warning about writing to it does not apply."""
    if isinstance(array, torch.Tensor):
        return array
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(np.asarray(array))


def _dice_from_counts(intersection: float, total: float) -> float:
    """``2|A∩B| / (|A| + |B|)``, with two empty sets agreeing perfectly (1.0)."""
    return 1.0 if total == 0 else 2.0 * intersection / total


class DiceAccumulator:
    """Hard Dice per class, counted over many batches or images as if over one big array.

    Summing intersections and sizes before dividing (rather than averaging per-batch Dice)
    makes the result independent of how the data were batched.
    """

    def __init__(self, num_classes: int):
        if num_classes < 2:
            raise ValueError("num_classes counts the background: use 2 for a binary problem")
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        # confusion[t, p]: number of pixels of true class t predicted as p.
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred_labels, target) -> None:
        pred, true = _tensor(pred_labels).long(), _tensor(target).long()
        if pred.shape != true.shape:
            raise DataError(f"prediction {tuple(pred.shape)} and mask {tuple(true.shape)} "
                            "differ in shape; crop or pad the mask to the prediction")
        pred, true = labelled_only(pred, true)
        k = self.num_classes
        if pred.numel() and (min(int(pred.min()), int(true.min())) < 0
                             or max(int(pred.max()), int(true.max())) >= k):
            raise DataError(f"labels must be class indices 0..{k - 1}; a mask with other values "
                            "(e.g. 254) needs its foreground value set")
        counts = torch.bincount((true * k + pred).flatten(), minlength=k * k)
        self.confusion += counts.reshape(k, k).cpu()

    def _counts(self):
        intersection = self.confusion.diagonal()
        return intersection, self.confusion.sum(dim=1), self.confusion.sum(dim=0)

    def dice_per_class(self) -> list[float]:
        """Dice of each class; a class absent from both prediction and target scores 1.0."""
        intersection, target_size, pred_size = self._counts()
        return [_dice_from_counts(int(i), int(t + p))
                for i, t, p in zip(intersection, target_size, pred_size)]

    def region_dice(self, regions) -> list[float]:
        """Dice of each region (a set of label values, engine.labels), from the counts: a
        voxel is in a region when its class is one of the region's values. The one region
        Dice: validation, evaluate and the benchmarks all count here."""
        k = self.num_classes
        scores = []
        for region in regions:
            inside = torch.zeros(k, dtype=torch.bool)
            inside[[v for v in region if v < k]] = True
            both = int(self.confusion[inside][:, inside].sum())
            sizes = int(self.confusion[inside].sum() + self.confusion[:, inside].sum())
            scores.append(_dice_from_counts(both, sizes))
        return scores

    def iou_per_class(self) -> list[float]:
        """Intersection over union of each class, with the same empty-on-empty rule."""
        intersection, target_size, pred_size = self._counts()
        unions = target_size + pred_size - intersection
        return [1.0 if int(u) == 0 else int(i) / int(u) for i, u in zip(intersection, unions)]

    def mean_dice(self, include_background: bool = True) -> float:
        scores = self.dice_per_class()
        return float(np.mean(scores if include_background else scores[1:]))


def labelled_only(pred: torch.Tensor, true: torch.Tensor):
    """The pixels of a mask that someone labelled (not IGNORE_CLASS), flattened, and the
    prediction's there; the arrays as they are when every pixel is labelled."""
    if true.numel() and int(true.max()) == IGNORE_CLASS:
        keep = true != IGNORE_CLASS
        return pred[keep], true[keep]
    return pred, true


def dice_per_class(pred, target, num_classes: int) -> list[float]:
    """Hard Dice of each class between two label arrays of the same shape."""
    accumulator = DiceAccumulator(num_classes)
    accumulator.update(pred, target)
    return accumulator.dice_per_class()


def mean_dice(pred, target, num_classes: int, include_background: bool = True) -> float:
    """Mean of :func:`dice_per_class`, with or without the background class 0."""
    accumulator = DiceAccumulator(num_classes)
    accumulator.update(pred, target)
    return accumulator.mean_dice(include_background)


def region_dice(pred, target, regions) -> list[float]:
    """Dice of each region (BraTS: whole tumour, tumour core, enhancing tumour) between two
    label arrays in the data's label values; an empty region on an empty region scores 1.0."""
    pred, target = labelled_only(_tensor(pred), _tensor(target))
    largest = max([max(region) for region in regions]
                  + [int(t.max()) for t in (pred, target) if t.numel()])
    accumulator = DiceAccumulator(max(2, largest + 1))
    accumulator.update(pred, target)
    return accumulator.region_dice(regions)


def soft_dice_reference(probs, onehot, eps: float = 1e-6) -> float:
    """The ISBI reference's "Dice" (0.890): soft, both classes, squared denominator.

    As NVIDIA's UNet_Medical (TF2, ``runtime/losses.py``: ``dice_coef`` inside
    ``partial_losses``) computes it: for each image and class
    ``(2 sum(p t) + eps) / (sum(p^2 + t^2) + eps)`` with ``eps = 1e-6``, averaged over the
    images, then over the classes. Their evaluation reports ``1 - mean(dice_loss)`` over
    equal-sized batches, which is this value averaged over all images; call this function
    per image (``B = 1``) and average to reproduce it over a data set.

    ``probs`` and ``onehot`` are ``(B, K, *S)``: softmax probabilities and the one-hot mask.
    """
    p, t = _tensor(probs).double(), _tensor(onehot).double()
    spatial = tuple(range(2, p.ndim))
    intersection = (p * t).sum(spatial)
    denominator = (p * p + t * t).sum(spatial)
    dice = (2.0 * intersection + eps) / (denominator + eps)  # (B, K)
    return float(dice.mean(dim=0).mean())


def per_image_dice(pred, target) -> list[float]:
    """Binary Dice of each image in ``(B, *S)`` label arrays (nonzero = foreground).

    The DAGM2007 reference metric: an empty prediction on an empty mask scores 1.0, an
    empty prediction on a defect, or a detection on a clean image, scores 0.0. NVIDIA's
    industrial code gets the same rule from ``(2 I + 1e-5) / (|P| + |T| + 1e-5)``
    (``utils/metrics.py::iou_score``, a Dice despite its name), at several thresholds; the
    reference figure is the mean over images at one threshold, applied by the caller.
    """
    p, t = _tensor(pred) != 0, _tensor(target) != 0
    if p.shape != t.shape:
        raise DataError(f"prediction {tuple(p.shape)} and mask {tuple(t.shape)} differ in shape")
    p, t = p.flatten(1), t.flatten(1)
    intersections = (p & t).sum(dim=1).tolist()
    totals = (p.sum(dim=1) + t.sum(dim=1)).tolist()
    return [_dice_from_counts(i, n) for i, n in zip(intersections, totals)]


def pixel_error(pred, target) -> float:
    """Fraction of pixels whose label differs between prediction and target."""
    p, t = _tensor(pred), _tensor(target)
    if p.shape != t.shape:
        raise DataError(f"prediction {tuple(p.shape)} and mask {tuple(t.shape)} differ in shape")
    return float((p != t).double().mean())
