"""Sparse labels: unlabelled pixels (IGNORE_CLASS) through the mask rule, the losses, the
windows, the resampling, the scores, the files and a training run."""
import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

from napari_unet.choices import IGNORE_CLASS
from napari_unet.engine import evaluate, load_checkpoint, load_dataset, preset_config, train
from napari_unet.engine.data.patches import PatchSampler
from napari_unet.engine.data.resolution import downsample_labels
from napari_unet.engine.metrics import DiceAccumulator
from napari_unet.engine.training.augment import Augmenter
from napari_unet.engine.training.losses import build_loss, cross_entropy, soft_dice_loss
from napari_unet.errors import ConfigError, DataError
from napari_unet.masks import describe_classes, mask_classes
from napari_unet.training_set import write_training_pairs

U = IGNORE_CLASS
BRATS = [[1, 2, 3], [1, 3], [3]]


# -- the rule ----------------------------------------------------------------------------------
def test_unknown_mode_maps_zero_to_unlabelled_and_the_background_value_to_class_0():
    painted = np.array([[0, 1, 2, 2], [0, 0, 1, 3]])
    classes, merged = mask_classes(painted, unlabeled="ignore")  # background painted as 1
    assert not merged
    assert classes.tolist() == [[U, 0, 1, 1], [U, U, 0, 2]]
    classes, _ = mask_classes(painted, unlabeled="ignore", background_value=2)
    assert classes.tolist() == [[U, 1, 0, 0], [U, U, 1, 2]]  # 3 is the second class
    # a chosen object value: the rest of what was painted is unknown too
    classes, _ = mask_classes(painted, foreground_value=3, unlabeled="ignore")
    assert classes.tolist() == [[U, 0, U, U], [U, U, 0, 1]]


def test_an_ignore_value_marks_unlabelled_pixels_in_either_mode():
    mask = np.array([[0, 255, 7], [7, 0, 255]], np.uint8)
    assert mask_classes(mask, ignore_value=7)[0].tolist() == [[0, 1, U], [U, 0, 1]]
    as_classes = np.array([[0, 1, U], [2, 0, 1]], np.uint8)  # a sparse mask as written
    assert mask_classes(as_classes, ignore_value=U)[0].tolist() == as_classes.tolist()
    only_background = np.array([[0, U]], np.uint8)  # without it 255 would be the object
    assert mask_classes(only_background, ignore_value=U)[0].tolist() == [[0, U]]
    assert mask_classes(only_background)[0].tolist() == [[0, 1]]


def test_instances_painted_over_a_background_value_become_one_class():
    painted = np.zeros((6, 6), np.int32)
    painted[0] = 1  # background stroke
    for k in range(20):
        painted[1 + k // 6 % 5, k % 6] = 100 + k  # 20 objects
    classes, merged = mask_classes(painted, unlabeled="ignore", instances="merge")
    assert merged and set(np.unique(classes)) == {0, 1, U}
    assert (classes[0] == 0).all() and (classes[painted == 0] == U).all()


def test_bad_sparse_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="another value"):
        mask_classes(np.array([[0, 1]]), unlabeled="ignore", background_value=0)
    with pytest.raises(ConfigError, match="background, ignore"):
        mask_classes(np.array([[0, 1]]), unlabeled="sometimes")
    with pytest.raises(DataError, match="small values"):
        mask_classes(np.array([[0, 1, 40]]), unlabeled="ignore")


def test_the_widget_line_says_what_is_labelled():
    painted = np.zeros((10, 10), np.uint8)
    painted[0] = 1
    painted[1, :5] = 2
    line = describe_classes(painted, unlabeled="ignore", background_value=1)
    assert line.startswith("learns value(s) 2: 33% of the labelled pixels")
    assert "15% of the pixels labelled, the rest ignored (background painted as 1)" in line


# -- the losses, against hand computations ---------------------------------------------------
def test_masked_cross_entropy_is_the_mean_over_labelled_pixels():
    logits = torch.tensor([[[[2.0, 0.0, -1.0]], [[0.0, 1.0, 3.0]]]])  # (1, 2, 1, 3)
    target = torch.tensor([[[0, U, 1]]])
    valid = target != U
    by_hand = (-torch.log_softmax(logits, 1)[0, 0, 0, 0] - torch.log_softmax(logits, 1)[0, 1, 0, 2]) / 2
    ce = cross_entropy(logits, target.masked_fill(~valid, 0), valid)
    assert ce.item() == pytest.approx(by_hand.item(), rel=1e-6)
    loss = build_loss("ce", 2, masked=True)
    assert loss(logits, target).item() == pytest.approx(by_hand.item(), rel=1e-6)
    # binary head: sigmoid BCE over the labelled pixels only
    one = logits[:, 1:]
    bce = (F.softplus(-one[0, 0, 0, 2]) + F.softplus(one[0, 0, 0, 0])) / 2
    assert build_loss("ce", 1, masked=True)(one, target).item() == pytest.approx(bce.item(), rel=1e-6)


