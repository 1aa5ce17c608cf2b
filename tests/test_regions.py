"""BraTS on real MRI: region training, per-case z-score normalisation, low-resolution runs."""
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.engine import (
    Validation,
    evaluate,
    load_checkpoint,
    load_dataset,
    predict_array,
    preset_config,
    sample_dataset,
    train,
)
from napari_unet.engine.config import check_regions
from napari_unet.engine.data.normalization import (
    NormStats,
    compute_norm_stats,
    normalize,
    stats_for_image,
)
from napari_unet.engine.data.resolution import (
    downsample_image,
    downsample_labels,
    upsample_probabilities,
)
from napari_unet.engine.labels import labels_from_regions, region_targets, region_values
from napari_unet.engine.metrics import DiceAccumulator, region_dice
from napari_unet.engine.prediction.predict import predict_file
from napari_unet.engine.training.losses import build_loss
from napari_unet.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

BRATS = check_regions("brats")


def test_brats_regions_and_the_labels_they_write_back():
    assert BRATS == [[1, 2, 3, 4], [1, 3, 4], [4]]
    assert region_values(BRATS) == [2, 1, 4]  # oedema, core, enhancing
    # 2021's labels survive the round trip exactly; 2013's 3 (non-enhancing core) becomes 1,
    # which is in the same regions, so every region Dice is 1
    for labels in (np.array([0, 1, 2, 4, 4, 2, 0]), np.array([0, 1, 2, 3, 4, 3])):
        target = region_targets(torch.from_numpy(labels)[None], BRATS)[0]
        assert target.tolist()[0] == [float(v > 0) for v in labels]
        assert target.tolist()[1] == [float(v in (1, 3, 4)) for v in labels]
        assert target.tolist()[2] == [float(v == 4) for v in labels]
        back = labels_from_regions(target.numpy(), BRATS)
        assert set(back.tolist()) <= {0, 1, 2, 4}
        assert region_dice(back, labels, BRATS) == [1.0, 1.0, 1.0]
    np.testing.assert_array_equal(
        labels_from_regions(region_targets(torch.tensor([[0, 1, 2, 4]]), BRATS)[0], BRATS),
        [0, 1, 2, 4])


def test_region_rules_are_checked():
    assert check_regions([[4, 2, 1], [1, 4], [4]]) == [[1, 2, 4], [1, 4], [4]]
    with pytest.raises(ConfigError, match="nested"):
        check_regions([[1, 2], [3]])
    with pytest.raises(ConfigError, match="unknown"):
        check_regions("kidney")
    with pytest.raises(ConfigError, match="1 or more"):
        check_regions([[0, 1]])
    with pytest.raises(ConfigError, match="adaptive"):
        preset_config("volume3d", regions="brats", loss="adaptive")
    with pytest.raises(ConfigError, match="not ce"):  # caught when the config is read
        preset_config("volume3d", regions="brats", loss="ce")
    assert preset_config("volume3d", regions="brats").regions == BRATS


def test_region_loss_is_bce_plus_dice_per_region():
    torch.manual_seed(0)
    target = torch.tensor([0, 1, 2, 4]).repeat(2, 4, 1)  # (2, 4, 4)
    logits = torch.randn(2, 3, 4, 4)
    loss = build_loss("dice_ce", 3, BRATS)(logits, target)
    regions = region_targets(target, BRATS)
    probs = torch.sigmoid(logits)
    bce = torch.nn.functional.binary_cross_entropy(probs, regions)
    dice = [(2 * (probs[:, r] * regions[:, r]).sum() + 1) / (probs[:, r].sum()
                                                           + regions[:, r].sum() + 1)
            for r in range(3)]
    assert loss.item() == pytest.approx((bce + 1 - torch.stack(dice).mean()).item(), rel=1e-5)
    perfect = (regions * 40 - 20)
    assert build_loss("dice_ce", 3, BRATS)(perfect, target).item() < 0.01
    with pytest.raises(ConfigError, match="dice_ce"):
        build_loss("adaptive", 3, BRATS)


