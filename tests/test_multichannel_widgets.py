"""A multi-channel volume through the Train and Predict widgets: a crop of a real BraTS 2021
case (4 modalities, CZYX int16) opened by the reader as four channel layers, trained as one
4-channel input with the volume3d preset (tiny model, 2 steps, CPU) and predicted back.
"""
from pathlib import Path

import numpy as np
import pytest
import tifffile
from gui_support import PLUGIN, gui, small_cpu_options

napari = pytest.importorskip("napari")

from napari.layers import Image, Labels  # noqa: E402
from napari.utils.notifications import notification_manager  # noqa: E402

from napari_unet.widgets import ChannelGroup  # noqa: E402

BRATS2021 = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats2021"
CASE = "BraTS2021_00000"
TRAIN_TIMEOUT_MS = 180_000
needs_brats2021 = pytest.mark.skipif(not (BRATS2021 / f"{CASE}_image.tif").is_file(),
                                     reason=f"BraTS 2021 not found at {BRATS2021}")


def dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def errors_since(count):
    return [n for n in notification_manager.records[count:] if str(n.severity) == "error"]


def brats_crop(folder: Path, size=(32, 48, 48)):
    """A (4, 32, 48, 48) crop of the case around its tumour, and its labels, as TIF files
    named like the originals (so the reader treats them as BraTS)."""
    image = tifffile.imread(BRATS2021 / f"{CASE}_image.tif")
    labels = tifffile.imread(BRATS2021 / f"{CASE}_labels.tif")
    centre = np.round(np.argwhere(labels > 0).mean(axis=0)).astype(int)
    box = tuple(slice(max(0, c - s // 2), max(0, c - s // 2) + s)
                for c, s in zip(centre, size))
    crop, crop_labels = image[(slice(None), *box)], labels[box]
    assert crop.shape == (4, *size) and crop_labels.any()
    tifffile.imwrite(folder / "BraTS2021_crop_image.tif", crop, metadata={"axes": "CZYX"})
    tifffile.imwrite(folder / "BraTS2021_crop_labels.tif", crop_labels, metadata={"axes": "ZYX"})
    return crop, crop_labels


@needs_brats2021
@gui
@pytest.mark.one_binding
def test_a_4_channel_volume_trains_and_predicts_as_one_input(make_napari_viewer, qtbot,
                                                             tmp_path):
    crop, crop_labels = brats_crop(tmp_path)
    viewer = make_napari_viewer()
    channels = viewer.open(str(tmp_path / "BraTS2021_crop_image.tif"), plugin=PLUGIN)
    [labels] = viewer.open(str(tmp_path / "BraTS2021_crop_labels.tif"), plugin=PLUGIN)
    assert len(channels) == 4 and isinstance(labels, Labels)
    train = dock(viewer, "Train")

    # the picker offers the four channel layers as one image, and picks it by default
    group = train.image_combo.value
    assert isinstance(group, ChannelGroup) and group.layers == tuple(channels)
    assert train.image_combo.current_choice == "BraTS2021_crop_image (4 channels)"
    assert train.labels_combo.value is labels
    assert train.preset.currentText() == "brats", "a BraTS volume defaults to its own preset"
    train.preset.setCurrentText("volume3d")

    # images of different channel counts in one run: a notification, nothing starts
    train.add_current_pair()
    train.image_combo.value = channels[0]
    train.add_current_pair()
    seen = len(notification_manager.records)
    train.start_button.click()
    [error] = errors_since(seen)
    assert "different numbers of channels" in str(error.message)
    assert "'BraTS2021_crop_image (4 channels)' 4" in str(error.message)
    assert not train.runner.is_running() and not (tmp_path / "run").exists()
    train._remove_pair()
    assert train.pairs == [("BraTS2021_crop_image (4 channels)", labels.name)]

    small_cpu_options(train, tmp_path / "run", steps=2, patch_size=32)
    assert train.progress.format() == "step %v / %m" and train.progress.maximum() == 2
    train.start_button.click()
    qtbot.waitUntil(lambda: train.runner.exit_code is not None, timeout=TRAIN_TIMEOUT_MS)
    assert train.runner.exit_code == 0, train.runner.stderr_text[-2000:]
    # the engine was handed the channels first, in channel order, in their own type
    [written] = (tmp_path / "run" / "data" / "images").iterdir()
    assert written.name == "BraTS2021_crop_image.tif"
    np.testing.assert_array_equal(tifffile.imread(written), crop)
    from napari_unet.engine import load_checkpoint
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint.model.in_channels == 4 and checkpoint.model.spatial_dims == 3

    # "predict the image when training ends" predicts the 4-channel input
    qtbot.waitUntil(lambda: train.prediction is not None and not train.prediction.running,
                    timeout=60_000)
    assert train.prediction.error is None
    prediction = viewer.layers["BraTS2021_crop_image prediction"]
    assert isinstance(prediction, Labels) and prediction.data.shape == crop_labels.shape
    np.testing.assert_array_equal(prediction.scale, channels[0].scale)

    # the Predict widget: one channel of a 4-channel model is refused with a pointer to the
    # group; the group predicts
    predict = dock(viewer, "Predict")
    predict.set_model(tmp_path / "run")
    predict.image_combo.value = channels[0]
    seen, layers_before = len(notification_manager.records), len(viewer.layers)
    predict.predict_button.click()
    qtbot.waitUntil(lambda: not predict.job.running, timeout=60_000)
    [error] = errors_since(seen)
    message = str(error.message)
    assert message.startswith("prediction failed:") and "4" in message
    assert "choose 'BraTS2021_crop_image (4 channels)'" in message
    assert len(viewer.layers) == layers_before and predict.predict_button.isEnabled()

    predict.image_combo.value = next(value for value in predict.image_combo.choices
                                     if isinstance(value, ChannelGroup))
    predict.tile_size.setValue(32)
    predict.predict_button.click()
    qtbot.waitUntil(lambda: predict.last_job is not None and not predict.last_job.running,
                    timeout=60_000)
    assert predict.last_job.error is None
    again = viewer.layers["BraTS2021_crop_image prediction [1]"]
    assert again.data.shape == crop_labels.shape
    np.testing.assert_array_equal(again.data, prediction.data)
    assert isinstance(viewer.layers["BraTS2021_crop_image FLAIR"], Image)  # the viewer lives

    # corrected labels go back into the run's training set with all four channels
    correct = dock(viewer, "Correct")
    assert correct.image_combo.value == group
    correct.labels_combo.value = labels
    correct.run_combo.setEditText(str(tmp_path / "run"))
    correct.add_to_training_set()  # exactly the pair trained on: nothing new
    assert len(list((tmp_path / "run" / "data" / "images").iterdir())) == 1
    labels.data_setitem((np.array([0]), np.array([0]), np.array([0])), 2)
    correct.add_to_training_set()
    added = tifffile.imread(tmp_path / "run" / "data" / "images" / "BraTS2021_crop_image_2.tif")
    np.testing.assert_array_equal(added, crop)


@needs_brats2021
@gui
@pytest.mark.one_binding
def test_the_brats_preset_predicts_regions_with_a_threshold(make_napari_viewer, qtbot,
                                                            tmp_path):
    """A region model (whole tumour, tumour core, enhancing tumour as overlapping sigmoids):
    one probability layer per region, labels in BraTS convention, the slider re-cuts them."""
    from napari_unet.engine.labels import labels_from_regions

    brats_crop(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "BraTS2021_crop_image.tif"), plugin=PLUGIN)
    viewer.open(str(tmp_path / "BraTS2021_crop_labels.tif"), plugin=PLUGIN)
    train = dock(viewer, "Train")
    assert train.preset.currentText() == "brats"
    assert "trains whole tumour (1, 2, 3, 4), tumour core (1, 3, 4), enhancing tumour (4)" \
        in train.learns.text()
    small_cpu_options(train, tmp_path / "run", steps=2, patch_size=32)
    train.start_button.click()
    qtbot.waitUntil(lambda: train.runner.exit_code is not None, timeout=TRAIN_TIMEOUT_MS)
    assert train.runner.exit_code == 0, train.runner.stderr_text[-2000:]
    qtbot.waitUntil(lambda: train.prediction is not None and not train.prediction.running,
                    timeout=60_000)
    job = train.prediction
    assert job.error is None and job.binary
    name = "BraTS2021_crop_image"
    regions = [viewer.layers[f"{name} probability {region}"].data
               for region in ("whole tumour", "tumour core", "enhancing tumour")]
    np.testing.assert_array_equal(np.stack(regions), job.probabilities)
    assert f"{name} probability class 1" not in viewer.layers
    prediction = viewer.layers[f"{name} prediction"]
    assert set(np.unique(prediction.data)) <= {0, 1, 2, 4}

    predict = dock(viewer, "Predict")
    predict.last_job = job
    threshold = float(np.quantile(job.probabilities[0], 0.6))
    predict.set_threshold(threshold)
    expected = labels_from_regions(job.probabilities, job.head.regions, round(threshold, 2))
    np.testing.assert_array_equal(prediction.data, expected)
    assert prediction.data.any() and not prediction.data.all()


@gui
def test_which_layers_make_a_channel_group(make_napari_viewer):
    """Channel layers of one sample or file make one group, in channel order; a duplicated
    channel counts once; a lone layer, layers of different grids and other readers' single
    layers make none. Under a 2D preset a group of volumes is written slice by slice."""
    from napari.layers._source import layer_source  # what napari's readers set

    from napari_unet.widgets import channel_groups, image_choices, training_array

    viewer = make_napari_viewer()
    first, second, labels = viewer.open_sample(PLUGIN, "blobs3d")
    viewer.add_image(np.zeros((4, 8, 8), np.float32), name="alone")
    viewer.layers.move(viewer.layers.index(second), 0)  # the layer order is not channel order
    [group] = channel_groups(viewer)
    assert group.name == "blobs3d" and group.layers == (first, second)
    np.testing.assert_array_equal(group.data, np.stack([first.data, second.data]))
    labels_of_choices = [label for label, _ in image_choices(viewer)]
    assert labels_of_choices == ["blobs3d ch1", "blobs3d (2 channels)", "blobs3d ch0", "alone"]

    # napari's "Duplicate Layer" copies the metadata, the channel mark with it
    viewer.add_layer(Image(first.data, metadata=dict(first.metadata), name="copy of ch0"))
    assert [g.layers for g in channel_groups(viewer)] == [(first, second)]

    # another reader's layers from one file, one of another grid
    with layer_source(path="/data/two_channels.tif"):
        a = viewer.add_image(np.zeros((5, 8, 8)), name="a")
        b = viewer.add_image(np.ones((5, 8, 8)), name="b")
    with layer_source(path="/data/mixed.tif"):
        viewer.add_image(np.zeros((5, 8, 8)), name="c")
        viewer.add_image(np.zeros((5, 9, 8)), name="d")
    groups = channel_groups(viewer)
    assert [(g.name, g.layers) for g in groups[1:]] == [("two_channels", (a, b))]

    viewer.layers.remove(second)
    assert [g.name for g in channel_groups(viewer)] == ["two_channels"]

    zyx = groups[1]
    assert training_array(zyx, spatial_dims=3).shape == (2, 5, 8, 8)
    stacked = training_array(zyx, spatial_dims=2)
    assert stacked.shape == (5, 2, 8, 8) and (stacked[:, 1] == 1).all()
    assert training_array(a, spatial_dims=2) is a.data
