"""Reading and writing images: round trips, memory maps, atomic writes, one-line errors."""
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_unet.errors import DataError, OutputExistsError
from napari_unet.io import (
    TifMemmapWriter,
    atomic_write,
    looks_like_labels,
    read_image,
    strided_sample,
    write_tif,
)


def only_file(folder):
    """The folder holds exactly one entry: no temporary file was left behind."""
    return [path.name for path in folder.iterdir()]


@pytest.mark.parametrize("shape, dtype", [
    ((32, 40), np.uint8), ((3, 16, 24), np.uint16), ((2, 5, 8, 9), np.float32),
    ((7, 6), np.int16), ((16, 16, 3), np.uint8),
])
def test_tif_round_trip(tmp_path, shape, dtype):
    array = (np.random.default_rng(0).random(shape) * 200).astype(dtype)
    write_tif(tmp_path / "a.tif", array)
    back = read_image(tmp_path / "a.tif")
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert only_file(tmp_path) == ["a.tif"]


def test_uncompressed_tif_is_a_read_only_memory_map(tmp_path):
    write_tif(tmp_path / "a.tif", np.arange(3 * 8 * 8, dtype=np.uint16).reshape(3, 8, 8))
    image = read_image(tmp_path / "a.tif")
    assert isinstance(image, np.memmap) and not image.flags.writeable
    assert not isinstance(read_image(tmp_path / "a.tif", mmap=False), np.memmap)


def test_compressed_tif_is_read_into_memory(tmp_path):
    array = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16)
    write_tif(tmp_path / "z.tif", array, compression="zlib")
    image = read_image(tmp_path / "z.tif")
    assert not isinstance(image, np.memmap)
    np.testing.assert_array_equal(image, array)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".PNG"])
def test_pictures_read_with_imageio(tmp_path, suffix):
    array = (np.arange(20 * 30) % 251).astype(np.uint8).reshape(20, 30)
    iio.imwrite(tmp_path / f"a{suffix.lower()}", array)
    (tmp_path / f"a{suffix.lower()}").rename(tmp_path / f"a{suffix}")
    np.testing.assert_array_equal(read_image(tmp_path / f"a{suffix}"), array)


def test_write_refuses_to_overwrite_without_permission(tmp_path):
    path = tmp_path / "out.tif"
    write_tif(path, np.zeros((4, 4), np.uint8))
    with pytest.raises(OutputExistsError, match="exists: pass --overwrite"):
        write_tif(path, np.ones((4, 4), np.uint8))
    np.testing.assert_array_equal(read_image(path), 0)
    write_tif(path, np.ones((4, 4), np.uint8), overwrite=True)
    np.testing.assert_array_equal(read_image(path, mmap=False), 1)
    assert only_file(tmp_path) == ["out.tif"]


def test_atomic_write_renames_on_success_and_cleans_up_on_error(tmp_path):
    path = tmp_path / "model.pt"
    with atomic_write(path) as tmp:
        assert tmp.parent == tmp_path and tmp != path
        tmp.write_bytes(b"new")
        assert not path.exists()  # readers never see a half-written file
    assert path.read_bytes() == b"new"

    with pytest.raises(RuntimeError):
        with atomic_write(path, overwrite=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"new"
    assert only_file(tmp_path) == ["model.pt"]


def test_atomic_write_does_not_overwrite_a_file_that_appears_meanwhile(tmp_path):
    path = tmp_path / "out.tif"
    with pytest.raises(OutputExistsError):
        with atomic_write(path) as tmp:
            tmp.write_bytes(b"mine")
            path.write_bytes(b"someone else's")
    assert path.read_bytes() == b"someone else's"
    assert only_file(tmp_path) == ["out.tif"]


def test_memmap_writer_writes_a_tif_and_removes_it_on_error(tmp_path):
    path = tmp_path / "big.tif"
    with TifMemmapWriter(path, (3, 20, 30), np.float32) as out:
        assert not path.exists()
        out[1] = 0.5
    image = read_image(path)
    assert image.shape == (3, 20, 30) and image.dtype == np.float32
    assert image[1].min() == 0.5 and image[0].max() == 0

    with pytest.raises(OutputExistsError):
        TifMemmapWriter(path, (2, 2), np.uint8).__enter__()
    with pytest.raises(ValueError):
        with TifMemmapWriter(tmp_path / "partial.tif", (4, 4), np.uint8) as out:
            out[:] = 1
            raise ValueError("crash while predicting")
    assert only_file(tmp_path) == ["big.tif"]


def assert_one_line_data_error(path, *words):
    with pytest.raises(DataError) as info:
        read_image(path)
    message = str(info.value)
    assert "\n" not in message and str(path.name) in message
    for word in words:
        assert word in message


def test_read_errors_say_what_is_wrong(tmp_path):
    assert_one_line_data_error(tmp_path / "missing.tif", "does not exist")
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_data_error(tmp_path / "notes.txt", "not a supported image", ".tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    assert_one_line_data_error(tmp_path / "empty.tif", "empty")
    (tmp_path / "garbage.tif").write_bytes(b"this is not a tif file" * 4)
    assert_one_line_data_error(tmp_path / "garbage.tif", "cannot read")
    assert_one_line_data_error(tmp_path, "folder")


def test_truncated_files_raise_data_error(tmp_path):
    tifffile.imwrite(tmp_path / "full.tif", np.ones((4, 64, 64), np.uint16),
                     photometric="minisblack")
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    assert_one_line_data_error(tmp_path / "cut.tif")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    iio.imwrite(tmp_path / "full.png", noise)
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert_one_line_data_error(tmp_path / "cut.png", "cannot read")


def test_looks_like_labels():
    rng = np.random.default_rng(0)
    assert looks_like_labels(rng.integers(0, 5, (64, 64)).astype(np.uint8))
    assert not looks_like_labels(rng.integers(0, 256, (64, 64)).astype(np.uint8))
    assert not looks_like_labels(rng.random((64, 64)).astype(np.float32), name="mask")
    assert looks_like_labels(rng.integers(0, 1000, (64, 64)).astype(np.uint16), name="cell_labels")
    assert looks_like_labels(np.zeros((8, 8), bool))


def test_strided_sample_is_bounded():
    array = np.zeros((50, 300, 300), np.uint8)
    assert strided_sample(array, 10_000).size <= 2 * 10_000
    assert strided_sample(np.arange(10), 100).size == 10