def test_region_dice_from_the_confusion_matches_the_regions_counted_voxel_by_voxel():
    rng = np.random.default_rng(0)
    truth = rng.choice([0, 1, 2, 4], size=(6, 7, 8))
    pred = rng.choice([0, 1, 2, 3, 4], size=(6, 7, 8))
    accumulator = DiceAccumulator(5)
    for half in (slice(0, 3), slice(3, 6)):  # accumulated over two batches
        accumulator.update(pred[half], truth[half])
    expected = []
    for region in BRATS:  # the BraTS rules: wt = any tumour, tc = not oedema, et = 4
        a, b = np.isin(pred, region), np.isin(truth, region)
        expected.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert expected[0] == pytest.approx(2 * ((pred > 0) & (truth > 0)).sum()
                                        / ((pred > 0).sum() + (truth > 0).sum()))
    assert accumulator.region_dice(BRATS) == pytest.approx(expected)
    assert region_dice(pred, truth, BRATS) == pytest.approx(expected)


def test_zscore_case_normalises_each_image_by_itself():
    rng = np.random.default_rng(1)
    brain = rng.normal(300, 50, size=(2, 6, 8, 8))
    brain[:, :, :2] = 0  # outside the brain: a constant background, left out of the statistics
    brighter = brain * 5  # another scanner: every intensity 5x
    stats = compute_norm_stats([brain, brighter], "zscore_case")
    assert stats.mode == "zscore_case" and stats.mean == []
    one, other = (normalize(image, stats_for_image(image, stats)) for image in (brain, brighter))
    np.testing.assert_allclose(one, other, atol=1e-4)
    inside = one[:, :, 2:]
    assert abs(inside.mean()) < 0.05 and inside.std() == pytest.approx(1.0, abs=0.05)
    with pytest.raises(DataError, match="stats_for_image"):
        normalize(brain, stats)


def test_downsampling_keeps_thin_inner_regions_and_upsampling_restores_the_grid():
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[2:6, 2:6, 2:6] = 2  # an oedema cube of 2x2x2 blocks
    labels[2:4, 2:4, 2:4] = 4  # one block of enhancing tumour
    labels[4:6, 4:6, 4] = 1    # half a block of necrosis, half oedema: tumour core wins it
    small = downsample_labels(labels, 2, BRATS)
    assert small.shape == (4, 4, 4)
    assert (small > 0).sum() == 8 and small[1, 1, 1] == 4 and small[2, 2, 2] == 1
    assert (small == 2).sum() == 6
    odd = downsample_labels(np.ones((5, 5, 5), np.uint8), 2)
    assert odd.shape == (3, 3, 3) and odd.min() == 1
    image = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    assert downsample_image(image, 2)[0, 0, 0] == pytest.approx(image[0, :2, :2].mean())
    probs = torch.rand(3, 4, 4, 4)
    full = upsample_probabilities(probs, 2, (7, 8, 8))
    assert tuple(full.shape) == (3, 7, 8, 8)
    assert float(full.min()) >= 0 and float(full.max()) <= 1


def brats_like(n=4, size=32, seed=0):
    """blobs3d as BraTS: the shell is oedema (2), the core enhancing (4); each case's four
    channels at its own raw scale and offset, as scanners give them."""
    data = sample_dataset("blobs3d", n=n, size=size, channels=4, seed=seed)
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for image, mask in zip(data.images, data.masks):
        scale = rng.uniform(100, 800, size=(4, 1, 1, 1))
        images.append((image * scale + 2 * scale).astype(np.float32))
        masks.append(np.select([mask == 2, mask == 1], [4, 2], 0).astype(np.uint8))
    return images, masks


def region_config(**overrides):
    values = dict(steps=40, batch_size=2, patch_size=[16, 16, 16], lr=3e-3, amp="off",
                  model_options={"base_channels": 8, "depth": 3}, val_every=20,
                  checkpoint_every=20, log_every=10, fold=0, folds=4, loss="dice_ce",
                  regions="brats", normalization="zscore_case", resample=2,
                  lr_schedule="constant", foreground_oversample=0.5)
    values.update(overrides)
    return preset_config("volume3d", **values)