def test_masked_dice_counts_labelled_pixels_only():
    logits = torch.tensor([[[[0.0, 0.0, 2.0, -5.0]], [[0.0, 0.0, -1.0, 5.0]]]])  # not symmetric
    target = torch.tensor([[[U, U, 0, 1]]])
    probs = torch.softmax(logits, 1)
    p1, p0 = probs[0, 1, 0, 3], probs[0, 0, 0, 2]  # the labelled pixels' right answers
    dice1 = (2 * p1 + 1) / (probs[0, 1, 0, 2] + p1 + 1 + 1)
    dice0 = (2 * p0 + 1) / (p0 + probs[0, 0, 0, 3] + 1 + 1)
    by_hand = 1 - (dice0 + dice1) / 2
    valid = target != U
    # "dice" leaves the background out: the foreground's Dice on the labelled pixels alone
    assert build_loss("dice", 2, masked=True)(logits, target).item() == \
        pytest.approx(1 - dice1.item(), rel=1e-6)
    assert soft_dice_loss(logits, target.masked_fill(~valid, 0), valid=valid).item() \
        == pytest.approx(by_hand.item(), rel=1e-6)


@pytest.mark.parametrize("name, outputs, regions", [
    ("dice_ce", 3, None), ("dice_ce_foreground", 3, None), ("dice", 3, None),
    ("adaptive", 3, None), ("ce", 1, None), ("dice_ce", 3, BRATS)])
def test_a_masked_loss_equals_the_dense_loss_on_the_labelled_part(name, outputs, regions):
    torch.manual_seed(0)
    logits = torch.randn(2, outputs, 8, 8)
    target = torch.randint(0, 2 if outputs == 1 else 4 if regions else 3, (2, 8, 8))
    sparse = target.clone()
    sparse[:, :3] = U  # the top rows unlabelled
    masked = build_loss(name, outputs, regions, masked=True)(logits, sparse)
    dense = build_loss(name, outputs, regions)(logits[:, :, 3:], target[:, 3:])
    assert masked.item() == pytest.approx(dense.item(), rel=1e-5)
    # on a dense target the masked loss is the dense one
    assert build_loss(name, outputs, regions, masked=True)(logits, target).item() == \
        pytest.approx(build_loss(name, outputs, regions)(logits, target).item(), rel=1e-6)


def test_a_window_with_nothing_labelled_gives_a_finite_loss_and_no_gradient():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    loss = build_loss("dice_ce", 2, masked=True)(logits, torch.full((1, 4, 4), U))
    loss.backward()
    assert torch.isfinite(loss) and torch.count_nonzero(logits.grad) == 0


# -- windows, augmentation, resolution, scores -----------------------------------------------------
def test_windows_of_a_sparse_mask_hold_its_strokes():
    mask = np.full((256, 256), U, np.uint8)
    mask[200, 10:30] = 0  # one background stroke, one object stroke
    mask[40, 220:230] = 1
    image = np.zeros((1, 256, 256), np.float32)
    from napari_unet.engine.data.normalization import compute_norm_stats
    norm = compute_norm_stats([image], "none")
    sampler = PatchSampler([image], [mask], (32, 32), (32, 32), 8, norm, seed=3, sparse=True)
    for step in range(5):
        _, y = sampler.batch(step)
        assert all((window != U).any() for window in y)
    dense = PatchSampler([image], [mask], (32, 32), (32, 32), 8, norm, seed=3)
    assert any(not (window != U).any() for step in range(5) for window in dense.batch(step)[1])


def test_augmentation_moves_unlabelled_pixels_with_the_mask():
    y = torch.full((4, 16, 16), U, dtype=torch.long)
    y[:, 4:9, 2:12] = 1
    y[:, 10, :] = 0
    augment = Augmenter(2, hflip=0.5, vflip=0.5, rot90=(0, 1, 2, 3), crop_resize=(0.6, 1.0),
                        elastic=1.0, elastic_magnitude=2.0)
    x2, y2 = augment((y == U)[:, None].float(), y, torch.Generator().manual_seed(2))
    assert set(torch.unique(y2).tolist()) <= {0, 1, U}
    assert (y2 == U).any() and (y2 == 1).any()


def test_downsampling_keeps_a_block_labelled_when_any_of_it_is():
    volume = np.full((4, 4, 4), U, np.uint8)
    volume[0] = 0  # one painted slice of every two (factor 2 along Z)
    volume[0, :2, :2] = 1
    small = downsample_labels(volume, 2)
    assert small[0].tolist() == [[1, 0], [0, 0]] and (small[1] == U).all()
    regions = downsample_labels(np.where(volume == 1, 3, volume).astype(np.uint8), 2, BRATS)
    assert regions[0].tolist() == [[3, 0], [0, 0]] and (regions[1] == U).all()


