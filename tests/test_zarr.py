"""OME-Zarr in and out (napari_unet.zarr_files): axes, scales and levels read from the
metadata, lazily; predictions written as an OME-Zarr image with a labels group that
napari-ome-zarr opens, equal to the TIF path; training batches equal to the TIF's."""
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.writer import write_image, write_labels

from napari_unet.cli import main
from napari_unet.engine import load_dataset
from napari_unet.engine.data.normalization import compute_norm_stats
from napari_unet.engine.data.patches import PatchSampler
from napari_unet.errors import DataError
from napari_unet.io import read_image, read_spacing
from napari_unet.zarr_files import open_zarr, write_prediction


def volume(seed=0, shape=(12, 96, 80)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, shape, dtype=np.uint8)
    mask = np.zeros(shape, np.uint8)
    mask[2:9, 20:60, 15:50] = 1
    image[mask > 0] += 150
    return image, mask


def ome_zarr_of(path, image, mask, spacing=(0.5, 0.2, 0.2)):
    group = zarr.open_group(str(path), mode="w")
    scale = dict(zip("zyx", spacing))
    write_image(image, group, axes="zyx", scale_factors=[{"z": 1, "y": 2, "x": 2}],
                scale=scale, storage_options={"chunks": (4, 32, 32)})
    write_labels(mask, group, name="cells", axes="zyx", scale_factors=[{"z": 1, "y": 2, "x": 2}],
                 scale=scale)
    return path


def test_axes_scales_levels_and_labels_come_from_the_metadata(tmp_path):
    image, mask = volume()
    path = ome_zarr_of(tmp_path / "cells.zarr", image, mask)
    found = open_zarr(path)
    assert (found.axes, found.levels, found.labels) == ("zyx", 2, ("cells",))
    assert found.spacing == (0.5, 0.2, 0.2) and found.array.shape == image.shape
    assert type(found.array).__module__.startswith("dask")  # lazy: nothing read yet
    assert np.array_equal(np.asarray(found.array[3, 10:20]), image[3, 10:20])
    level = open_zarr(path / "s1")  # a level's own folder
    assert level.array.shape == (12, 48, 40) and level.spacing == (0.5, 0.4, 0.4)
    assert np.array_equal(np.asarray(read_image(path / "labels" / "cells")), mask)
    assert read_spacing(path) == (0.5, 0.2, 0.2)
    (tmp_path / "plain.zarr").mkdir()
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(DataError, match="no OME-NGFF multiscales"):
        open_zarr(tmp_path / "plain.zarr")
    with pytest.raises(DataError, match="2 resolution level"):
        open_zarr(path, level=5)


def test_training_batches_from_ome_zarr_equal_those_from_tif(tmp_path):
    image, mask = volume(1)
    ome_zarr_of(tmp_path / "v.zarr", image, mask)
    tifffile.imwrite(tmp_path / "v.tif", image)
    tifffile.imwrite(tmp_path / "m.tif", mask)
    batches = []
    for images, masks in ((tmp_path / "v.zarr", tmp_path / "v.zarr/labels/cells"),
                          (tmp_path / "v.tif", tmp_path / "m.tif")):
        data = load_dataset(images=images, masks=masks, spatial_dims=3)
        norm = compute_norm_stats(data.images, "zscore")
        sampler = PatchSampler(data.images, data.masks, (8, 32, 32), (8, 32, 32), 2, norm,
                               seed=5, foreground_oversample=0.5)
        batches.append([sampler.batch(step) for step in range(3)])
    for (x_zarr, y_zarr), (x_tif, y_tif) in zip(*batches):
        assert np.array_equal(np.asarray(x_zarr), np.asarray(x_tif))
        assert np.array_equal(np.asarray(y_zarr), np.asarray(y_tif))


def test_written_predictions_open_in_napari_ome_zarr_and_a_failure_leaves_no_result(
        tmp_path, monkeypatch):
    from napari_ome_zarr import napari_get_reader

    probabilities = np.random.default_rng(0).random((2, 6, 160, 140)).astype(np.float32)
    labels = probabilities.argmax(0).astype(np.uint8)
    path = write_prediction(tmp_path / "p.zarr", probabilities, labels, spacing=(1, 0.5, 0.5),
                            chunk=32)
    read = napari_get_reader(str(path))(str(path))
    kinds = [layer[2] for layer in read]
    assert kinds == ["image", "labels"]
    levels = read[1][0]
    assert len(levels) >= 3 and np.array_equal(np.asarray(levels[0]), labels)
    assert np.array_equal(np.asarray(open_zarr(path).array), probabilities)
    with pytest.raises(Exception, match="exists"):
        write_prediction(path, probabilities, labels)
    import napari_unet.zarr_files as module

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr("ome_zarr.writer.write_labels", broken)
    with pytest.raises(OSError):
        module.write_prediction(tmp_path / "q.zarr", probabilities, labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr"]


def test_predict_from_and_to_ome_zarr_equals_the_tif_path(tmp_path, capsys):
    image, mask = volume(2, (6, 64, 64))
    ome_zarr_of(tmp_path / "train.zarr", image, mask)
    run = tmp_path / "run"
    assert main(["train", "--images", str(tmp_path / "train.zarr"), "--masks",
                 str(tmp_path / "train.zarr/labels/cells"), "--preset", "industrial", "--loss",
                 "dice_ce", "--steps", "2", "--batch-size", "2", "--patch-size", "32",
                 "--base-channels", "4", "--amp", "off", "--device", "cpu", "--out",
                 str(run)]) == 0
    tifffile.imwrite(tmp_path / "train.tif", image)
    common = ["--run", str(run), "--device", "cpu", "--amp", "off", "--backend", "torch"]
    assert main(["predict", *common, "--input", str(tmp_path / "train.tif"), "--output",
                 str(tmp_path / "l.tif"), "--probabilities", str(tmp_path / "p.tif")]) == 0
    assert main(["predict", *common, "--input", str(tmp_path / "train.zarr"), "--output",
                 str(tmp_path / "out.zarr")]) == 0
    out = open_zarr(tmp_path / "out.zarr")
    assert out.labels == ("prediction",) and out.spacing == (0.5, 0.2, 0.2)
    np.testing.assert_allclose(np.asarray(out.array)[0], tifffile.imread(tmp_path / "p.tif"),
                               atol=1e-6)
    assert np.array_equal(np.asarray(read_image(tmp_path / "out.zarr/labels/prediction")),
                          tifffile.imread(tmp_path / "l.tif"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    capsys.readouterr()
    assert main(["predict", *common, "--input", str(tmp_path / "train.zarr"), "--output",
                 str(tmp_path / "out.zarr")]) == 2
    assert "--overwrite" in capsys.readouterr().err
