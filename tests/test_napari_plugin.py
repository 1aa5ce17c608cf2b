"""The npe2 contributions: manifest, reader, writers and sample data, through napari itself."""
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from gui_support import PLUGIN, gui  # noqa: E402

napari = pytest.importorskip("napari")

from napari.layers import Image, Labels  # noqa: E402

from napari_unet import _napari  # noqa: E402

MANIFEST = Path(_napari.__file__).with_name("napari.yaml")
BRATS2021 = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats2021"
needs_brats2021 = pytest.mark.skipif(not (BRATS2021 / "BraTS2021_00000_image.tif").is_file(),
                                     reason=f"BraTS 2021 not found at {BRATS2021}")


# -- manifest and discovery -------------------------------------------------------------------------
def test_manifest_validates_with_npe2_cli():
    npe2 = Path(sys.executable).with_name("npe2")
    command = [str(npe2)] if npe2.exists() else [sys.executable, "-m", "npe2"]
    result = subprocess.run([*command, "validate", str(MANIFEST)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in (result.stdout + result.stderr).lower()


def test_napari_discovers_the_plugin():
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest(PLUGIN)
    assert manifest.display_name == "napari UNet"
    contributions = manifest.contributions
    assert {w.display_name for w in contributions.widgets} == {"Train", "Predict", "Correct"}
    assert {s.key for s in contributions.sample_data} == {"dagm", "em", "blobs3d"}
    assert {tuple(w.layer_types) for w in contributions.writers} == {("labels",), ("image",)}
    # every command's python_name resolves to a real object
    for command in contributions.commands:
        assert callable(command.exec) and command.python_name
        module, name = command.python_name.split(":")
        __import__(module)
        assert hasattr(sys.modules[module], name), command.python_name


# -- reader -------------------------------------------------------------------------------------------
def _open(viewer, path):
    return viewer.open(str(path), plugin=PLUGIN)


@gui
def test_reader_image_and_labels_files(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "scan.tif", image)
    masks = np.zeros((64, 64), np.uint16)
    masks[10:20, 10:20] = 1
    masks[40:50, 30:60] = 2
    tifffile.imwrite(tmp_path / "scan_labels.tif", masks)
    # an unnamed mask: integers with only a few values
    tifffile.imwrite(tmp_path / "painted.tiff", (masks > 0).astype(np.uint8))
    # float data is never labels, whatever the name says
    tifffile.imwrite(tmp_path / "mask_probabilities.tif", rng.random((32, 32), np.float32))

    [image_layer] = _open(viewer, tmp_path / "scan.tif")
    [labels_layer] = _open(viewer, tmp_path / "scan_labels.tif")
    [painted] = _open(viewer, tmp_path / "painted.tiff")
    [probabilities] = _open(viewer, tmp_path / "mask_probabilities.tif")
    assert isinstance(image_layer, Image) and image_layer.name == "scan"
    np.testing.assert_array_equal(image_layer.data, image)
    assert isinstance(labels_layer, Labels)
    np.testing.assert_array_equal(labels_layer.data, masks)
    assert isinstance(painted, Labels)
    assert isinstance(probabilities, Image)
    # labels read from a file are editable (not a read-only map)
    labels_layer.data_setitem((np.array([0]), np.array([0])), 3)
    assert labels_layer.data[0, 0] == 3


@gui
def test_reader_keeps_volumes_3d_and_splits_channels(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    volume = rng.random((12, 40, 48), np.float32)
    tifffile.imwrite(tmp_path / "volume.tif", volume, metadata={"axes": "ZYX"})
    czyx = rng.random((2, 6, 32, 40), np.float32)
    tifffile.imwrite(tmp_path / "czyx.tif", czyx, metadata={"axes": "CZYX"})
    # a plain 4D array without axis names is read as CZYX as well
    tifffile.imwrite(tmp_path / "unnamed4d.tif", czyx)
    # ImageJ hyperstacks store ZCYX
    zcyx = np.ascontiguousarray(np.moveaxis(czyx, 0, 1))
    tifffile.imwrite(tmp_path / "hyperstack.tif", zcyx, imagej=True, metadata={"axes": "ZCYX"})
    rgb = rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "photo.tif", rgb, photometric="rgb")

    [layer] = _open(viewer, tmp_path / "volume.tif")
    assert isinstance(layer, Image) and layer.data.shape == (12, 40, 48) and layer.ndim == 3
    for name in ("czyx", "unnamed4d", "hyperstack"):
        layers = _open(viewer, tmp_path / f"{name}.tif")
        assert len(layers) == 2, name
        for c, channel in enumerate(layers):
            assert isinstance(channel, Image) and channel.data.shape == (6, 32, 40)
            np.testing.assert_allclose(channel.data, czyx[c])
    [photo] = _open(viewer, tmp_path / "photo.tif")
    assert photo.rgb and photo.data.shape == (30, 20, 3)


@needs_brats2021
@gui
def test_reader_opens_a_brats2021_case_as_channels_of_one_volume(make_napari_viewer):
    """The real CZYX int16 file: four grey channel layers named by modality, one group,
    display ranges from the brain (not the zero background); the labels file: Labels."""
    from napari_unet.widgets import channel_groups

    viewer = make_napari_viewer()
    stem = "BraTS2021_00000"
    raw = tifffile.imread(BRATS2021 / f"{stem}_image.tif")
    assert raw.ndim == 4 and raw.shape[0] == 4 and raw.dtype == np.int16
    layers = _open(viewer, BRATS2021 / f"{stem}_image.tif")
    assert [layer.name for layer in layers] == [f"{stem}_image {m}"
                                                for m in ("FLAIR", "T1", "T1c", "T2")]
    for c, layer in enumerate(layers):
        assert isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb
        np.testing.assert_array_equal(layer.data, raw[c])
        assert layer.colormap.name == "gray"
        brain = raw[c][raw[c] != 0]
        low, high = layer.contrast_limits
        # inside the brain's range, well above the background's 0 and below the hottest voxel
        assert brain.min() < low < np.median(brain) < high < brain.max()
        np.testing.assert_allclose((low, high), np.percentile(brain, (0.5, 99.5)), rtol=0.05)
    assert [layer.visible for layer in layers] == [True, False, False, False]
    [group] = channel_groups(viewer)
    assert group.name == f"{stem}_image" and group.layers == tuple(layers)
    np.testing.assert_array_equal(group.data, raw)

    [labels] = _open(viewer, BRATS2021 / f"{stem}_labels.tif")
    assert isinstance(labels, Labels) and labels.data.shape == raw.shape[1:]
    assert set(np.unique(labels.data)) == {0, 1, 2, 4}
    # opening the same file again makes a second group, not one of eight channels
    _open(viewer, BRATS2021 / f"{stem}_image.tif")
    assert [len(g.layers) for g in channel_groups(viewer)] == [4, 4]


@gui
def test_reader_channel_names_and_ranges_of_other_multichannel_files(make_napari_viewer,
                                                                      tmp_path):
    """Only a 4-channel file named like BraTS gets modality names; others keep ch0.., and an
    image without a zero background keeps napari's own display range."""
    viewer = make_napari_viewer()
    rng = np.random.default_rng(3)
    four = rng.integers(100, 200, (4, 5, 16, 16), dtype=np.int16)
    tifffile.imwrite(tmp_path / "cells.tif", four, metadata={"axes": "CZYX"})
    tifffile.imwrite(tmp_path / "brats_three.tif", four[:3], metadata={"axes": "CZYX"})
    cells = _open(viewer, tmp_path / "cells.tif")
    assert [layer.name for layer in cells] == [f"cells ch{c}" for c in range(4)]
    assert all(layer.visible for layer in cells)
    three = _open(viewer, tmp_path / "brats_three.tif")
    assert [layer.name for layer in three] == [f"brats_three ch{c}" for c in range(3)]
    volume = rng.integers(1, 1000, (6, 16, 16), dtype=np.int16)
    tifffile.imwrite(tmp_path / "dense.tif", volume, metadata={"axes": "ZYX"})
    [dense] = _open(viewer, tmp_path / "dense.tif")
    assert tuple(dense.contrast_limits) == (volume.min(), volume.max())
    volume[:, :8] = 0  # half background: the range comes from the rest
    tifffile.imwrite(tmp_path / "background.tif", volume, metadata={"axes": "ZYX"})
    [background] = _open(viewer, tmp_path / "background.tif")
    assert background.contrast_limits[0] > 1


def test_reader_declines_what_it_cannot_read(tmp_path):
    (tmp_path / "broken.tif").write_bytes(b"this is not a TIF file at all")
    (tmp_path / "broken.png").write_bytes(b"this is not a PNG file at all")
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    tifffile.imwrite(tmp_path / "ok.tif", np.zeros((4, 4), np.uint8))
    for name in ("broken.tif", "broken.png", "empty.tif", "empty.jpg", "missing.tif",
                 "missing.png", "notes.txt"):
        assert _napari.get_reader(str(tmp_path / name)) is None, name
    assert _napari.get_reader(str(tmp_path)) is None, "a folder with a damaged image"
    (tmp_path / "text_only").mkdir()
    (tmp_path / "text_only" / "notes.txt").write_text("")
    assert _napari.get_reader(str(tmp_path / "text_only")) is None, "a folder without images"
    assert callable(_napari.get_reader(str(tmp_path / "ok.tif")))


@gui
def test_reader_opens_what_the_cli_reads(make_napari_viewer, tmp_path):
    """PNG, JPEG (any case of the suffix, as DAGM's .PNG), BMP and folders of them open
    through the plugin as napari opens a file with it (before: "Given reader
    'napari-unet-torch' is not a compatible reader" for a PNG), with the CLI's pixels
    (napari_unet.io.read_image): grey or RGB images, masks as Labels; a folder of same-size
    images as one stack, of different sizes as a layer each; the CLI's data layouts: a training
    folder (images/ and masks/) or DAGM's (Label/) as the image stack and its Labels, ISBI's
    volumes as an image and its labels, not one stack of both."""
    import imageio.v3 as iio

    from napari_unet.io import read_image

    viewer = make_napari_viewer()
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 255, (40, 30), dtype=np.uint8)
    colour = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
    mask = np.zeros((40, 30), np.uint8)
    mask[5:15, 5:20] = 255
    iio.imwrite(tmp_path / "grey.png", grey)
    iio.imwrite(tmp_path / "PHOTO.PNG", colour)
    iio.imwrite(tmp_path / "photo.jpg", colour)
    iio.imwrite(tmp_path / "grey.bmp", grey)
    iio.imwrite(tmp_path / "cell_mask.png", mask)
    for name, kind, rgb in (("grey.png", Image, False), ("PHOTO.PNG", Image, True),
                            ("photo.jpg", Image, True), ("grey.bmp", Image, False),
                            ("cell_mask.png", Labels, None)):
        [layer] = _open(viewer, tmp_path / name)
        assert isinstance(layer, kind) and getattr(layer, "rgb", None) == rgb, name
        assert layer.name.startswith(Path(name).stem)
        np.testing.assert_array_equal(layer.data, read_image(tmp_path / name), err_msg=name)

    stack = tmp_path / "scans"
    stack.mkdir()
    for k in range(3):
        iio.imwrite(stack / f"{k:03d}.png", grey + k)
    [layer] = _open(viewer, stack)
    assert isinstance(layer, Image) and layer.name == "scans" and layer.data.shape == (3, 40, 30)
    np.testing.assert_array_equal(layer.data[2], grey + 2)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    iio.imwrite(mixed / "a.png", grey)
    iio.imwrite(mixed / "b.png", colour)
    assert [(layer.name, layer.rgb) for layer in _open(viewer, mixed)] == [("a", False),
                                                                            ("b", True)]

    data = tmp_path / "nuclei"
    for folder in ("images", "masks"):
        (data / folder).mkdir(parents=True)
    for k in range(2):
        iio.imwrite(data / "images" / f"{k}.png", grey)
        many = mask.copy()
        many[20:30, 5:25] = 1 + k  # few values: a mask in any case, here by its folder
        iio.imwrite(data / "masks" / f"{k}.png", many)
    images, masks = _open(viewer, data)
    assert isinstance(images, Image) and images.name == "nuclei images"
    assert isinstance(masks, Labels) and masks.name == "nuclei masks"
    assert images.data.shape == masks.data.shape == (2, 40, 30)
    np.testing.assert_array_equal(masks.data[1], read_image(data / "masks" / "1.png"))

    dagm = tmp_path / "Class1"  # NNNN.PNG + Label/NNNN_label.PNG; no file: no defect
    (dagm / "Label").mkdir(parents=True)
    for k in (1, 2):
        iio.imwrite(dagm / f"000{k}.PNG", grey)
    iio.imwrite(dagm / "Label" / "0002_label.PNG", mask)
    images, labels = _open(viewer, dagm)
    assert isinstance(images, Image) and images.data.shape == (2, 40, 30)
    assert isinstance(labels, Labels) and labels.name == "Class1 labels"
    assert not labels.data[0].any()
    np.testing.assert_array_equal(labels.data[1], mask)

    isbi = tmp_path / "isbi"  # volumes of one size: an image and its labels, never stacked
    isbi.mkdir()
    volume = rng.integers(0, 255, (3, 16, 16), dtype=np.uint8)
    tifffile.imwrite(isbi / "train-volume.tif", volume)
    tifffile.imwrite(isbi / "train-labels.tif", (volume > 128).astype(np.uint8) * 255)
    layers = {layer.name: layer for layer in _open(viewer, isbi)}
    assert isinstance(layers["train-volume"], Image)
    assert isinstance(layers["train-labels"], Labels)
    assert layers["train-volume"].data.shape == layers["train-labels"].data.shape == (3, 16, 16)
    viewer.layers.clear()
    tifffile.imwrite(isbi / "test-volume.tif", volume)  # two volumes: two layers, not a 4D one
    assert sorted(layer.name for layer in _open(viewer, isbi)) == [
        "test-volume", "train-labels", "train-volume"]

    beside = tmp_path / "beside"  # images and their masks in one folder: two stacks
    beside.mkdir()
    for k in range(2):
        iio.imwrite(beside / f"cell{k}.png", grey)
        iio.imwrite(beside / f"cell{k}_mask.png", mask)
    images, masks = _open(viewer, beside)
    assert isinstance(images, Image) and images.data.shape == (2, 40, 30)
    assert isinstance(masks, Labels) and masks.name == "beside labels"


@gui
def test_a_big_folder_of_images_opens_as_a_lazy_stack(make_napari_viewer, tmp_path,
                                                      monkeypatch):
    """A folder of images bigger than the lazy threshold (lowered here) opens as a dask
    stack (napari reads an image when it shows it), with the files' pixels; a DAGM image
    without a mask file gets an empty lazy mask."""
    import imageio.v3 as iio

    from napari_unet import lazy

    monkeypatch.setattr(_napari, "LAZY_BYTES", 1000)
    (tmp_path / "Label").mkdir()
    planes = [np.full((20, 30), k, np.uint8) for k in range(5)]
    for k, plane in enumerate(planes):
        iio.imwrite(tmp_path / f"{k:04d}.png", plane)
    iio.imwrite(tmp_path / "Label" / "0003_label.png", (planes[3] > 0).astype(np.uint8))
    viewer = make_napari_viewer()
    images, labels = _open(viewer, tmp_path)
    assert lazy.is_lazy(images.data) and lazy.is_lazy(labels.data)
    np.testing.assert_array_equal(np.asarray(images.data), np.stack(planes))
    assert np.asarray(labels.data).sum() == 20 * 30 and np.asarray(labels.data)[3].all()


def _anonymous_memory_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    pytest.fail("no RssAnon in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@gui
def test_big_stack_opens_lazily(make_napari_viewer, tmp_path, monkeypatch):
    """Above the lazy threshold the layer holds a memory map: opening reads only what napari
    shows. 256 MB here with the threshold lowered stands for a multi-GB stack."""
    monkeypatch.setattr(_napari, "LAZY_BYTES", 32 << 20)
    path = tmp_path / "big_stack.tif"
    planes = 128
    with tifffile.TiffWriter(path) as tif:  # written plane by plane: the test itself stays small
        for z in range(planes):
            tif.write(np.full((1024, 1024), z, np.uint16), contiguous=True,
                      metadata={"axes": "ZYX"} if z == 0 else None)
    assert path.stat().st_size > 256 << 20
    viewer = make_napari_viewer()
    before = _anonymous_memory_kb()
    start = time.perf_counter()
    [layer] = _open(viewer, path)
    elapsed = time.perf_counter() - start
    grown_mb = (_anonymous_memory_kb() - before) / 1024
    print(f"opened a {path.stat().st_size >> 20} MB stack in {elapsed:.2f} s, "
          f"anonymous memory +{grown_mb:.0f} MB")
    assert isinstance(layer.data, np.memmap)
    assert layer.data.shape == (planes, 1024, 1024)
    assert grown_mb < 100, "opening copied the stack into memory"
    assert elapsed < 10
    assert layer.data[100, 5, 5] == 100


# -- writers ------------------------------------------------------------------------------------------
@gui
def test_writers_round_trip(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = np.zeros((3, 20, 30), np.int32)
    labels[1, 5:10, 5:25] = 7
    image = np.random.default_rng(2).random((3, 20, 30)).astype(np.float32)
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="lab")

    saved_labels = viewer.layers["lab"].save(str(tmp_path / "lab.tif"), plugin=PLUGIN)
    saved_image = viewer.layers["img"].save(str(tmp_path / "img.tif"), plugin=PLUGIN)
    assert saved_labels == [str(tmp_path / "lab.tif")]
    assert saved_image == [str(tmp_path / "img.tif")]

    [reopened_labels] = _open(viewer, tmp_path / "lab.tif")
    [reopened_image] = _open(viewer, tmp_path / "img.tif")
    assert isinstance(reopened_labels, Labels)
    np.testing.assert_array_equal(reopened_labels.data, labels)
    assert isinstance(reopened_image, Image)
    np.testing.assert_array_equal(reopened_image.data, image)
    assert reopened_image.data.dtype == np.float32
    # no temporary files are left in the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.tif", "lab.tif"]


# -- sample data --------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, image_layers, ndim", [("dagm", 1, 3), ("em", 1, 3),
                                                     ("blobs3d", 2, 3)])
@gui
def test_each_sample_loads_with_its_labels(make_napari_viewer, key, image_layers, ndim):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, key)
    images = [layer for layer in layers if isinstance(layer, Image)]
    labels = [layer for layer in layers if isinstance(layer, Labels)]
    assert len(images) == image_layers and len(labels) == 1
    for image in images:
        assert image.data.shape == labels[0].data.shape and image.ndim == ndim
    assert labels[0].data.max() >= 1, "the sample's labels are empty"
