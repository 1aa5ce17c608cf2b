"""The label head: made once from the config, saved and read back, and its maths by hand."""
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_unet.engine import LabelHead, preset_config
from napari_unet.engine.checkpoint import Checkpoint
from napari_unet.errors import ConfigError
from napari_unet.models import build_model

BRATS = ((1, 2, 3, 4), (1, 3, 4), (4,))


def test_the_config_and_the_masks_decide_the_head_once():
    softmax = LabelHead.from_config(preset_config("isbi2012", loss="dice_ce"), 3)
    assert (softmax.kind, softmax.activation, softmax.outputs, softmax.num_classes) == \
        ("classes", "softmax", 3, 3)
    assert softmax.blended_channels == 3 and not softmax.thresholded
    binary = LabelHead.from_config(preset_config("industrial"), 2)  # the adaptive loss
    assert (binary.activation, binary.outputs, binary.blended_channels) == ("sigmoid", 1, 1)
    assert binary.names == ["foreground"] and binary.keys == ["foreground"]
    two = LabelHead.from_config(preset_config("isbi2012"), 1)  # no foreground painted yet
    assert (two.activation, two.outputs, two.blended_channels) == ("softmax", 2, 1)
    assert two.keys == ["class0", "class1"] and two.thresholded
    with pytest.raises(ConfigError, match="adaptive loss is binary"):
        LabelHead.from_config(preset_config("industrial"), 3)
    brats = LabelHead.from_config(preset_config("brats"), 5)
    assert (brats.kind, brats.activation, brats.outputs, brats.num_classes) == \
        ("regions", "sigmoid", 3, 5)
    assert brats.regions == BRATS and brats.values == [2, 1, 4]
    assert brats.names == ["whole tumour", "tumour core", "enhancing tumour"]
    assert brats.keys == ["wt", "tc", "et"] and brats.thresholded
    other = LabelHead.from_config(preset_config("volume3d", regions=[[1, 2], [2]]), 3)
    assert other.keys == ["region0", "region1"] and other.values == [1, 2]


def test_saved_heads_read_back_and_old_checkpoints_derive_theirs():
    brats = LabelHead.from_config(preset_config("brats"), 5)
    saved = brats.to_dict()
    assert saved["keys"] == ["wt", "tc", "et"] and saved["activation"] == "sigmoid"
    assert LabelHead.from_dict(saved) == brats
    assert LabelHead.from_saved({"labels": saved, "regions": None}, 3) == brats
    # a checkpoint (or package) from before the head: its data_info regions, its outputs
    old = LabelHead.from_saved({"num_classes": 5, "regions": [[1, 2, 3, 4], [1, 3, 4], [4]]}, 3)
    assert old == brats
    assert LabelHead.from_saved({"num_classes": 2}, 1) == LabelHead(2, 1)
    assert LabelHead.from_saved({}, 4) == LabelHead(4, 4)
    # the Checkpoint carries it; nothing is set on the model
    model = build_model("unet3d", in_channels=4, num_classes=3, base_channels=4)
    checkpoint = Checkpoint(model=model, config=preset_config("brats"), norm_stats={}, step=0,
                            best_dice=0.0, data_info={"num_classes": 5, "regions": list(BRATS)},
                            path=Path("old.pt"), state={})
    assert checkpoint.head == brats and not hasattr(model, "regions")


def test_probabilities_are_what_is_blended():
    logits = torch.tensor([[[-1.0, 0.0, 2.0]], [[1.0, 3.0, -2.0]]])  # (B=2, 1, X=3)
    sigmoid = LabelHead(2, 1).probabilities(logits)
    assert torch.allclose(sigmoid, 1 / (1 + torch.exp(-logits)))
    two = torch.randn(2, 2, 5, 5)
    foreground = LabelHead(2, 2).probabilities(two)  # the 2-class softmax's class 1, one channel
    assert foreground.shape == (2, 1, 5, 5)
    assert torch.allclose(foreground[:, 0], torch.softmax(two, dim=1)[:, 1], atol=1e-6)
    three = LabelHead(3, 3).probabilities(torch.randn(2, 3, 4))
    assert torch.allclose(three.sum(dim=1), torch.ones(2, 4))
    regions = LabelHead(5, 3, BRATS).probabilities(torch.zeros(1, 3, 4))
    assert torch.all(regions == 0.5)  # independent sigmoids, not a softmax's thirds
    assert LabelHead(2, 1).probabilities(torch.zeros(1, 1, 2, dtype=torch.bfloat16)).dtype \
        == torch.float32


def test_labels_threshold_argmax_or_write_the_regions_back():
    probs = np.array([0.2, 0.5, 0.9])
    assert LabelHead(2, 1).labels(probs).tolist() == [0, 1, 1]
    assert LabelHead(2, 2).labels(probs, 0.6).tolist() == [0, 0, 1]
    classes = np.array([[0.7, 0.1], [0.2, 0.3], [0.1, 0.6]])  # (K=3, X=2)
    labels = LabelHead(3, 3).labels(classes)
    assert labels.dtype == np.uint8 and labels.tolist() == [0, 2]
    # BraTS: wt only -> oedema 2; wt + tc -> core 1; all three -> enhancing 4
    regions = np.array([[0.1, 0.9, 0.9, 0.9], [0.1, 0.1, 0.8, 0.9], [0.9, 0.1, 0.1, 0.7]])
    assert LabelHead(5, 3, BRATS).labels(regions).tolist() == [4, 2, 1, 4]
    assert LabelHead(5, 3, BRATS).labels(regions, 0.85).tolist() == [4, 2, 2, 1]
    # a single region blends one channel (*S), as a binary model does
    single = LabelHead(3, 1, ((2,),))
    assert single.blended_channels == 1
    assert single.labels(np.array([[0.2, 0.7], [0.9, 0.4]])).tolist() == [[0, 2], [2, 0]]


def test_region_targets_from_a_class_index_mask():
    mask = torch.tensor([[0, 1, 2, 3, 4]])
    targets = LabelHead(5, 3, BRATS).targets(mask)
    assert targets.shape == (1, 3, 5) and targets.dtype == torch.float32
    assert targets[0].tolist() == [[0, 1, 1, 1, 1], [0, 1, 0, 1, 1], [0, 0, 0, 0, 1]]
