"""The field's scores of instance segmentation (objects, one id each; 0 = background).

- Average precision at an IoU threshold, as the Data Science Bowl 2018 and StarDist define it:
  a predicted object matched one-to-one to a true object with IoU >= the threshold is a true
  positive (the matching maximises the summed IoU among the pairs above the threshold, as
  StarDist's ``matching``; above 0.5 a match is unique anyway), unmatched predicted objects
  are false positives, unmatched true objects false negatives, and
  ``AP = TP / (TP + FP + FN)``. ``mean_ap`` is its mean over the thresholds 0.5, 0.55, ...,
  0.95. Over a data set the DSB averaged the per-image AP (``ap50``, ``mean_ap``); StarDist's
  ``matching_dataset`` sums TP, FP and FN first (``ap50_pooled``, ``mean_ap_pooled``).
- Merges and splits: a true object *lies in* the predicted object that holds the largest
  share of its pixels when that share is at least half; a predicted object in which two or
  more true objects lie is a merge. Symmetrically a predicted object lies in a true object
  holding at least half of it, and a true object in which two or more predicted objects lie
  is a split.
- For EM (ISBI 2012): the foreground-restricted Rand and information scores of scikit-image,
  ``adapted_rand_error`` and ``variation_of_information`` with the true background (the
  membranes, 0) left out. ``rand_score`` is 1 - the adapted Rand error (the F-score of the
  pairs of pixels put together); ``vi_split`` is H(prediction | truth), the information lost
  by splitting true objects, ``vi_merge`` is H(truth | prediction), by merging them. The
  challenge itself scored boundary maps: it thinned the predicted boundaries, took the
  connected regions between them at many thresholds and reported the best; here one
  labelling is scored as it is given, so a score here is at most what the challenge's
  procedure would give that labelling's boundary map.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from skimage.metrics import adapted_rand_error, variation_of_information

THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


def _consecutive(labels, keep):
    """(ids of the objects in `labels` where `keep`, consecutive labels 0..n over `keep`)."""
    ids, inverse = np.unique(np.asarray(labels)[keep], return_inverse=True)
    if ids.size and ids[0] == 0:
        return ids[1:], inverse.astype(np.int64)
    return ids, inverse.astype(np.int64) + 1


def overlaps(true, pred, ignore=None):
    """(true ids, predicted ids, intersections (n_true x n_pred), true sizes, predicted sizes),
    background left out; pixels where the boolean ``ignore`` holds are left out of all."""
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"true {true.shape} and predicted {pred.shape} objects differ in shape")
    keep = np.ones(true.shape, bool) if ignore is None else ~np.asarray(ignore, bool)
    true_ids, t = _consecutive(true, keep)
    pred_ids, p = _consecutive(pred, keep)
    width = pred_ids.size + 1
    counts = np.bincount(t * width + p, minlength=(true_ids.size + 1) * width)
    table = counts.reshape(true_ids.size + 1, width)
    return (true_ids, pred_ids, table[1:, 1:].astype(np.int64), table[1:].sum(axis=1),
            table[:, 1:].sum(axis=0))


@dataclass(frozen=True)
class Matching:
    """The matching of one image's objects at each IoU threshold (module docstring)."""

    thresholds: tuple
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    n_true: int
    n_pred: int
    merges: int
    merged_true: int
    splits: int
    split_pred: int

    @property
    def ap(self) -> np.ndarray:
        total = self.tp + self.fp + self.fn
        return np.where(total > 0, self.tp / np.maximum(total, 1), 1.0)

    @property
    def ap50(self) -> float:
        return float(self.ap[self.thresholds.index(0.5)])

    @property
    def mean_ap(self) -> float:
        return float(np.mean(self.ap))

    @property
    def precision(self) -> np.ndarray:
        return np.where(self.n_pred > 0, self.tp / max(self.n_pred, 1), 1.0)

    @property
    def recall(self) -> np.ndarray:
        return np.where(self.n_true > 0, self.tp / max(self.n_true, 1), 1.0)


