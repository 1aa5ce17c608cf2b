"""The field's scores of instance segmentation (objects, one id each; 0 = background).

Label images are 2D or 3D arrays of any integer dtype; ids need not be consecutive. An
optional boolean ``ignore`` mask leaves pixels out of everything (sizes, overlaps, scores),
e.g. the unlabelled pixels of sparse ground truth.

- Average precision at an IoU threshold, as the Data Science Bowl 2018 and StarDist define it:
  a predicted object matched one-to-one to a true object with IoU >= the threshold is a true
  positive (IoU exactly at the threshold counts), unmatched predicted objects are false
  positives, unmatched true objects false negatives, and ``AP = TP / (TP + FP + FN)`` (1 when
  both images are empty). The matching is StarDist's ``matching``: the most pairs with
  IoU >= the threshold, ties broken by the largest summed IoU (``linear_sum_assignment``);
  above 0.5 an object has at most one partner, so the pairs are the matches. ``mean_ap`` is
  the mean over the thresholds 0.5, 0.55, ..., 0.95. Over a data set the DSB averaged the
  per-image AP (``ap50``, ``mean_ap``); StarDist's ``matching_dataset`` sums TP, FP and FN
  first (``ap50_pooled``, ``mean_ap_pooled``). Precision is TP / predicted objects (1 when
  there are none), recall TP / true objects (1 when there are none).
- Merges and splits: a true object *lies in* the predicted object that holds the largest
  share of its pixels when that share is at least half (of two holding exactly half each, the
  lower id); a predicted object in which two or more true objects lie is a merge (``merges``
  counts those predicted objects, ``merged_true`` the true objects lying in them).
  Symmetrically a predicted object lies in the true object holding at least half of it, and a
  true object in which two or more predicted objects lie is a split (``splits``; ``split_pred``
  the predicted objects lying in them). Background pixels count in the sizes, so a predicted
  object mostly over background lies in no true object.
- For EM (ISBI 2012): the foreground-restricted Rand and information scores, scikit-image's
  ``adapted_rand_error`` and ``variation_of_information`` with the pixels where the true
  image is 0 (the membranes) left out, the true image being the connected components of the
  cell interiors. ``rand_score`` is 1 - the adapted Rand error: the F-score of the pairs of
  pixels put in one object. ``rand_precision`` is the share of the pairs in one predicted
  object that are in one true object (false merges lower it), ``rand_recall`` the share of
  the pairs in one true object that are in one predicted object (false splits lower it);
  scikit-image 0.26 returns these two the other way round (its issue 6485), so they are
  counted here by that definition. ``vi_split`` is H(prediction | truth), the information
  lost by splitting true objects (0 when each true object lies in one predicted object),
  ``vi_merge`` is H(truth | prediction), lost by merging them (0 when each predicted object
  lies in one true object); ``vi`` is their sum, in bits (scikit-image takes log2).
  The challenge itself scored boundary maps: it thinned the predicted boundaries, took the
  connected regions between them at many thresholds of the map and reported the best score
  over the thresholds; here one labelling is scored as it is given, without thinning or a
  choice of threshold, so the numbers compare with the challenge's leaderboard only roughly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import maximum_bipartite_matching
from skimage.metrics import adapted_rand_error, variation_of_information

THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))
_DENSE_ASSIGNMENT = 4_000_000  # larger conflicting parts: Hopcroft-Karp (the same TP count)


def _labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    return labels.astype(np.uint8) if labels.dtype == bool else labels


def _kept(true, pred, ignore):
    """The pixels of `true` and `pred` outside `ignore`, flat."""
    true, pred = _labels(true), _labels(pred)
    if true.shape != pred.shape:
        raise ValueError(f"true {true.shape} and predicted {pred.shape} objects differ in shape")
    if ignore is None:
        return true.reshape(-1), pred.reshape(-1)
    keep = ~np.asarray(ignore, bool)
    if keep.shape != true.shape:
        raise ValueError(f"the ignore mask {keep.shape} and the objects {true.shape} differ")
    return true[keep], pred[keep]


def _consecutive(values: np.ndarray):
    """(ids of the objects, 0 left out; each value's index in ids + 1, 0 for 0; sizes)."""
    if values.size and np.issubdtype(values.dtype, np.integer):
        low, high = int(values.min()), int(values.max())
        if low >= 0 and high < max(1 << 20, 2 * values.size):  # a look-up table: no sort
            counts = np.bincount(values.astype(np.intp, copy=False), minlength=1)
            present = counts > 0
            present[0] = False
            ids = np.flatnonzero(present)
            inverse = np.cumsum(present, dtype=np.intp)[values]
            return ids.astype(values.dtype), inverse, counts[ids].astype(np.int64)
    ids = np.unique(values)  # then searchsorted: much faster than return_inverse
    inverse = np.searchsorted(ids, values).astype(np.intp, copy=False)
    counts = np.bincount(inverse, minlength=ids.size)
    if ids.size and ids[0] == 0:
        return ids[1:], inverse, counts[1:].astype(np.int64)
    return ids, inverse + 1, counts.astype(np.int64)


def _joint(t: np.ndarray, p: np.ndarray, n_pred: int):
    """(codes t * (n_pred + 1) + p present, their pixel counts), codes ascending."""
    codes = t * (n_pred + 1) + p
    bins = (int(t.max(initial=0)) + 1) * (n_pred + 1)
    if bins <= max(1 << 22, 2 * codes.size):
        counts = np.bincount(codes, minlength=bins)
        codes = np.flatnonzero(counts)
        return codes, counts[codes].astype(np.int64)
    codes, counts = np.unique(codes, return_counts=True)
    return codes, counts.astype(np.int64)


def _sparse_overlaps(true, pred, ignore=None):
    """(true ids, predicted ids, rows, columns and pixel counts of the overlapping pairs
    (0-based indices into the ids, row-major order), true sizes, predicted sizes)."""
    true, pred = _kept(true, pred, ignore)
    true_ids, t, true_sizes = _consecutive(true)
    pred_ids, p, pred_sizes = _consecutive(pred)
    both = (t > 0) & (p > 0)
    codes, inter = _joint(t[both], p[both], pred_ids.size)
    rows, cols = np.divmod(codes, pred_ids.size + 1)
    return true_ids, pred_ids, rows - 1, cols - 1, inter, true_sizes, pred_sizes


def overlaps(true, pred, ignore=None):
    """(true ids, predicted ids, intersections (n_true x n_pred, int64), true sizes, predicted
    sizes), the ids ascending, background left out of the matrix but its pixels counted in the
    sizes; pixels where the boolean ``ignore`` holds are left out of all. The matrix is dense
    (8 bytes a pair): ``matching`` works on the overlapping pairs only."""
    true_ids, pred_ids, rows, cols, inter, true_sizes, pred_sizes = _sparse_overlaps(
        true, pred, ignore)
    table = np.zeros((true_ids.size, pred_ids.size), np.int64)
    table[rows, cols] = inter
    return true_ids, pred_ids, table, true_sizes, pred_sizes


@dataclass(frozen=True, eq=False)
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

    def __post_init__(self):
        for counts in (self.tp, self.fp, self.fn):
            counts.setflags(write=False)

    @property
    def ap(self) -> np.ndarray:
        """TP / (TP + FP + FN) at each threshold; 1 where both images are empty."""
        total = self.tp + self.fp + self.fn
        return np.where(total > 0, self.tp / np.maximum(total, 1), 1.0)

    @property
    def ap50(self) -> float:
        return float(self.ap[_index_of_half(self.thresholds)])

    @property
    def mean_ap(self) -> float:
        return float(np.mean(self.ap))

    @property
    def precision(self) -> np.ndarray:
        return self.tp / self.n_pred if self.n_pred else np.ones(len(self.thresholds))

    @property
    def recall(self) -> np.ndarray:
        return self.tp / self.n_true if self.n_true else np.ones(len(self.thresholds))


def _index_of_half(thresholds) -> int:
    if 0.5 not in thresholds:
        raise ValueError(f"AP at IoU 0.5 asked of the thresholds {thresholds}, without 0.5")
    return thresholds.index(0.5)


def _thresholds(thresholds) -> tuple:
    # rounded: np.arange(0.5, 1, 0.05) holds 0.55000000000000004, which an IoU of 0.55 misses
    thresholds = tuple(round(float(t), 10) for t in np.atleast_1d(thresholds))
    if not thresholds or not all(0 < t <= 1 for t in thresholds):
        raise ValueError(f"IoU thresholds must be in (0, 1], not {thresholds}")
    return thresholds


def matching(true, pred, thresholds=THRESHOLDS, ignore=None) -> Matching:
    """Match the objects of `pred` to those of `true` at each IoU threshold, one to one: the
    most pairs with IoU >= the threshold, as StarDist's ``matching`` (module docstring);
    count TP, FP, FN, merges and splits. Pixels where ``ignore`` holds are left out."""
    thresholds = _thresholds(thresholds)
    _, _, rows, cols, inter, true_sizes, pred_sizes = _sparse_overlaps(true, pred, ignore)
    n_true, n_pred = true_sizes.size, pred_sizes.size
    iou = inter / (true_sizes[rows] + pred_sizes[cols] - inter)
    tp = np.array([_matched(rows, cols, iou, t) for t in thresholds], np.int64)
    merges, merged_true = _lying_in(rows, cols, inter, true_sizes, n_pred)
    splits, split_pred = _lying_in(cols, rows, inter, pred_sizes, n_true)
    return Matching(thresholds=thresholds, tp=tp, fp=n_pred - tp, fn=n_true - tp,
                    n_true=int(n_true), n_pred=int(n_pred), merges=merges,
                    merged_true=merged_true, splits=splits, split_pred=split_pred)


def _matched(rows, cols, iou, threshold: float) -> int:
    """The most one-to-one pairs with IoU >= threshold (StarDist's assignment: the count
    first, the summed IoU as the tie-breaker, which leaves the count as it is)."""
    ok = iou >= threshold
    rows, cols, iou = rows[ok], cols[ok], iou[ok]
    if threshold > 0.5 or rows.size == 0:  # an object has at most one partner above 0.5
        return int(rows.size)
    # a pair whose objects have no other candidate is a match as it is
    alone = (np.bincount(rows)[rows] == 1) & (np.bincount(cols)[cols] == 1)
    found = int(np.count_nonzero(alone))
    rows, cols, iou = rows[~alone], cols[~alone], iou[~alone]
    if rows.size == 0:
        return found
    true_ids, r = np.unique(rows, return_inverse=True)
    pred_ids, c = np.unique(cols, return_inverse=True)
    shape = (true_ids.size, pred_ids.size)
    if shape[0] * shape[1] > _DENSE_ASSIGNMENT:  # a maximum matching: the same count
        graph = sparse.csr_matrix((np.ones(r.size), (r, c)), shape=shape)
        return found + int(np.count_nonzero(maximum_bipartite_matching(graph) >= 0))
    # 1 a pair counts first, its IoU / (2 min(shape)) (< 1 summed over a matching) breaks ties
    scores = np.zeros(shape)
    scores[r, c] = 1.0 + iou / (2 * min(shape))
    chosen = linear_sum_assignment(scores, maximize=True)
    return found + int(np.count_nonzero(scores[chosen] > 0))


def _lying_in(objects, containers, inter, sizes, n_containers: int):
    """(containers in which >= 2 objects lie, the objects lying in them): an object lies in
    the container holding the largest share of its pixels when that share is >= 1/2; the
    pairs come ordered by (object, container) or (container, object), so of equal shares the
    lower container id wins."""
    if objects.size == 0:
        return 0, 0
    order = np.lexsort((-inter, objects))  # by object, the largest share first (stable)
    ordered = objects[order]
    first = order[np.r_[True, ordered[1:] != ordered[:-1]]]
    holds = inter[first] * 2 >= sizes[objects[first]]
    counts = np.bincount(containers[first][holds], minlength=n_containers)
    many = counts >= 2
    return int(np.count_nonzero(many)), int(counts[many].sum())


class InstanceScores:
    """Object scores over a data set, image by image (module docstring): ``update`` each
    image, then ``result``."""

    def __init__(self, thresholds=THRESHOLDS):
        self.thresholds = _thresholds(thresholds)
        self._half = _index_of_half(self.thresholds)
        self.matches: list[Matching] = []

    def update(self, true, pred, ignore=None) -> Matching:
        match = matching(true, pred, self.thresholds, ignore)
        self.matches.append(match)
        return match

    def result(self) -> dict:
        """Plain floats and ints: ``ap50``, ``mean_ap`` and ``ap_per_threshold`` the means of
        the images' AP (the DSB), ``ap50_pooled`` and ``mean_ap_pooled`` from TP, FP and FN
        summed over the images (StarDist), ``precision50``, ``recall50`` (pooled), ``merges``,
        ``splits``, ``true_objects``, ``predicted_objects``, ``images``; only ``images``
        (0) before any image."""
        if not self.matches:
            return {"images": 0}
        ap = np.mean([m.ap for m in self.matches], axis=0)
        tp, fp, fn = (np.sum([getattr(m, k) for m in self.matches], axis=0)
                      for k in ("tp", "fp", "fn"))
        pooled = np.where(tp + fp + fn > 0, tp / np.maximum(tp + fp + fn, 1), 1.0)
        half = self._half
        n_true = sum(m.n_true for m in self.matches)
        n_pred = sum(m.n_pred for m in self.matches)
        return {"ap50": float(ap[half]), "mean_ap": float(np.mean(ap)),
                "ap50_pooled": float(pooled[half]), "mean_ap_pooled": float(np.mean(pooled)),
                "ap_per_threshold": [float(a) for a in ap],
                "precision50": float(tp[half] / n_pred) if n_pred else 1.0,
                "recall50": float(tp[half] / n_true) if n_true else 1.0,
                "merges": int(sum(m.merges for m in self.matches)),
                "splits": int(sum(m.splits for m in self.matches)),
                "true_objects": int(n_true), "predicted_objects": int(n_pred),
                "images": len(self.matches)}


def rand_scores(true, pred, ignore_true_labels=(0,), ignore=None) -> dict:
    """Foreground-restricted Rand and information scores (module docstring): the pixels where
    `true` holds one of ``ignore_true_labels`` (or where the boolean ``ignore`` holds) are left
    out; what `pred` does there does not count. With no pixel left every score is perfect."""
    true, pred = _labels(true), _labels(pred)
    if true.shape != pred.shape:
        raise ValueError(f"true {true.shape} and predicted {pred.shape} objects differ in shape")
    keep = ~np.isin(true, list(ignore_true_labels))
    if ignore is not None:
        keep &= ~np.asarray(ignore, bool)
    if not keep.any():
        return {"rand_score": 1.0, "rand_error": 0.0, "rand_precision": 1.0,
                "rand_recall": 1.0, "vi_split": 0.0, "vi_merge": 0.0, "vi": 0.0}
    # consecutive ids: scikit-image's contingency table is as wide as the largest id
    t, p = _consecutive(true[keep])[1], _consecutive(pred[keep])[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        error = float(adapted_rand_error(t, p, ignore_labels=())[0])
    if not np.isfinite(error):  # no pair in one object on either side: all single pixels
        error = 0.0
    precision, recall = _rand_precision_recall(t, p)
    # scikit-image returns (H(image1 | image0), H(image0 | image1)): (split, merge)
    split, merge = (float(v) for v in variation_of_information(t, p, ignore_labels=()))
    return {"rand_score": 1.0 - error, "rand_error": error,
            "rand_precision": precision, "rand_recall": recall,
            "vi_split": split, "vi_merge": merge, "vi": split + merge}


def _rand_precision_recall(t: np.ndarray, p: np.ndarray):
    """(pairs in one object on both sides / pairs in one predicted object, ... / pairs in one
    true object), ordered pairs of distinct pixels; 1 where a side has no such pair."""
    joint = _joint(t, p, int(p.max()))[1]
    both = float(np.sum(joint * (joint - 1)))
    true_sizes, pred_sizes = np.bincount(t).astype(np.int64), np.bincount(p).astype(np.int64)
    true_pairs = float(np.sum(true_sizes * (true_sizes - 1)))
    pred_pairs = float(np.sum(pred_sizes * (pred_sizes - 1)))
    return (both / pred_pairs if pred_pairs else 1.0, both / true_pairs if true_pairs else 1.0)


def connected_objects(mask, connectivity: int = 1) -> np.ndarray:
    """uint32 objects: the connected components of ``mask > 0`` (``connectivity`` 1: faces
    only; up to ``mask.ndim``: edges, corners), the baseline of a semantic mask's objects."""
    mask = np.asarray(mask) > 0
    if not 1 <= connectivity <= max(mask.ndim, 1):
        raise ValueError(f"connectivity must be 1 to {mask.ndim}, not {connectivity}")
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    labels, _ = ndimage.label(mask, structure, output=np.uint32)
    return labels