def test_scores_leave_unlabelled_pixels_out():
    truth = np.array([[1, 1, U, U], [0, 0, U, U]])
    predicted = np.array([[1, 0, 1, 1], [0, 0, 1, 1]])
    accumulator = DiceAccumulator(2)
    accumulator.update(predicted, truth)
    assert accumulator.dice_per_class() == pytest.approx([2 * 2 / 5, 2 * 1 / 3])


# -- files, the widget's training set, a run ---------------------------------------------------
def _stroke_pairs(folder, n=4, size=48, seed=0):
    """Images of bright squares, painted sparsely: a background stroke (value 1) and an
    object stroke (value 2) each; everything else 0 (unknown)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(n):
        image = rng.normal(20, 5, (size, size)).astype(np.float32)
        image[10:30, 10:30] += 100
        painted = np.zeros((size, size), np.uint8)
        painted[40, 5:40] = 1
        painted[20, 12:28] = 2
        tifffile.imwrite(folder / "images" / f"s{i}.tif", image)
        tifffile.imwrite(folder / "masks" / f"s{i}.tif", painted)
    return folder


def test_files_painted_sparsely_load_as_unlabelled_pixels(tmp_path):
    folder = _stroke_pairs(tmp_path / "data")
    dense = load_dataset(folder)
    sparse = load_dataset(folder, unlabeled="ignore", background_value=1)
    assert not dense.sparse and dense.num_classes == 3
    assert sparse.sparse and sparse.num_classes == 2
    mask = sparse.masks[0]
    assert (mask[40, 5:40] == 0).all() and (mask[20, 12:28] == 1).all()
    assert (mask == U).sum() == mask.size - 35 - 16


def test_the_widgets_written_masks_read_back_the_same(tmp_path):
    painted = np.zeros((2, 32, 32), np.uint8)
    painted[0, 3, :] = 1
    painted[0, 10, 4:9] = 2
    image = np.random.default_rng(0).normal(size=(2, 32, 32)).astype(np.float32)
    report = write_training_pairs(tmp_path / "data", [("stack", image, painted)], 2,
                                  unlabeled="ignore", background_value=1)
    assert report["kept"] == 1  # the painted slice only
    written = tifffile.imread(tmp_path / "data" / "masks" / "stack_z0000.tif")
    expected, _ = mask_classes(painted[0], unlabeled="ignore")
    assert np.array_equal(written, expected)
    loaded = load_dataset(tmp_path / "data", ignore_value=U)
    assert np.array_equal(loaded.masks[0], expected)


def _tiny_2d(**overrides):
    values = dict(steps=8, batch_size=2, patch_size=[32, 32], lr=3e-3, amp="off",
                  device="cpu", model_options={"base_channels": 4, "depth": 3,
                                               "padding": "same"},
                  val_every=4, checkpoint_every=4, log_every=1, fold=0, folds=4,
                  normalization="zscore", loss="dice_ce")
    values.update(overrides)
    return preset_config("isbi2012", **values)


def test_a_run_trains_from_strokes_and_scores_on_labelled_pixels(tmp_path):
    data = load_dataset(_stroke_pairs(tmp_path / "data"), unlabeled="ignore")
    config = _tiny_2d(unlabeled="ignore")
    events = list(train(config, data, run_dir=tmp_path / "run"))
    losses = [e.loss for e in events if type(e).__name__ == "Progress"]
    assert len(losses) == 8 and all(np.isfinite(losses))
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint.config.unlabeled == "ignore"
    metrics = evaluate(checkpoint, data, amp="off", device="cpu")
    assert 0.0 <= metrics["foreground_dice"] <= 1.0 and np.isfinite(metrics["soft_dice"])


def test_a_volume_with_some_painted_slices_trains_a_3d_model(tmp_path):
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(1, 16, 32, 32)).astype(np.float32)
    volume[:, 4:12, 8:24, 8:24] += 3
    truth = np.zeros((16, 32, 32), np.uint8)
    truth[4:12, 8:24, 8:24] = 1
    painted = np.full_like(truth, U)
    painted[::5] = truth[::5]  # every 5th axial slice
    config = preset_config("volume3d", steps=4, batch_size=1, patch_size=[16, 16, 16],
                           amp="off", device="cpu", val_every=1000, checkpoint_every=1000,
                           model_options={"base_channels": 4, "max_channels": 8, "depth": 3},
                           ignore_value=U)
    events = list(train(config, [volume, volume], [painted, painted], run_dir=tmp_path / "r"))
    losses = [e.loss for e in events if type(e).__name__ == "Progress"]
    assert len(losses) == 4 and all(np.isfinite(losses))
    said = [e.text for e in events if type(e).__name__ == "Message" and e.level == "info"]
    assert any(text.startswith("25% of the training pixels are labelled") for text in said)


def test_the_cli_trains_and_evaluates_strokes_and_refuses_a_background_of_0(tmp_path, capsys):
    from napari_unet.cli import main

    folder = _stroke_pairs(tmp_path / "data")
    tiny = ["--steps", "4", "--batch-size", "2", "--patch-size", "32", "--base-channels", "4",
            "--amp", "off", "--device", "cpu", "--preset", "isbi2012"]
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "bad"),
                 "--unlabeled", "ignore", "--background-value", "0", *tiny]) == 2
    assert "paint the background with another value" in capsys.readouterr().err
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "run"),
                 "--unlabeled", "ignore", "--background-value", "1", *tiny]) == 0
    assert load_checkpoint(tmp_path / "run").config.unlabeled == "ignore"
    capsys.readouterr()
    # evaluate reads the masks under the run's rule: 35 + 16 labelled pixels an image
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--data", str(folder),
                 "--amp", "off", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("evaluation: ")
    # dense 0/255 test masks under the run's rule (0 unknown): the flag that reads them
    dense = tmp_path / "dense"
    (dense / "masks").mkdir(parents=True)
    (dense / "images").symlink_to(folder / "images", target_is_directory=True)
    for path in sorted((folder / "masks").glob("*.tif")):
        tifffile.imwrite(dense / "masks" / path.name, np.where(
            tifffile.imread(path) == 2, 255, 0).astype(np.uint8))
    evaluate_dense = ["evaluate", "--run", str(tmp_path / "run"), "--data", str(dense),
                      "--amp", "off", "--device", "cpu"]
    assert main(evaluate_dense) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "values found: 0, 255" in err[0]
    assert "use --unlabeled background" in err[0]
    assert main([*evaluate_dense, "--unlabeled", "background"]) == 0


# -- what the masks hold against the values the rule names (issue 32) ------------------------------
def _nines(folder):
    """Masks whose unlabelled pixels are 9 (0 background, 1 object)."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(2):
        mask = np.full((32, 32), 9, np.uint8)
        mask[:12], mask[20:28, 20:28] = 0, 1
        tifffile.imwrite(folder / "images" / f"s{i}.tif",
                         np.random.default_rng(i).normal(size=(32, 32)).astype(np.float32))
        tifffile.imwrite(folder / "masks" / f"s{i}.tif", mask)
    return folder