def matching(true, pred, thresholds=THRESHOLDS, ignore=None) -> Matching:
    """Match the objects of `pred` to those of `true` (module docstring)."""
    thresholds = tuple(float(t) for t in thresholds)
    _, _, inter, true_sizes, pred_sizes = overlaps(true, pred, ignore)
    n_true, n_pred = inter.shape
    union = true_sizes[:, None] + pred_sizes[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    tp = np.array([_matched(iou, t) for t in thresholds], np.int64)
    merges, merged_true = _lying_in(inter, true_sizes, axis=1)
    splits, split_pred = _lying_in(inter.T, pred_sizes, axis=1)
    return Matching(thresholds, tp, n_pred - tp, n_true - tp, n_true, n_pred, merges,
                    merged_true, splits, split_pred)


def _matched(iou: np.ndarray, threshold: float) -> int:
    """The number of one-to-one pairs with IoU >= threshold, maximising the summed IoU."""
    if iou.size == 0:
        return 0
    rows, cols = np.nonzero(iou >= threshold)
    if rows.size == 0:
        return 0
    if threshold > 0.5:  # each object has at most one partner above 0.5
        return int(rows.size)
    true_ids, r = np.unique(rows, return_inverse=True)
    pred_ids, c = np.unique(cols, return_inverse=True)
    scores = np.zeros((true_ids.size, pred_ids.size))
    scores[r, c] = iou[rows, cols]
    chosen_rows, chosen_cols = linear_sum_assignment(scores, maximize=True)
    return int(np.count_nonzero(scores[chosen_rows, chosen_cols] >= threshold))


def _lying_in(inter: np.ndarray, sizes: np.ndarray, axis: int):
    """(containers holding >= 2 objects, objects in them): each object (a row of `inter`)
    lies in the column holding at least half of its pixels."""
    if inter.size == 0:
        return 0, 0
    best = inter.argmax(axis=axis)
    holds = inter[np.arange(inter.shape[0]), best] * 2 >= np.maximum(sizes, 1)
    counts = np.bincount(best[holds], minlength=inter.shape[1])
    many = counts >= 2
    return int(np.count_nonzero(many)), int(counts[many].sum())


class InstanceScores:
    """Object scores over a data set, image by image (module docstring)."""

    def __init__(self, thresholds=THRESHOLDS):
        self.thresholds = tuple(thresholds)
        self.matches: list[Matching] = []

    def update(self, true, pred, ignore=None) -> Matching:
        match = matching(true, pred, self.thresholds, ignore)
        self.matches.append(match)
        return match

    def result(self) -> dict:
        if not self.matches:
            return {"images": 0}
        ap = np.mean([m.ap for m in self.matches], axis=0)
        tp, fp, fn = (np.sum([getattr(m, k) for m in self.matches], axis=0)
                      for k in ("tp", "fp", "fn"))
        pooled = np.where(tp + fp + fn > 0, tp / np.maximum(tp + fp + fn, 1), 1.0)
        at50 = self.thresholds.index(0.5)
        n_true = sum(m.n_true for m in self.matches)
        n_pred = sum(m.n_pred for m in self.matches)
        return {"ap50": float(ap[at50]), "mean_ap": float(np.mean(ap)),
                "ap50_pooled": float(pooled[at50]), "mean_ap_pooled": float(np.mean(pooled)),
                "ap_per_threshold": [float(a) for a in ap],
                "precision50": float(tp[at50] / n_pred) if n_pred else 1.0,
                "recall50": float(tp[at50] / n_true) if n_true else 1.0,
                "merges": int(sum(m.merges for m in self.matches)),
                "splits": int(sum(m.splits for m in self.matches)),
                "true_objects": int(n_true), "predicted_objects": int(n_pred),
                "images": len(self.matches)}


def rand_scores(true, pred, ignore_true_labels=(0,)) -> dict:
    """Foreground-restricted Rand and information scores (module docstring)."""
    true = np.asarray(true).astype(np.int64, copy=False)
    pred = np.asarray(pred).astype(np.int64, copy=False)
    error, precision, recall = adapted_rand_error(true, pred,
                                                  ignore_labels=tuple(ignore_true_labels))
    keep = ~np.isin(true, ignore_true_labels)
    if keep.any():
        # scikit-image returns (H(image1 | image0), H(image0 | image1))
        split, merge = variation_of_information(true[keep], pred[keep])
    else:
        merge, split = 0.0, 0.0
    return {"rand_score": float(1.0 - error), "rand_error": float(error),
            "rand_precision": float(precision), "rand_recall": float(recall),
            "vi_split": float(split), "vi_merge": float(merge), "vi": float(split + merge)}


def connected_objects(mask, connectivity: int = 1) -> np.ndarray:
    """uint32 objects: the connected components of ``mask > 0`` (faces only by default), the
    baseline of a semantic mask's objects."""
    mask = np.asarray(mask) > 0
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    labels, _ = ndimage.label(mask, structure)
    return labels.astype(np.uint32, copy=False)
