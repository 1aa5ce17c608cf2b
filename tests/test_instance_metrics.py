"""The object scores (engine.instance_metrics) against hand-counted cases."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information

from napari_unet.engine import instance_metrics
from napari_unet.engine.instance_metrics import (
    THRESHOLDS,
    InstanceScores,
    connected_objects,
    matching,
    overlaps,
    rand_scores,
)


def squares(*boxes, shape=(20, 20), dtype=np.uint16):
    """A label image: box (y0, y1, x0, x1, id) painted in order."""
    labels = np.zeros(shape, dtype)
    for y0, y1, x0, x1, value in boxes:
        labels[y0:y1, x0:x1] = value
    return labels


def row(*runs, width=20, dtype=np.int32):
    """A 1 x width label image: run (x0, x1, id) painted in order."""
    return squares(*((0, 1, x0, x1, value) for x0, x1, value in runs), shape=(1, width),
                   dtype=dtype)


def test_the_default_thresholds():
    assert THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


@pytest.mark.parametrize("true_dtype, pred_dtype", [(np.uint16, np.uint32), (np.uint32, np.int64),
                                                     (np.int64, np.uint16), (np.uint8, np.int32)])
def test_identical_objects_score_one_at_every_threshold_whatever_their_ids(true_dtype,
                                                                           pred_dtype):
    true = squares((1, 5, 1, 5, 3), (8, 12, 8, 12, 200), (14, 18, 2, 4, 7), dtype=true_dtype)
    pred = squares((1, 5, 1, 5, 41), (8, 12, 8, 12, 2), (14, 18, 2, 4, 90), dtype=pred_dtype)
    match = matching(true, pred)
    assert match.ap.tolist() == [1.0] * 10 and match.mean_ap == 1.0 and match.ap50 == 1.0
    assert match.tp.tolist() == [3] * 10 and match.fp.tolist() == match.fn.tolist() == [0] * 10
    assert (match.n_true, match.n_pred, match.merges, match.splits) == (3, 3, 0, 0)
    true_ids, pred_ids, inter, true_sizes, pred_sizes = overlaps(true, pred)
    assert true_ids.tolist() == [3, 7, 200] and pred_ids.tolist() == [2, 41, 90]
    assert inter.dtype == np.int64
    assert inter.tolist() == [[0, 16, 0], [0, 0, 8], [16, 0, 0]]
    assert true_sizes.tolist() == [16, 8, 16] and pred_sizes.tolist() == [16, 16, 8]


def test_a_hand_counted_image():
    # A: 10 x 10 true, predicted 10 x 8 inside it -> IoU 80 / 100 = 0.8
    # B: 4 x 10 true, predicted 4 x 4 inside it -> IoU 16 / 40 = 0.4: a FN and a FP at 0.5
    # C: 4 x 4 true, missed; D: a 2 x 2 prediction on the background
    true = squares((0, 10, 0, 10, 1), (12, 16, 0, 10, 2), (12, 16, 12, 16, 3))
    pred = squares((0, 10, 0, 8, 5), (12, 16, 0, 4, 6), (18, 20, 18, 20, 8))
    _, _, inter, true_sizes, pred_sizes = overlaps(true, pred)
    assert inter.tolist() == [[80, 0, 0], [0, 16, 0], [0, 0, 0]]
    assert true_sizes.tolist() == [100, 40, 16] and pred_sizes.tolist() == [80, 16, 4]
    match = matching(true, pred, thresholds=(0.3, 0.5, 0.8, 0.85))
    assert match.tp.tolist() == [2, 1, 1, 0]  # A and B at 0.3, A up to 0.8 (0.8 counts)
    assert match.fp.tolist() == [1, 2, 2, 3] and match.fn.tolist() == [1, 2, 2, 3]
    assert match.ap.tolist() == pytest.approx([2 / 4, 1 / 5, 1 / 5, 0.0])
    assert match.precision.tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 3, 0.0])
    assert match.recall.tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 3, 0.0])
    default = matching(true, pred)
    assert default.tp.tolist() == [1] * 7 + [0] * 3  # 0.5 ... 0.8, then none
    assert default.ap50 == pytest.approx(1 / 5)
    assert default.mean_ap == pytest.approx(7 * (1 / 5) / 10)
    assert (default.merges, default.splits) == (0, 0)  # B holds 16 / 40 < 1/2 of its pixels


def test_an_iou_at_the_threshold_counts():
    true, half = row((0, 10, 1)), row((0, 5, 4))  # 5 / 10
    assert matching(true, half, thresholds=(0.45, 0.5, 0.55)).tp.tolist() == [1, 1, 0]
    true, part = row((0, 20, 1)), row((0, 11, 2))  # 11 / 20 = 0.55, 0.55 is not a binary number
    assert matching(true, part).tp.tolist()[:3] == [1, 1, 0]
    assert matching(true, part, thresholds=np.arange(0.5, 1, 0.05)).tp.tolist()[:3] == [1, 1, 0]


def test_the_matching_counts_pairs_first_as_stardist(monkeypatch):
    # T1 [0, 10), T2 [10, 16); P1 [3, 13), P2 [0, 3)
    # IoU: T1-P1 7/13 = 0.54, T1-P2 3/10 = 0.3, T2-P1 3/13 = 0.23; at 0.2 the most IoU would be
    # T1-P1 alone (0.54 > 0.3 + 0.23) but the most pairs are T1-P2 and T2-P1
    true, pred = row((0, 10, 1), (10, 16, 2)), row((3, 13, 1), (0, 3, 2))
    thresholds = (0.2, 0.25, 0.5, 0.55)
    assert matching(true, pred, thresholds).tp.tolist() == [2, 1, 1, 0]
    monkeypatch.setattr(instance_metrics, "_DENSE_ASSIGNMENT", 0)  # Hopcroft-Karp instead
    match = matching(true, pred, thresholds)
    assert match.tp.tolist() == [2, 1, 1, 0]
    # T1 (7/10) and T2 (3/6: half counts) lie in P1: a merge; P1 (7/10) and P2 (3/3) in T1: a split
    assert (match.merges, match.merged_true, match.splits, match.split_pred) == (1, 2, 1, 2)


def test_one_prediction_over_two_touching_objects_is_a_merge_and_the_reverse_a_split():
    true = squares((2, 8, 2, 6, 1), (2, 8, 6, 10, 2))
    merged = (true > 0).astype(np.uint8)
    match = matching(true, merged)
    assert (match.merges, match.merged_true, match.splits, match.split_pred) == (1, 2, 0, 0)
    assert match.tp.tolist()[:2] == [1, 0]  # one of them at IoU 24 / 48 = 0.5, one to one
    assert (match.fp[0], match.fn[0]) == (0, 1)
    reverse = matching(merged, true)
    assert (reverse.splits, reverse.split_pred, reverse.merges, reverse.merged_true) == (1, 2, 0, 0)
    three = squares((0, 4, 0, 4, 1), (0, 4, 4, 8, 2), (0, 4, 8, 12, 3), (10, 12, 10, 12, 4))
    one = squares((0, 4, 0, 12, 9), (10, 12, 10, 12, 1))
    assert (matching(three, one).merges, matching(three, one).merged_true) == (1, 3)
    # a prediction holding under half of each true object is neither
    assert matching(true, squares((2, 4, 2, 10, 1))).merges == 0
    assert matching(squares((2, 4, 2, 10, 1)), true).splits == 0


def test_empty_images():
    empty = np.zeros((4, 4), np.uint8)
    both = matching(empty, empty)
    assert both.ap.tolist() == [1.0] * 10 and both.mean_ap == 1.0
    assert both.precision.tolist() == both.recall.tolist() == [1.0] * 10
    assert (both.n_true, both.n_pred, both.merges, both.splits) == (0, 0, 0, 0)
    one = squares((0, 2, 0, 2, 1), shape=(4, 4))
    missed = matching(one, empty)
    assert (missed.ap50, missed.fn[0], missed.fp[0], missed.recall[0]) == (0.0, 1, 0, 0.0)
    extra = matching(empty, one)
    assert (extra.ap50, extra.fn[0], extra.fp[0], extra.precision[0]) == (0.0, 0, 1, 0.0)
    ids, _, inter, sizes, _ = overlaps(empty, one)
    assert ids.size == 0 and inter.shape == (0, 1) and sizes.size == 0


def test_a_3d_case_and_the_ignore_mask():
    cube = np.zeros((6, 6, 6), np.int32)
    cube[1:4, 1:4, 1:4] = 7
    shifted = np.roll(cube, 1, axis=0)  # 18 in common, 36 in all: IoU 0.5
    assert matching(cube, shifted).tp.tolist() == [1] + [0] * 9
    ignore = np.zeros(cube.shape, bool)
    ignore[4] = True  # the slice where only the prediction is: IoU 18 / 27
    assert matching(cube, shifted, ignore=ignore).tp.tolist() == [1] * 4 + [0] * 6
    _, _, inter, true_sizes, pred_sizes = overlaps(cube, shifted, ignore=ignore)
    assert (inter.tolist(), true_sizes.tolist(), pred_sizes.tolist()) == ([[18]], [27], [18])
    # an object wholly ignored is no object
    sparse = squares((0, 2, 0, 2, 1), (5, 7, 5, 7, 2), shape=(8, 8))
    unlabelled = np.zeros(sparse.shape, bool)
    unlabelled[4:, 4:] = True
    ids, _, _, _, pred_sizes = overlaps(sparse, sparse, ignore=unlabelled)
    assert ids.tolist() == [1] and pred_sizes.tolist() == [4]
    assert matching(sparse, squares((0, 2, 0, 2, 1), shape=(8, 8)), ignore=unlabelled).ap50 == 1
    with pytest.raises(ValueError, match="ignore"):
        overlaps(sparse, sparse, ignore=unlabelled[:4])
    with pytest.raises(ValueError, match="shape"):
        matching(sparse, sparse[:4])


def test_large_ids_and_images():
    true = squares((0, 4, 0, 4, 1), (6, 10, 6, 10, 2), dtype=np.uint64)
    big = true.copy()
    big[true == 1], big[true == 2] = 2**40 + 5, 2**63 + 1
    assert overlaps(true, big)[1].tolist() == [2**40 + 5, 2**63 + 1]
    assert matching(big, true).mean_ap == 1.0
    # 4096 x 4096, a 64 x 64 grid of 60 x 60 squares; predicted one row lower:
    # IoU 59 * 60 / (61 * 60) = 0.967 each
    grid = np.zeros((4096, 4096), np.uint32)
    cells = np.arange(1, 64 * 64 + 1, dtype=np.uint32).reshape(64, 64) * 3
    grid.reshape(64, 64, 64, 64)[:, 2:62, :, 2:62] = cells[:, None, :, None]
    start = time.perf_counter()
    match = matching(grid, np.roll(grid, 1, axis=0))
    assert match.tp.tolist() == [4096] * 10 and (match.merges, match.splits) == (0, 0)
    volume = np.zeros((100, 100, 100), np.uint16)
    volume.reshape(10, 10, 10, 10, 10, 10)[:, 1:9, :, 1:9, :, 1:9] = np.arange(
        1, 1001, dtype=np.uint16).reshape(10, 1, 10, 1, 10, 1)
    assert matching(volume, volume).tp.tolist() == [1000] * 10
    assert time.perf_counter() - start < 60  # a few seconds on a loaded two-core machine


def test_the_data_set_means_per_image_and_pooled():
    scores = InstanceScores()
    a = squares((0, 4, 0, 4, 1), (6, 10, 6, 10, 2))
    scores.update(a, a)  # TP 2: AP 1
    b = squares((0, 4, 0, 4, 1), (6, 10, 6, 10, 2))
    b_pred = squares((0, 4, 0, 4, 3), (12, 14, 12, 14, 4), (16, 18, 16, 18, 5))
    match = scores.update(b, b_pred)  # TP 1, FP 2, FN 1: AP 1 / 4
    assert (match.tp[0], match.fp[0], match.fn[0]) == (1, 2, 1)
    result = scores.result()
    assert result["ap50"] == pytest.approx((1 + 1 / 4) / 2)
    assert result["mean_ap"] == pytest.approx(0.625)  # IoU 1: the same at every threshold
    assert result["ap_per_threshold"] == pytest.approx([0.625] * 10)
    assert result["ap50_pooled"] == pytest.approx(3 / (3 + 2 + 1))
    assert result["mean_ap_pooled"] == pytest.approx(0.5)
    assert result["precision50"] == pytest.approx(3 / 5) and result["recall50"] == 3 / 4
    assert (result["true_objects"], result["predicted_objects"], result["images"]) == (4, 5, 2)
    assert (result["merges"], result["splits"]) == (0, 0)
    assert json.loads(json.dumps(result)) == result
    assert all(type(v) in (int, float, list) for v in result.values())
    assert InstanceScores().result() == {"images": 0}
    with pytest.raises(ValueError, match="0.5"):
        InstanceScores(thresholds=(0.75,))
    with pytest.raises(ValueError, match="thresholds"):
        matching(a, a, thresholds=(0.0, 0.5))


def test_rand_scores_of_identical_merged_and_split_labellings():
    # true kept pixels 1 1 2 2 (the 0 is left out)
    true = row((0, 2, 1), (3, 5, 2), width=5)
    same = rand_scores(true, true * 10)
    assert same == {"rand_score": 1.0, "rand_error": 0.0, "rand_precision": 1.0,
                    "rand_recall": 1.0, "vi_split": 0.0, "vi_merge": 0.0, "vi": 0.0}
    # one predicted object over both: ordered pairs in one true object 2 * 2 * 1 = 4, in one
    # predicted object 4 * 3 = 12, in both 4: precision 1/3, recall 1, F 1/2
    merged = rand_scores(true, row((0, 5, 3), width=5))
    assert merged["rand_precision"] == pytest.approx(1 / 3) and merged["rand_recall"] == 1.0
    assert merged["rand_score"] == pytest.approx(0.5) and merged["rand_error"] == pytest.approx(0.5)
    assert merged["vi_merge"] == pytest.approx(1.0) and merged["vi_split"] == 0.0
    assert merged["vi"] == pytest.approx(1.0)
    # the other way round: one true object cut in two
    whole = row((0, 4, 1), width=4)
    split = rand_scores(whole, row((0, 2, 1), (2, 4, 2), width=4))
    assert split["rand_precision"] == 1.0 and split["rand_recall"] == pytest.approx(1 / 3)
    assert split["vi_split"] == pytest.approx(1.0) and split["vi_merge"] == 0.0


def test_rand_scores_leave_the_true_background_out():
    cells = squares((0, 10, 0, 9, 1), (0, 10, 11, 20, 2), shape=(10, 20))  # membrane: 9, 10
    merged = squares((0, 10, 0, 20, 5), shape=(10, 20))
    scores = rand_scores(cells, merged)
    assert scores["rand_score"] < 1 and scores["vi_merge"] == pytest.approx(1.0)
    relabelled = merged.copy()
    relabelled[:, 9:11] = 77  # what the prediction does on the membrane does not count
    assert rand_scores(cells, relabelled) == scores
    assert rand_scores(cells, np.where(cells > 0, cells, 3)) == rand_scores(cells, cells)
    # unless the true 0 is a label too: then the membrane merges the two cells
    assert rand_scores(cells, merged, ignore_true_labels=())["vi_merge"] > scores["vi_merge"]
    # the ignore mask leaves pixels out as the true 0 does
    ignore = np.zeros(cells.shape, bool)
    ignore[:, 11:] = True
    assert rand_scores(cells, merged, ignore=ignore)["rand_score"] == 1.0
    assert rand_scores(np.zeros((3, 3), np.uint8), merged[:3, :3])["rand_score"] == 1.0


def test_rand_scores_agree_with_scikit_image():
    rng = np.random.default_rng(3)
    true = rng.integers(0, 6, (30, 30)) * 1000
    pred = rng.integers(0, 4, (30, 30)).astype(np.uint32) * 7 + 500
    scores = rand_scores(true, pred)
    assert scores["rand_error"] == pytest.approx(adapted_rand_error(true, pred)[0])
    h_pred_given_true, h_true_given_pred = variation_of_information(true, pred, ignore_labels=(0,))
    assert scores["vi_split"] == pytest.approx(h_pred_given_true)
    assert scores["vi_merge"] == pytest.approx(h_true_given_pred)
    p, r = scores["rand_precision"], scores["rand_recall"]
    assert scores["rand_score"] == pytest.approx(2 * p * r / (p + r))
    # ids near 2**32 (a dense table as wide would not fit in memory) score as small ones
    assert rand_scores(true, pred + np.uint32(2**32 - 600)) == pytest.approx(scores)


def test_connected_objects_are_the_faces_only_components():
    mask = np.array([[1, 1, 0, 0], [0, 0, 5, 0], [0, 0, 1, 0]], np.uint8)
    objects = connected_objects(mask)
    assert objects.dtype == np.uint32
    assert objects.tolist() == [[1, 1, 0, 0], [0, 0, 2, 0], [0, 0, 2, 0]]
    assert connected_objects(mask, connectivity=2).max() == 1
    volume = np.zeros((3, 3, 3), bool)
    volume[0, 0, 0] = volume[1, 1, 1] = volume[2, 2, 2] = True
    assert connected_objects(volume).max() == 3 and connected_objects(volume, 3).max() == 1
    with pytest.raises(ValueError, match="connectivity"):
        connected_objects(mask, connectivity=3)
