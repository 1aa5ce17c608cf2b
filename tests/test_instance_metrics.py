"""The object scores (engine.instance_metrics) against hand-counted cases."""
import numpy as np
import pytest

from napari_unet.engine.instance_metrics import (
    InstanceScores,
    connected_objects,
    matching,
    overlaps,
    rand_scores,
)


def squares(*boxes, shape=(20, 20), dtype=np.uint16):
    """A label image: box k (y0, y1, x0, x1, id) painted in order."""
    labels = np.zeros(shape, dtype)
    for y0, y1, x0, x1, value in boxes:
        labels[y0:y1, x0:x1] = value
    return labels


def test_identical_objects_score_one_at_every_threshold_whatever_their_ids():
    true = squares((1, 5, 1, 5, 3), (8, 12, 8, 12, 900))
    pred = squares((1, 5, 1, 5, 41), (8, 12, 8, 12, 2), dtype=np.int64)
    match = matching(true, pred)
    assert match.ap.tolist() == [1.0] * 10 and match.mean_ap == 1.0
    assert (match.n_true, match.n_pred, match.merges, match.splits) == (2, 2, 0, 0)


def test_a_hand_counted_image():
    # A: 10 x 10 true, predicted 10 x 8 inside it -> IoU 0.8
    # B: 4 x 10 true, predicted its left half 4 x 5 -> IoU 0.5 exactly
    # C: 4 x 4 true, predicted 4 x 4 shifted by 3 columns -> IoU 4 / 28
    # D: missed; E: an extra prediction on background
    true = squares((0, 10, 0, 10, 1), (12, 16, 0, 10, 2), (12, 16, 12, 16, 3),
                   (0, 3, 15, 18, 4), shape=(20, 20))
    pred = squares((0, 10, 0, 8, 5), (12, 16, 0, 5, 6), (12, 16, 15, 19, 7),
                   (18, 20, 18, 20, 8), shape=(20, 20))
    _, _, inter, true_sizes, pred_sizes = overlaps(true, pred)
    assert true_sizes.tolist() == [100, 40, 16, 9] and pred_sizes.tolist() == [80, 20, 16, 4]
    assert inter[2, 2] == 4
    match = matching(true, pred, thresholds=(0.5, 0.75, 0.8, 0.85))
    assert match.tp.tolist() == [2, 1, 1, 0]  # A and B at 0.5 (IoU 0.5 counts); A to 0.8
    assert match.fp.tolist() == [2, 3, 3, 4] and match.fn.tolist() == [2, 3, 3, 4]
    assert match.ap.tolist() == pytest.approx([2 / 6, 1 / 7, 1 / 7, 0.0])
    assert match.ap50 == pytest.approx(1 / 3)
    assert match.precision.tolist() == pytest.approx([0.5, 0.25, 0.25, 0.0])


def test_one_prediction_over_two_touching_objects_is_a_merge_and_the_reverse_a_split():
    true = squares((2, 8, 2, 6, 1), (2, 8, 6, 10, 2))
    merged = (true > 0).astype(np.uint8)
    match = matching(true, merged)
    assert (match.merges, match.merged_true, match.splits) == (1, 2, 0)
    assert match.tp.tolist()[0] == 1  # one of them at IoU exactly 0.5
    reverse = matching(merged, true)
    assert (reverse.splits, reverse.split_pred, reverse.merges) == (1, 2, 0)
    # a prediction holding less than half of each true object is neither
    thin = squares((2, 3, 2, 10, 1))
    assert matching(true, thin).merges == 0


def test_empty_images_and_3d_and_the_ignore_mask():
    empty = np.zeros((4, 4), np.uint8)
    assert matching(empty, empty).ap.tolist() == [1.0] * 10
    assert matching(squares((0, 2, 0, 2, 1), shape=(4, 4)), empty).ap50 == 0.0
    cube = np.zeros((6, 6, 6), np.int32)
    cube[1:4, 1:4, 1:4] = 7
    shifted = np.roll(cube, 1, axis=0)  # IoU 18 / 36 = 0.5
    assert matching(cube, shifted).tp.tolist()[:2] == [1, 0]
    ignore = np.zeros(cube.shape, bool)
    ignore[4] = True  # the slice where only the prediction is: IoU 18 / 27
    assert matching(cube, shifted, ignore=ignore).tp.tolist()[:4] == [1, 1, 1, 1]


def test_the_data_set_means_per_image_and_pooled():
    scores = InstanceScores()
    a = squares((0, 4, 0, 4, 1), (6, 10, 6, 10, 2))
    scores.update(a, a)                                  # AP 1 (2 TP)
    scores.update(a, squares((0, 4, 0, 4, 1)))           # 1 TP, 1 FN: AP 1 / 2
    scores.update(np.zeros((20, 20), np.uint8), squares((0, 4, 0, 4, 1)))  # 1 FP: AP 0
    result = scores.result()
    assert result["ap50"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert result["ap50_pooled"] == pytest.approx(3 / (3 + 1 + 1))
    assert (result["true_objects"], result["predicted_objects"], result["images"]) == (4, 4, 3)
    assert result["precision50"] == pytest.approx(3 / 4) and result["recall50"] == 0.75


def test_rand_and_information_scores_leave_the_true_background_out():
    cells = squares((0, 10, 0, 10, 1), (0, 10, 10, 20, 2), shape=(10, 20))
    cells[:, 9:11] = 0  # a membrane between them
    assert rand_scores(cells, cells)["rand_score"] == 1.0
    assert rand_scores(cells, cells)["vi"] == 0.0
    merged = squares((0, 10, 0, 20, 5), shape=(10, 20))  # membrane pixels given to a cell
    scores = rand_scores(cells, merged)
    assert scores["rand_score"] < 0.7 and scores["vi_merge"] > 0.9
    assert scores["vi_split"] == pytest.approx(0, abs=1e-12)
    split = cells.copy()
    split[:, 15:] = 9
    scores = rand_scores(cells, split)
    assert scores["vi_split"] > 0.4 and scores["vi_merge"] == pytest.approx(0, abs=1e-12)
    # what the prediction does on the membrane does not count
    relabelled = cells.copy()
    relabelled[:, 9] = 1
    relabelled[:, 10] = 2
    assert rand_scores(cells, relabelled) == rand_scores(cells, cells)


def test_connected_objects_are_the_faces_only_components():
    mask = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]], np.uint8)
    objects = connected_objects(mask)
    assert objects.dtype == np.uint32 and objects.max() == 2
    assert connected_objects(mask, connectivity=2).max() == 1
