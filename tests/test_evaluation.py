"""`evaluate()` against values counted by hand, with a stand-in model whose outputs are known.

The stand-in returns its (unnormalised) input as logits, so an image is written directly as
the logits we want: for the binary case a pixel of value ``log(p / (1 - p))`` has foreground
probability ``p``; for three classes a pixel of value ``v`` scores ``-(v - k)^2`` for class k, so
the predicted class is the nearest of 0, 1, 2. One tile covers each 6x6 image. Every metric is
then compared with a figure worked out on paper (the comments show the counts).
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_unet.engine import evaluate, preset_config
from napari_unet.engine.checkpoint import Checkpoint
from napari_unet.engine.data.dataset import Dataset, split_folds

NO_NORMALISATION = {"mode": "none", "low": [], "high": [], "mean": [], "std": []}
EPS = 1e-6  # the ISBI reference's soft-Dice epsilon


class StandIn(torch.nn.Module):
    """Logits = input (one sigmoid channel) or -(input - k)^2 per class k."""

    spatial_dims = 2
    in_channels = 1

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.hparams = {"name": "stand_in"}
        self.unused = torch.nn.Parameter(torch.zeros(1))  # .to(device) needs a parameter

    def valid_input_size(self, size):
        return list(size)

    def output_size(self, size):
        return list(size)

    def forward(self, x):
        if self.num_classes == 1:
            return x
        return torch.cat([-(x - k) ** 2 for k in range(self.num_classes)], dim=1)


def stand_in_checkpoint(num_classes, folds=2):
    config = preset_config("industrial", normalization="none", folds=folds, amp="off",
                           patch_size=[6, 6], loss="dice_ce" if num_classes > 1 else "adaptive")
    return Checkpoint(model=StandIn(num_classes), config=config, norm_stats=NO_NORMALISATION,
                      step=0, best_dice=0.0, data_info={"num_classes": max(2, num_classes)},
                      path=Path("stand_in.pt"), state={})


def logit(p):
    return np.log(p / (1 - p)).astype(np.float32)


def dataset(probabilities, masks):
    return Dataset(images=[logit(np.asarray(p, np.float64))[None] for p in probabilities],
                   masks=[np.asarray(m, np.uint8) for m in masks],
                   names=[f"i{i}" for i in range(len(masks))], spatial_dims=2)


def run(checkpoint, data, **kw):
    return evaluate(checkpoint, data, **{"tile_size": [6, 6], "amp": "off", "device": "cpu", **kw})


# image 1: 5 predicted foreground pixels, 4 true ones, 3 of them shared
P1 = np.full((6, 6), 0.1)
P1[:2, :2] = [[0.9, 0.9], [0.9, 0.8]]
P1[3, 3] = 0.7
M1 = np.zeros((6, 6))
M1[0, :2] = 1
M1[1, 0] = 1
M1[3, 2] = 1
# image 2: a clean part, nothing predicted
P2, M2 = np.full((6, 6), 0.2), np.zeros((6, 6))
# image 3: a 2-pixel defect that is missed (every probability 0.3)
P3, M3 = np.full((6, 6), 0.3), np.zeros((6, 6))
M3[0, :2] = 1


def soft_dice_by_hand(p, t):
    """The reference's formula, per class (background 1 - p), then averaged over the classes."""
    scores = [(2 * np.sum(q * s) + EPS) / (np.sum(q * q + s * s) + EPS)
              for q, s in ((1 - p, 1 - t), (p, t))]
    return float(np.mean(scores))


def test_binary_metrics_equal_the_hand_counts():
    metrics = run(stand_in_checkpoint(1), dataset([P1, P2, P3], [M1, M2, M3]))
    # over all 108 pixels: foreground predicted 5, true 4 + 0 + 2 = 6, shared 3;
    # background predicted 103, true 102, shared 108 - (5 + 6 - 3) = 100
    foreground, background = 2 * 3 / (5 + 6), 2 * 100 / (103 + 102)
    assert metrics["samples"] == 3
    assert metrics["dice_per_class"] == pytest.approx([background, foreground], abs=1e-12)
    assert metrics["foreground_dice"] == pytest.approx(6 / 11, abs=1e-12)
    assert metrics["mean_dice"] == pytest.approx((40 / 41 + 6 / 11) / 2, abs=1e-12)
    # per image: 6/9; empty on empty = 1; a missed defect = 0
    assert metrics["per_image_dice"] == pytest.approx((6 / 9 + 1 + 0) / 3, abs=1e-12)
    # wrong pixels: 3 (two false positives, one miss), 0, 2 of 36 each
    assert metrics["pixel_error"] == pytest.approx((3 / 36 + 0 + 2 / 36) / 3, abs=1e-12)
    expected_soft = np.mean([soft_dice_by_hand(p, m) for p, m in ((P1, M1), (P2, M2), (P3, M3))])
    assert metrics["soft_dice"] == pytest.approx(expected_soft, rel=1e-6)
    assert set(metrics) == {"samples", "mean_dice", "foreground_dice", "dice_per_class",
                            "soft_dice", "pixel_error", "per_image_dice"}


