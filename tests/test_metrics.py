"""Metrics: hand-computed values, empty-set rules, accumulation over batches, BraTS regions."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_unet.choices import REGION_SETS
from napari_unet.engine.metrics import (
    DiceAccumulator,
    dice_per_class,
    mean_dice,
    per_image_dice,
    pixel_error,
    region_dice,
    soft_dice_reference,
)
from napari_unet.engine.training.losses import soft_dice_loss
from napari_unet.errors import DataError

PRED_2X2 = np.array([[0, 1], [1, 1]])
TARGET_2X2 = np.array([[0, 0], [1, 1]])


def test_hand_computed_dice_per_class():
    # background: I = 1, |P| = 1, |T| = 2 -> 2/3; foreground: I = 2, |P| = 3, |T| = 2 -> 4/5;
    # class 2 appears in neither: 1.0.
    scores = dice_per_class(PRED_2X2, TARGET_2X2, num_classes=3)
    assert scores == pytest.approx([2 / 3, 4 / 5, 1.0])
    assert mean_dice(PRED_2X2, TARGET_2X2, 2) == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert mean_dice(PRED_2X2, TARGET_2X2, 2, include_background=False) == pytest.approx(4 / 5)


def test_iou_per_class_hand_computed():
    accumulator = DiceAccumulator(2)
    accumulator.update(PRED_2X2, TARGET_2X2)
    assert accumulator.iou_per_class() == pytest.approx([1 / 2, 2 / 3])


@pytest.mark.parametrize("shape", [(2, 9, 9), (2, 5, 6, 7)], ids=["2d", "3d"])
@pytest.mark.parametrize("num_classes", [2, 4])
def test_perfect_and_disjoint_predictions(shape, num_classes):
    target = np.random.default_rng(0).integers(0, num_classes, shape)
    assert dice_per_class(target, target, num_classes) == pytest.approx([1.0] * num_classes)
    shifted = (target + 1) % num_classes  # every pixel wrong
    assert dice_per_class(shifted, target, num_classes) == pytest.approx([0.0] * num_classes)
    assert pixel_error(shifted, target) == 1.0
    assert pixel_error(target, target) == 0.0


def test_accumulator_over_batches_equals_the_metric_on_the_concatenation():
    rng = np.random.default_rng(1)
    preds = [rng.integers(0, 3, (b, 6, 7)) for b in (1, 4, 2)]
    targets = [rng.integers(0, 3, (b, 6, 7)) for b in (1, 4, 2)]
    accumulator = DiceAccumulator(3)
    for pred, target in zip(preds, targets):
        accumulator.update(torch.as_tensor(pred), target)  # numpy and torch mixed
    whole = dice_per_class(np.concatenate(preds), np.concatenate(targets), 3)
    assert accumulator.dice_per_class() == pytest.approx(whole)
    accumulator.reset()
    assert accumulator.dice_per_class() == [1.0, 1.0, 1.0]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=12, max_size=12),
       st.lists(st.integers(0, 2), min_size=12, max_size=12), st.integers(1, 11))
def test_dice_does_not_depend_on_the_batch_split(pred, target, split):
    pred, target = np.array(pred).reshape(12, 1), np.array(target).reshape(12, 1)
    accumulator = DiceAccumulator(3)
    accumulator.update(pred[:split], target[:split])
    accumulator.update(pred[split:], target[split:])
    scores = accumulator.dice_per_class()
    assert scores == pytest.approx(dice_per_class(pred, target, 3))
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_labels_outside_the_classes_or_mismatched_shapes_are_user_errors():
    with pytest.raises(DataError, match="foreground value"):
        dice_per_class(PRED_2X2, TARGET_2X2 * 254, 2)
    with pytest.raises(DataError, match="shape"):
        dice_per_class(PRED_2X2, TARGET_2X2[:1], 2)


def test_soft_dice_reference_hand_computed_and_consistent_with_the_loss():
    mask = PRED_2X2  # one background pixel, three foreground pixels
    onehot = np.stack([mask == 0, mask == 1]).astype(np.float32)[None]
    assert soft_dice_reference(onehot, onehot) == pytest.approx(1.0)
    uniform = np.full_like(onehot, 0.5)
    # background: 2 * 0.5 / (sum p^2 = 1 + |T| = 1); foreground: 2 * 1.5 / (1 + 3).
    assert soft_dice_reference(uniform, onehot) == pytest.approx((1 / 2 + 3 / 4) / 2)
    # The same formula as the squared, per-image Dice loss with the reference's epsilon.
    logits = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    target = torch.randint(0, 2, (3, 8, 8), generator=torch.Generator().manual_seed(3))
    onehot = torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float()
    loss = soft_dice_loss(logits, target, squared=True, batch_dice=False, smooth=1e-6)
    assert soft_dice_reference(torch.softmax(logits, 1), onehot) == \
        pytest.approx(1 - loss.item(), abs=1e-6)


def test_per_image_dice_empty_rules():
    empty = np.zeros((4, 4), dtype=np.uint8)
    defect = empty.copy()
    defect[1:3, 1:3] = 1
    half = empty.copy()
    half[1:3, 1:2] = 1
    pred = np.stack([empty, empty, defect, half])
    target = np.stack([empty, defect, empty, defect])
    # empty on empty, missed defect, false detection, half found: 2 * 2 / (2 + 4).
    assert per_image_dice(pred, target) == pytest.approx([1.0, 0.0, 0.0, 2 / 3])
    assert per_image_dice(torch.as_tensor(defect)[None] * 255, defect[None]) == [1.0]


def test_pixel_error_hand_computed():
    assert pixel_error(PRED_2X2, TARGET_2X2) == pytest.approx(0.25)


def _brats_volume():
    """A 6^3 volume: edema (2) around a core of necrosis (1) and enhancing tumour (4)."""
    volume = np.zeros((6, 6, 6), dtype=np.uint8)
    volume[1:5, 1:5, 1:5] = 2
    volume[2:4, 2:4, 2:3] = 1
    volume[2:4, 2:4, 3:4] = 4
    return volume


BRATS = REGION_SETS["brats"]["regions"]  # wt, tc, et


def test_brats_regions_on_a_hand_made_volume():
    target = _brats_volume()
    assert region_dice(target, target, BRATS) == [1.0, 1.0, 1.0]
    # Predict the whole tumour as edema: WT perfect, no core, no enhancing tumour.
    pred = np.where(target > 0, 2, 0)
    assert region_dice(pred, target, BRATS) == [1.0, 0.0, 0.0]
    # Necrosis predicted as enhancing: TC still right, ET = 2 * 4 / (8 + 4).
    pred = np.where(target == 1, 4, target)
    wt, tc, et = region_dice(pred, torch.from_numpy(target), BRATS)
    assert wt == 1.0 and tc == 1.0
    assert et == pytest.approx(2 * 4 / (8 + 4))


def test_brats_empty_region_on_empty_counts_one_and_renumbered_labels():
    target = _brats_volume()
    no_enhancing = np.where(target == 4, 1, target)
    assert region_dice(no_enhancing, no_enhancing, BRATS)[2] == 1.0
    assert region_dice(target, no_enhancing, BRATS)[2] == 0.0
    renumbered = np.where(target == 4, 3, target)  # enhancing renumbered to 3, as in a 0..3 set
    regions = [[1, 2, 3], [1, 3], [3]]
    assert region_dice(renumbered, renumbered, regions) == [1.0, 1.0, 1.0]
    assert region_dice(renumbered, target, regions)[2] == 0.0
    assert region_dice(np.zeros((0,)), np.zeros((0,)), BRATS) == [1.0, 1.0, 1.0]
    with pytest.raises(DataError, match="differ in shape"):
        region_dice(target[:2], target, BRATS)


def test_read_only_arrays_are_scored_in_place_without_a_warning():
    import warnings

    labels = np.zeros((4, 4), np.uint8)
    labels[1:3, 1:3] = 1
    labels.flags.writeable = False  # as a memory map or a napari layer's data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dice_per_class(labels, labels, 2) == [1.0, 1.0]