def test_an_ignore_value_no_mask_holds_is_said_with_the_values_found(tmp_path):
    folder = _nines(tmp_path / "data")
    data = load_dataset(folder, ignore_value=5)
    [note] = data.notes
    assert "no mask holds --ignore-value 5 (values found: 0, 1, 9)" in note
    assert "pass --ignore-value 9" in note and "10-class head" in note
    assert load_dataset(folder, ignore_value=9).notes == []
    # the run says it as a warning before its first step
    events = train(_tiny_2d(steps=1, fold=None, ignore_value=5, val_every=1000,
                            checkpoint_every=1000), data, run_dir=tmp_path / "run")
    said = [(e.level, e.text) for e in events if type(e).__name__ == "Message"]
    assert ("warning", note) in said


def test_a_training_part_with_no_labelled_pixel_is_refused_before_the_run_folder(tmp_path):
    from napari_unet.engine.data.dataset import split_folds

    labelled = np.zeros((32, 32), np.uint8)
    labelled[8:16, 8:16] = 1
    unlabelled = np.full((32, 32), 9, np.uint8)
    train_part, _ = split_folds(2, 0, 2, 0)
    masks = [unlabelled, labelled] if train_part[0] == 0 else [labelled, unlabelled]
    images = [np.random.default_rng(i).normal(size=(32, 32)).astype(np.float32)
              for i in range(2)]
    config = _tiny_2d(steps=1, fold=0, folds=2, ignore_value=9)
    with pytest.raises(DataError, match="no training mask holds a labelled pixel"):
        next(train(config, images, masks, run_dir=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_the_mask_rule_checks_are_the_widgets_too():
    from napari_unet.masks import check_labels, check_mask_values

    strokes = np.zeros((8, 8), np.uint8)
    strokes[1], strokes[5] = 1, 2
    assert check_labels([strokes], unlabeled="ignore", background_value=1) == []
    with pytest.raises(DataError, match="painted background value 3 .*values found: 0, 1, 2"):
        check_labels([strokes], unlabeled="ignore", background_value=3)
    with pytest.raises(DataError, match="no mask holds a labelled pixel"):
        check_mask_values([0], unlabeled="ignore")
    binary = check_mask_values([0, 255], instances="boundary")
    assert len(binary) == 1 and "touching objects merge" in binary[0]
    assert check_mask_values([0, 1, 2, 3], instances="boundary") == []
