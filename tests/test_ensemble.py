"""Several models predicting as one (predict --run A --run B): the probabilities averaged,
the labels taken once from the average, models of different tasks refused in one line."""
import re

import numpy as np
import pytest
import tifffile
from export_support import make_run, real_image

from napari_unet.cli import main
from napari_unet.engine import Ensemble, load_checkpoint, load_models, predict_array
from napari_unet.errors import ConfigError

FAST = dict(device="cpu", amp="off", tile_size=[256], backend="torch")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ensemble")
    return [make_run(folder, "tiny_unet", seed=seed, name=f"fold{seed}") for seed in (0, 1)]


@pytest.fixture(scope="module")
def image():
    return real_image("tiny_unet")[:256, :256]


def test_an_ensemble_averages_the_probabilities_and_labels_the_average(runs, image):
    each = [predict_array(run, image, **FAST)[0] for run in runs]
    assert np.abs(each[0] - each[1]).max() > 0.05  # two different models
    probabilities, labels = predict_array(runs, image, **FAST)
    np.testing.assert_allclose(probabilities, (each[0] + each[1]) / 2, atol=1e-6)
    head = load_checkpoint(runs[0]).head
    np.testing.assert_array_equal(labels, head.labels(probabilities, 0.5))
    assert not np.array_equal(labels, head.labels(each[0], 0.5))  # not the first model's


def test_one_run_in_a_list_is_that_run(runs):
    model = load_models([runs[0]])
    assert not isinstance(model, Ensemble) and model.path == load_checkpoint(runs[0]).path
    assert isinstance(load_models(runs), Ensemble)


def test_models_of_different_tasks_are_refused(runs, tmp_path):
    three = make_run(tmp_path, "unet", classes=3, name="three_classes")
    with pytest.raises(ConfigError, match="predict different things"):
        load_models([runs[0], three])
    volume = make_run(tmp_path, "unet3d")
    with pytest.raises(ConfigError, match="are 2D and 3D models"):
        load_models([runs[0], volume])


def test_cli_predicts_with_several_runs(runs, image, tmp_path, capsys):
    source = tmp_path / "scan.tif"
    tifffile.imwrite(source, image)
    out, probs = tmp_path / "labels.tif", tmp_path / "probs.tif"
    assert main(["predict", "--run", str(runs[0]), "--run", str(runs[1]), "--input",
                 str(source), "--output", str(out), "--probabilities", str(probs), "--device",
                 "cpu", "--amp", "off", "--tile-size", "256", "--backend", "torch"]) == 0
    expected, labels = predict_array(runs, image, **FAST)
    np.testing.assert_allclose(tifffile.imread(probs), expected, atol=1e-6)
    np.testing.assert_array_equal(tifffile.imread(out), labels)
    three = make_run(tmp_path, "unet", classes=3, name="three_classes")
    capsys.readouterr()
    assert main(["predict", "--run", str(runs[0]), "--run", str(three), "--input",
                 str(source), "--output", str(tmp_path / "x.tif")]) == 2
    error = capsys.readouterr().err.strip()
    assert "predict different things" in error and len(error.splitlines()) == 1, error
    assert main(["predict", "--run", str(runs[0]), "--run", str(runs[1]), "--input",
                 str(source), "--output", str(tmp_path / "x.zarr"), "--workers", "1"]) == 2
    assert "over --workers, predict with one --run" in capsys.readouterr().err


def test_cli_evaluates_an_ensemble_but_not_on_a_fold(runs, image, tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    tifffile.imwrite(images / "scan.tif", image)
    tifffile.imwrite(masks / "scan.tif", (image > 128).astype(np.uint8))
    fast = ["--device", "cpu", "--amp", "off", "--tile-size", "256"]
    dice = []
    for chosen in ([runs[0]], [runs[1]], runs):
        capsys.readouterr()
        assert main(["evaluate", *[f"--run={run}" for run in chosen], "--images",
                     str(images), "--masks", str(masks), *fast]) == 0
        dice.append(float(re.search(r"\bmean_dice=(\S+)", capsys.readouterr().out).group(1)))
    assert len(set(dice)) == 3, dice  # the ensemble is neither model
    assert main(["evaluate", "--run", str(runs[0]), "--run", str(runs[1]), "--images",
                 str(images), "--masks", str(masks), "--fold", "0"]) == 2
    assert "without --fold" in capsys.readouterr().err
