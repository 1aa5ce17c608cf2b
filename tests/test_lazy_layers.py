"""Layers read on demand (napari-ome-zarr's dask levels, zarr arrays) used by the widgets
without being loaded whole (napari_unet.lazy): prediction reads tile by tile into scratch
files, thresholds and label checks go slab by slab, a training pair of a lazy volume is its
painted box, a group of lazy channels stays lazy."""
import numpy as np
import pytest
import torch
from gui_support import PLUGIN, gui
from ome_zarr.writer import write_image

from napari_unet import lazy, training_set
from napari_unet.engine import predict_array, preset_config
from napari_unet.engine.checkpoint import save_checkpoint
from napari_unet.engine.training.setup import make_model
from napari_unet.io import read_image

da = pytest.importorskip("dask.array")


class CountingStore:
    """An array store that remembers how many elements each read returned."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim
        self.reads = []

    def __getitem__(self, key):
        part = self.array[key]
        self.reads.append(part.size)
        return part


def counted(array, chunks):
    store = CountingStore(array)
    return store, da.from_array(store, chunks=chunks, asarray=True)


def blobs(shape=(16, 64, 64), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, shape).astype(np.uint8)
    image[4:12, 10:40, 20:50] += 150
    return image


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory):
    """A 3D run of seeded weights (what is tested is the plumbing, not accuracy)."""
    folder = tmp_path_factory.mktemp("lazy")
    config = preset_config("volume3d", patch_size=[32], amp="off", device="cpu",
                           model_options={"base_channels": 4, "max_channels": 8})
    torch.manual_seed(0)
    save_checkpoint(folder / "run" / "checkpoints" / "best.pt",
                    model=make_model(config, 1, 2), config=config,
                    norm_stats=dict(mode="zscore", low=[], high=[], mean=[80.0], std=[60.0]),
                    step=1, best_dice=0.5, data_info={"num_classes": 2, "in_channels": 1})
    return folder / "run"


def test_slabs_boxes_and_scratch_arrays(monkeypatch):
    monkeypatch.setattr(lazy, "SLAB_BYTES", 3 * 40 * 30)  # three planes a slab
    labels = np.zeros((10, 40, 30), np.uint8)
    assert lazy.painted_box(labels) is None and not lazy.any_nonzero(labels)
    labels[7, 5, 6] = labels[8, 30, 2] = 3
    assert lazy.any_nonzero(labels)
    assert lazy.painted_box(labels) == (slice(7, 9), slice(5, 31), slice(2, 7))
    assert lazy.painted_box(labels, margin=4) == (slice(3, 10), slice(1, 35), slice(0, 11))
    assert [(s.start, s.stop) for s in lazy.slabs(labels.shape, 1)] == \
        [(0, 3), (3, 6), (6, 9), (9, 10)]
    probs = np.random.default_rng(0).random((2, 10, 40, 30)).astype(np.float32)
    out = lazy.scratch_array((10, 40, 30), np.uint8, "test")
    assert isinstance(out, np.memmap) and not out.any()
    assert str(out.filename).startswith(str(lazy.scratch_folder()))
    lazy.map_slabs(lambda p: p.argmax(0).astype(np.uint8), probs, out, lead=1)
    assert np.array_equal(out, probs.argmax(0))
    assert lazy.is_lazy(da.zeros(3)) and not lazy.is_lazy(out) and not lazy.is_lazy([1, 2])
    stacked = lazy.stack([da.zeros((4, 5)), np.ones((4, 5))])
    assert lazy.is_lazy(stacked) and stacked.shape == (2, 4, 5)


def test_a_lazy_volume_gives_its_painted_box_as_the_training_pair(tmp_path):
    image = blobs((40, 96, 96))
    store, lazy_image = counted(image, (8, 32, 32))
    labels = np.zeros(image.shape, np.uint8)
    labels[20, 50:60, 40:45] = 1  # one stroke on one plane
    report = training_set.write_training_pairs(tmp_path, [("big", lazy_image, labels)], 3)
    c = training_set.CONTEXT
    box = (slice(20 - c if c < 20 else 0, min(40, 21 + c)), slice(50 - c, min(96, 60 + c)),
           slice(40 - c, min(96, 45 + c)))
    assert report["written"] == ["big"] and report["cropped"] == [
        (f"big [{box[0].start}:{box[0].stop}, {box[1].start}:{box[1].stop}, "
         f"{box[2].start}:{box[2].stop}]")]
    assert np.array_equal(read_image(tmp_path / "images" / "big.tif"), image[box])
    assert np.array_equal(read_image(tmp_path / "masks" / "big.tif"), labels[box])
    assert sum(store.reads) < image.size  # the rest of the volume was never read
    # a channel-first group of lazy channels: the same box on each channel
    two = lazy.stack([lazy_image, lazy_image + 1])
    training_set.write_training_pairs(tmp_path / "group", [("g", two, labels)], 3)
    assert np.array_equal(read_image(tmp_path / "group" / "images" / "g.tif"),
                          np.stack([image[box], image[box] + 1]))


def test_the_widgets_prediction_of_a_lazy_image_reads_tiles_into_scratch_files(volume_run):
    from napari_unet.engine import PredictionDone
    from napari_unet.widgets.prediction_job import _predict_events

    image = blobs()
    store, lazy_image = counted(image, (4, 32, 32))
    done = [e for e in _predict_events(str(volume_run / "checkpoints" / "best.pt"), lazy_image,
                                       {"tile_size": [32], "device": "cpu", "axes": "ZYX"})
            if isinstance(e, PredictionDone)][0]
    assert isinstance(done.probabilities, np.memmap) and isinstance(done.labels, np.memmap)
    assert max(store.reads) <= 4 * 32 * 32  # chunk by chunk, never the whole volume
    probabilities, labels = predict_array(volume_run / "checkpoints" / "best.pt", image,
                                          tile_size=[32], device="cpu")
    np.testing.assert_allclose(done.probabilities, probabilities, atol=1e-6)
    assert np.array_equal(done.labels, labels)


@gui
def test_predict_an_ome_zarr_layer_and_threshold_it_without_loading_it(
        make_napari_viewer, qtbot, volume_run, tmp_path, monkeypatch):
    import zarr

    image = blobs()
    group = zarr.open_group(str(tmp_path / "blobs.zarr"), mode="w")
    write_image(image, group, axes="zyx", scale_factors=[{"z": 1, "y": 2, "x": 2}],
                storage_options={"chunks": (4, 32, 32)})
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(tmp_path / "blobs.zarr"), plugin="napari-ome-zarr")
    assert layer.multiscale and lazy.is_lazy(layer.data[0])
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")
    widget.model_combo.setCurrentText(str(volume_run))
    widget.image_combo.value = layer
    widget.tile_size.setValue(32)
    widget.device.setCurrentText("cpu")
    monkeypatch.setattr(lazy, "SLAB_BYTES", 64 * 64 * 4 * 3)  # several slabs here
    widget.predict_button.click()
    qtbot.waitUntil(lambda: widget.job is not None and not widget.job.running, timeout=120_000)
    job = widget.job
    assert job.error is None and job.lazy
    labels = job.labels_layer.data
    assert isinstance(labels, np.memmap) and str(labels.filename).startswith(
        str(lazy.scratch_folder()))
    probabilities, expected = predict_array(volume_run / "checkpoints" / "best.pt", image,
                                            tile_size=[32], device="cpu", backend="auto")
    np.testing.assert_allclose(job.probabilities, probabilities, atol=1e-6)
    assert np.array_equal(labels, expected)
    widget.set_threshold(0.3)  # re-cut slab by slab into the same scratch labels
    assert job.labels_layer.data is labels
    assert np.array_equal(labels, probabilities >= 0.3)