def test_region_training_at_half_resolution_end_to_end(tmp_path):
    images, masks = brats_like()
    events = list(train(region_config(), images, masks, run_dir=tmp_path / "run"))
    validations = [e for e in events if isinstance(e, Validation)]
    assert len(validations[-1].dice_per_class) == 3  # WT, TC, ET
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert checkpoint.head.regions == tuple(map(tuple, BRATS)) and checkpoint.head.outputs == 3
    assert checkpoint.model.num_classes == 3 and not hasattr(checkpoint.model, "regions")
    assert checkpoint.norm_stats["mode"] == "zscore_case" and checkpoint.config.resample == 2
    options = dict(tile_size=[16, 16, 16], amp="off", device="cpu")
    probs, labels = predict_array(checkpoint, images[0], **options)
    assert probs.shape == (3, 32, 32, 32) and labels.shape == (32, 32, 32)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
    # the written labels are the regions' own decision, in BraTS convention
    np.testing.assert_array_equal(labels, labels_from_regions(probs, BRATS))
    from napari_unet.engine.prediction.predict import keep_largest_object

    largest = labels.copy()
    keep_largest_object(largest)
    np.testing.assert_array_equal(predict_array(checkpoint, images[0], keep_largest=True,
                                                **options)[1], largest)
    assert region_dice(labels, masks[0], BRATS)[0] > 0.5
    metrics = evaluate(checkpoint, load_dataset(images=_save(tmp_path, images[1], masks[1])[0],
                                                masks=_save(tmp_path, images[1], masks[1])[1],
                                                spatial_dims=3),
                       tile_size=[16, 16, 16], amp="off", device="cpu")
    assert len(metrics["region_dice"]) == 3
    assert metrics["wt_dice"] == metrics["region_dice"][0]
    # a file prediction writes BraTS labels and the three region probabilities
    image_path, _ = _save(tmp_path, images[2], masks[2])
    list(predict_file(checkpoint, image_path, tmp_path / "labels.tif",
                      probabilities=tmp_path / "probs.tif", **options))
    written = tifffile.imread(tmp_path / "labels.tif")
    np.testing.assert_array_equal(written, predict_array(checkpoint, images[2], **options)[1])
    assert tifffile.imread(tmp_path / "probs.tif").shape == (3, 32, 32, 32)
    # a bioimage.io package cannot describe per-case z-score or low resolution: one line
    from napari_unet.engine.export.formats import export_model

    with pytest.raises(ConfigError, match="bioimage.io package cannot describe"):
        export_model(checkpoint.path, "bioimageio", tmp_path / "model.zip")
    assert not (tmp_path / "model.zip").exists()


def test_a_region_that_no_mask_holds_is_said_before_training(tmp_path):
    from napari_unet.engine import Message, Progress

    images, masks = brats_like(n=2, size=16)
    masks = [np.where(m == 4, 1, m).astype(np.uint8) for m in masks]  # no enhancing tumour
    events = train(region_config(steps=1, fold=None, resample=1, patch_size=[16, 16, 16]),
                   images, masks, run_dir=tmp_path / "run")
    said = []
    for event in events:
        if isinstance(event, Progress):
            break
        if isinstance(event, Message) and event.level == "warning":
            said.append(event.text)
    events.close()
    assert said == [("region enhancing tumour (mask values 4) is in no mask (values found: 0, "
                    "1, 2): its output learns nothing; check the masks' values or the regions")]


def test_the_scale_of_a_case_does_not_change_a_zscore_case_prediction(tmp_path):
    images, masks = brats_like(n=4, size=32, seed=3)
    list(train(region_config(steps=4, resample=1), images, masks, run_dir=tmp_path / "r"))
    checkpoint = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    options = dict(tile_size=[16, 16, 16], amp="off", device="cpu")
    first, _ = predict_array(checkpoint, images[0], **options)
    scaled, _ = predict_array(checkpoint, images[0] * 7.0, **options)
    np.testing.assert_allclose(first, scaled, atol=1e-4)


def _save(tmp_path, image, mask):
    image_path, mask_path = tmp_path / "case_image.tif", tmp_path / "case_labels.tif"
    tifffile.imwrite(image_path, image)
    tifffile.imwrite(mask_path, mask)
    return image_path, mask_path


def test_brats2021_loads_as_four_channel_volumes_with_its_labels():
    data = load_dataset(SHARED_DATA / "brats2021")
    assert len(data) == 7 and data.spatial_dims == 3 and data.in_channels == 4
    assert data.images[0].dtype == np.int16
    values = set()
    for mask in data.masks:
        values |= set(np.unique(mask).tolist())
    assert values == {0, 1, 2, 4}
    stats = stats_for_image(data.images[0], NormStats("zscore_case", [], [], [], []))
    assert len(stats.mean) == 4 and min(stats.std) > 1  # raw scanner intensities