def test_soft_dice_of_one_image_written_out():
    metrics = run(stand_in_checkpoint(1), dataset([P3], [M3]))
    # foreground: 2 * (0.3 * 2) / (36 * 0.09 + 2); background: 2 * (0.7 * 34) / (36 * 0.49 + 34)
    foreground = (1.2 + EPS) / (5.24 + EPS)
    background = (47.6 + EPS) / (51.64 + EPS)
    assert metrics["soft_dice"] == pytest.approx((foreground + background) / 2, rel=1e-6)
    assert metrics["per_image_dice"] == 0.0 and metrics["foreground_dice"] == 0.0
    assert metrics["pixel_error"] == pytest.approx(2 / 36, abs=1e-12)


def test_three_classes_count_each_class():
    # the stand-in predicts the nearest of 0, 1, 2 to each pixel's value
    predicted = np.zeros((2, 6, 6))
    predicted[0, :3, :3] = 1  # 9 pixels of class 1
    predicted[0, 4:, 4:] = 2  # 4 pixels of class 2
    predicted[1, :, :2] = 2  # 12 pixels of class 2
    truth = np.zeros((2, 6, 6), np.uint8)
    truth[0, :3, :2] = 1  # 6 of class 1, all inside the prediction
    truth[0, 5, 5] = 2  # 1 of class 2, inside the prediction
    truth[1, :, :1] = 2  # 6 of class 2, inside the prediction
    truth[1, 0, 5] = 1  # 1 of class 1, missed
    data = Dataset(images=[(p + 0.2).astype(np.float32)[None] for p in predicted],
                   masks=list(truth), names=["a", "b"], spatial_dims=2)
    metrics = run(stand_in_checkpoint(3), data)
    # class 1: predicted 9, true 7, shared 6; class 2: predicted 16, true 7, shared 7;
    # class 0: predicted 72 - 25 = 47, true 72 - 14 = 58, shared 72 - 25 - 14 + 13 = 46
    per_class = [2 * 46 / (47 + 58), 2 * 6 / (9 + 7), 2 * 7 / (16 + 7)]
    assert metrics["dice_per_class"] == pytest.approx(per_class, abs=1e-12)
    assert metrics["mean_dice"] == pytest.approx(np.mean(per_class), abs=1e-12)
    assert metrics["foreground_dice"] == pytest.approx(np.mean(per_class[1:]), abs=1e-12)
    # the binary reference metrics have no meaning for three classes
    assert set(metrics) == {"samples", "mean_dice", "foreground_dice", "dice_per_class"}


def test_a_fold_scores_only_its_validation_images():
    perfect = (np.full((6, 6), 0.9), np.ones((6, 6)))
    wrong = (np.full((6, 6), 0.9), np.zeros((6, 6)))
    _, validation = split_folds(4, 0, 2, seed=0)
    assert len(validation) == 2
    pairs = [perfect if i in validation else wrong for i in range(4)]
    data = dataset([p for p, _ in pairs], [m for _, m in pairs])
    checkpoint = stand_in_checkpoint(1, folds=2)
    fold = run(checkpoint, data, fold=0)
    assert fold["samples"] == 2
    assert fold["foreground_dice"] == 1.0 and fold["pixel_error"] == 0.0
    assert fold["per_image_dice"] == 1.0
    # the other fold holds only the wrong images
    other = run(checkpoint, data, fold=1)
    assert other["samples"] == 2 and other["foreground_dice"] == 0.0
    assert other["pixel_error"] == 1.0 and other["per_image_dice"] == 0.0
    # all four: 72 foreground pixels predicted twice as often as true, half shared
    everything = run(checkpoint, data)
    assert everything["samples"] == 4
    assert everything["foreground_dice"] == pytest.approx(2 * 72 / (144 + 72), abs=1e-12)
    assert math.isclose(everything["pixel_error"], 0.5)


def test_instance_masks_of_few_ids_and_objects_that_do_not_fit_are_said():
    from test_instances_watershed import balls

    # a model of one foreground (the nuclei), masks of 3 ids (read as classes by the rule)
    ids = balls((48, 48), [(12, 12), (12, 36), (36, 24)], 6).astype(np.uint8)
    data = dataset([np.where(ids > 0, 0.9, 0.1)], [ids])
    assert data.num_classes == 4
    metrics = run(stand_in_checkpoint(1), data, instances="auto", tile_size=[48, 48])
    assert len(metrics["dice_per_class"]) == 2 and metrics["foreground_dice"] == 1.0
    assert metrics["objects"]["true_objects"] == 3 and metrics["objects"]["ap50"] == 1.0
    assert metrics["notes"] == [(
        "the masks hold values up to 3 and the run predicts one foreground: each value is "
        "read as an object id, every object as the foreground")]
    # the cells between "membranes" of a nuclei model: said with the scores
    metrics = run(stand_in_checkpoint(1), data, instances="membranes", tile_size=[48, 48])
    assert any("use --instances auto" in note for note in metrics["notes"])
