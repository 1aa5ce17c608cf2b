"""The Train widget says which label value is the object, shows it before Start, and trains on
what the CLI trains on for the same files and preset (ISBI's 0 = membrane, 255 = interior)."""
from pathlib import Path

import numpy as np
import pytest
import tifffile
from gui_support import PLUGIN, gui, small_cpu_options

napari = pytest.importorskip("napari")

from napari_unet import runs  # noqa: E402
from napari_unet.engine import load_dataset  # noqa: E402

ISBI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012"


def isbi_slices(n=3, size=64):
    """ISBI's first slices (or made-up ones with its conventions where the data is absent)."""
    if (ISBI / "train-labels.tif").exists():
        return (tifffile.imread(ISBI / "train-volume.tif")[:n, :size, :size],
                tifffile.imread(ISBI / "train-labels.tif")[:n, :size, :size])
    images = np.random.default_rng(0).integers(0, 255, (n, size, size), dtype=np.uint8)
    labels = np.where(np.indices((n, size, size))[2] % 8 == 0, 0, 255).astype(np.uint8)
    return images, labels


@gui
def test_invert_learns_isbi_membranes_as_the_cli_does(make_napari_viewer, tmp_path, monkeypatch):
    images, labels = isbi_slices()
    isbi = tmp_path / "isbi"
    isbi.mkdir()
    tifffile.imwrite(isbi / "train-volume.tif", images, photometric="minisblack")
    tifffile.imwrite(isbi / "train-labels.tif", labels, photometric="minisblack")

    viewer = make_napari_viewer()
    viewer.add_image(images, name="train-volume")
    viewer.add_labels(labels, name="train-labels")
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    assert train.labels_combo.current_choice == "train-labels"
    # before Start the widget says what napari's colours mean for training, and offers invert
    interior = 100 * (labels != 0).mean()
    assert train.learns.text().startswith(f"learns value(s) 255: {interior:.0f}% of the pixels")
    assert "tick invert" in train.learns.text()
    train.invert.setChecked(True)
    assert train.learns.text().startswith("learns everything but value(s) 255")
    train.show_learned()
    np.testing.assert_array_equal(viewer.layers["train-labels (learned)"].data, labels == 0)
    train.object_value.setValue(0)
    train.invert.setChecked(False)
    assert train.learns.text().startswith("learns value 0: ")
    assert train.mask_rule() == {"foreground_value": 0, "invert": False}

    # Start writes the training set (the child process is not needed to compare the data)
    started = []
    monkeypatch.setattr(train.runner, "start", lambda args, run_dir: started.append(args))
    train.preset.setCurrentText("isbi2012")
    train.labels_combo.value = viewer.layers["train-labels"]
    train.run_folder.setText(str(tmp_path / "run"))
    train.start_button.click()
    [args] = started
    assert args[args.index("--preset") + 1] == "isbi2012"
    data = Path(args[args.index("--data") + 1])
    assert data == tmp_path / "run" / runs.DATA
    from_widget = load_dataset(data, spatial_dims=2)
    from_cli = load_dataset(isbi, spatial_dims=2)  # napari_unet train --data isbi
    assert len(from_widget) == len(from_cli) == len(images)
    for widget_mask, cli_mask in zip(from_widget.masks, from_cli.masks, strict=True):
        np.testing.assert_array_equal(widget_mask, cli_mask)
    for widget_image, cli_image in zip(from_widget.images, from_cli.images, strict=True):
        np.testing.assert_array_equal(widget_image, cli_image)
    train._end_ui()


@gui
def test_strokes_with_unknown_unpainted_pixels_train_through_the_cli(make_napari_viewer,
                                                                   tmp_path, monkeypatch):
    from napari_unet.cli import main

    images, truth = isbi_slices(n=1, size=64)
    strokes = np.zeros((64, 64), np.uint8)
    strokes[5, :] = np.where(truth[0, 5] != 0, 1, 2)  # a line across: background 1, object 2
    strokes[30, 10:40] = np.where(truth[0, 30, 10:40] != 0, 1, 2)
    viewer = make_napari_viewer()
    viewer.add_image(images[0], name="em")
    viewer.add_labels(strokes, name="strokes")
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    assert "tick invert" not in train.learns.text()
    assert not train.unpainted.background.isEnabled()
    train.unpainted.meaning.setCurrentText(train.unpainted.UNKNOWN)
    assert train.unpainted.background.isEnabled()
    # a first model from strokes: the untouched 10 minutes become 1
    assert train.minutes.value() == 1 and train.train_for.by_minutes.isChecked()
    assert train.train_for.estimate.text().startswith("about 1 minute (")
    assert train.mask_rule() == {"foreground_value": None, "invert": False,
                                 "unlabeled": "ignore", "background_value": 1}
    labelled = 100 * np.count_nonzero(strokes) / strokes.size
    assert f"{labelled:.2g}% of the pixels labelled, the rest ignored" in train.learns.text()

    started = []
    monkeypatch.setattr(train.runner, "start", lambda args, run_dir: started.append(args))
    train.preset.setCurrentText("isbi2012")
    small_cpu_options(train, tmp_path / "run", steps=4)
    train.holdout.setChecked(False)
    train.start_button.click()
    [args] = started
    train._end_ui()
    data = Path(args[args.index("--data") + 1])
    written = tifffile.imread(next((data / "masks").glob("*.tif")))
    assert (written == 255).sum() == strokes.size - np.count_nonzero(strokes)
    # the child's command line trains on the painted pixels only
    assert main(["train", *args]) == 0
    config = (tmp_path / "run" / runs.CONFIG).read_text()
    assert "ignore_value: 255" in config


@gui
def test_strokes_without_the_painted_background_value_are_refused_before_writing(
        make_napari_viewer, tmp_path, monkeypatch):
    import napari_unet.widgets.train as train_module

    strokes = np.zeros((64, 64), np.uint8)
    strokes[5, :], strokes[30, 10:40] = 1, 2
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8),
                     name="em")
    viewer.add_labels(strokes, name="strokes")
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    train.unpainted.meaning.setCurrentText(train.unpainted.UNKNOWN)
    train.unpainted.background.setValue(7)
    errors, started = [], []
    monkeypatch.setattr(train_module, "show_error", errors.append)
    monkeypatch.setattr(train.runner, "start", lambda args, run_dir: started.append(args))
    small_cpu_options(train, tmp_path / "run", steps=2)
    train.start_button.click()
    assert not started and not (tmp_path / "run").exists()
    assert len(errors) == 1 and "painted background value 7" in errors[0]
    assert "values found: 0, 1, 2" in errors[0]