def test_cli_trains_and_evaluates_a_brats_folder_with_the_brats_preset(tmp_path, capsys):
    from napari_unet.cli import main

    images, masks = brats_like(n=4, size=32, seed=5)
    folder = tmp_path / "brats"
    folder.mkdir()
    for i, (image, mask) in enumerate(zip(images, masks)):  # BraTS 2021's files: int16 CZYX
        tifffile.imwrite(folder / f"case{i}_image.tif", image.astype(np.int16))
        tifffile.imwrite(folder / f"case{i}_labels.tif", mask)
    run = tmp_path / "run"
    assert main(["train", "--preset", "brats", "--data", str(folder), "--out", str(run),
                 "--fold", "0", "--folds", "4", "--steps", "4", "--batch-size", "1",
                 "--patch-size", "16",
                 "--base-channels", "4", "--set", "resample=2", "--amp", "off",
                 "--device", "cpu", "--val-every", "2", "--checkpoint-every", "2"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(folder), "--fold", "0",
                 "--tile-size", "16", "--amp", "off", "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    printed = dict(item.split("=") for item in line.split()[1:])
    assert {"wt_dice", "tc_dice", "et_dice"} <= set(printed)
    assert load_checkpoint(run).head.keys == ["wt", "tc", "et"]


def test_keep_largest_clears_every_object_but_the_largest():
    from napari_unet.engine.prediction.predict import keep_largest_object

    labels = np.zeros((6, 12, 12), np.uint8)
    labels[1:5, 1:6, 1:6] = 2   # the tumour: oedema around
    labels[2:4, 2:4, 2:4] = 4   # its enhancing core
    labels[1:3, 8:10, 8:10] = 2  # a smaller false detection elsewhere
    labels[4, 10, 10] = 4        # and a lone voxel
    before = labels.copy()
    keep_largest_object(labels)
    assert (labels[:, 8:, 8:] == 0).all()
    np.testing.assert_array_equal(labels[:, :6, :6], before[:, :6, :6])
    diagonal = np.zeros((4, 4), np.uint8)
    diagonal[0, 0] = diagonal[1, 1] = 1  # touching at a corner: one object (full connectivity)
    diagonal[3, 3] = 1
    keep_largest_object(diagonal)
    assert diagonal.sum() == 2 and diagonal[3, 3] == 0


def test_keeping_the_parts_around_a_core_clears_only_coreless_parts():
    from napari_unet.engine.prediction.predict import keep_largest_object

    labels = np.zeros((6, 16, 16), np.uint8)
    labels[1:5, 1:5, 1:5] = 2    # a small tumour: oedema around
    labels[2, 2, 2] = 1          # with a core voxel
    labels[0:6, 8:16, 8:16] = 2  # bright cortex, larger than the tumour, with no core
    labels[1:3, 10:12, 1:3] = 2  # and a small coreless part
    before = labels.copy()
    keep_largest_object(labels, core_values=(1, 4))
    np.testing.assert_array_equal(labels[:, :6, :6], before[:, :6, :6])
    assert labels[:, 6:].sum() == 0 and labels[:, :, 6:].sum() == 0
    nothing_cored = before.copy()
    nothing_cored[2, 2, 2] = 2   # no core anywhere: the largest part stays, as keep_largest
    keep_largest_object(nothing_cored, core_values=(1, 4))
    assert (nothing_cored[:, 8:, 8:] == 2).all() and nothing_cored[:, :6, :6].sum() == 0


def test_a_region_model_with_plain_zscore_reloads_from_its_bioimageio_package(tmp_path):
    """One loader: the package of a region run predicts regions (a sigmoid per region, labels
    in BraTS convention), exactly as the run folder does."""
    from napari_unet.engine.export.formats import export_model

    images, masks = brats_like(n=4, size=32, seed=7)
    config = region_config(steps=4, resample=1, normalization="zscore", val_every=4,
                           checkpoint_every=4)
    list(train(config, images, masks, run_dir=tmp_path / "run"))
    package = export_model(tmp_path / "run", "bioimageio", tmp_path / "model.zip")
    run, reloaded = load_checkpoint(tmp_path / "run"), load_checkpoint(package)
    assert reloaded.head == run.head and reloaded.head.activation == "sigmoid"
    options = dict(tile_size=[16, 16, 16], amp="off", device="cpu", threshold=0.3)
    expected, expected_labels = predict_array(run, images[0], **options)
    probs, labels = predict_array(reloaded, images[0], **options)
    assert probs.shape == (3, 32, 32, 32)
    # independent sigmoids: the three channels do not sum to one as a softmax's would
    assert np.abs(probs.sum(axis=0) - 1).max() > 0.1
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_array_equal(labels, labels_from_regions(probs, BRATS, 0.3))
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
