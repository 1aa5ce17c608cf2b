"""The fingerprint of training pairs, on hand-made data whose answers are known."""
import numpy as np
import pytest

from napari_unet.engine.data.dataset import Dataset
from napari_unet.engine.data.fingerprint import fingerprint
from napari_unet.errors import ConfigError


def _squares(shape, boxes, dtype=np.uint8, channels=1, value=200):
    image = np.zeros((channels, *shape), dtype)
    mask = np.zeros(shape, np.uint8)
    for box in boxes:
        region = tuple(slice(a, b) for a, b in box)
        mask[region] = 1
        image[(slice(None), *region)] = value
    return image, mask


def test_sizes_objects_and_foreground_of_mixed_2d_images():
    a = _squares((40, 60), [((0, 10), (0, 20)), ((20, 30), (30, 34))])
    b = _squares((100, 20), [((50, 60), (5, 15))])
    c = _squares((70, 80), [])
    found = fingerprint(Dataset(*zip(a, b, c), names=["a", "b", "c"], spatial_dims=2))
    assert found.samples == 3 and found.spatial_dims == 2 and found.channels == 1
    assert found.smallest_size == (40, 20) and found.largest_size == (100, 80)
    assert found.median_size == (70, 60)
    assert found.objects == 3
    assert found.median_object_extent == (10, 10)  # extents (10, 20), (10, 4), (10, 10)
    voxels = 40 * 60 + 100 * 20 + 70 * 80
    assert found.foreground_fraction == pytest.approx((200 + 40 + 100) / voxels)
    assert found.classes == 2 and not found.rgb


def test_uint16_intensities_are_read_per_channel():
    rng = np.random.default_rng(0)
    image = np.stack([rng.integers(1000, 3000, (64, 64)), rng.integers(0, 10, (64, 64))])
    image = image.astype(np.uint16)
    found = fingerprint(Dataset([image], [np.zeros((64, 64), np.uint8)], ["x"], 2))
    assert found.dtype == "uint16" and found.channels == 2
    assert 1000 <= found.percentiles[0][0] < 1100 and 2900 < found.percentiles[0][2] <= 3000
    assert found.percentiles[1][2] <= 9
    assert found.mean[0] == pytest.approx(2000, rel=0.02)


def test_spacing_gives_the_anisotropy_of_a_3d_stack():
    image, mask = _squares((12, 64, 64), [((2, 5), (10, 30), (10, 40))])
    found = fingerprint(Dataset([image], [mask], ["v"], 3), spacing=(2.0, 0.25, 0.25))
    assert found.spacing == (2.0, 0.25, 0.25) and found.anisotropy == 8.0
    assert found.median_object_extent == (3, 20, 30)
    assert fingerprint(Dataset([image], [mask], ["v"], 3)).anisotropy == 1.0


def test_rgb_photographs_are_told_from_other_images():
    image, mask = _squares((32, 32), [((4, 8), (4, 8))], channels=3)
    assert fingerprint(Dataset([image], [mask], ["rgb"], 2)).rgb
    grey, _ = _squares((32, 32), [], channels=1)
    assert not fingerprint(Dataset([grey], [mask], ["grey"], 2)).rgb


def test_a_bad_spacing_is_refused():
    image, mask = _squares((8, 8, 8), [])
    with pytest.raises(ConfigError, match="3 positive"):
        fingerprint(Dataset([image], [mask], ["v"], 3), spacing=(1.0, 0.0, 1.0))
