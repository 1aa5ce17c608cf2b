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


def test_images_without_objects_and_the_median_objects_share_of_its_image():
    # surface inspection: half the parts are good; defects of 1 % and 4 % of their image
    good = [_squares((50, 40), []) for _ in range(2)]
    small = _squares((50, 40), [((0, 5), (0, 4))])  # 20 px of 2000: 1 %
    large = _squares((50, 40), [((10, 20), (10, 18))])  # 80 px: 4 %
    third = _squares((100, 100), [((0, 20), (0, 10)), ((50, 60), (50, 60))])  # 2 % and 1 %
    found = fingerprint(Dataset(*zip(*good, small, large, third), names=list("abcde"),
                                spatial_dims=2))
    assert found.empty_share == pytest.approx(2 / 5)
    assert found.median_object_share == pytest.approx(0.01 + 0.005)  # 1, 1, 2, 4 % -> 1.5 %


def test_the_foreground_width_tells_thin_lines_from_blobs():
    lines = _squares((64, 64), [((10, 13), (4, 60)), ((30, 33), (4, 60))])  # 3 px wide bands
    found = fingerprint(Dataset([lines[0]], [lines[1]], ["lines"], 2))
    assert 2.5 <= found.foreground_width <= 3.5
    yy, xx = np.mgrid[:64, :64]
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 <= 20 ** 2).astype(np.uint8)
    blob = fingerprint(Dataset([lines[0]], [disc], ["disc"], 2))
    assert blob.foreground_width > 50  # a disc's skeleton is a few pixels
    # a volume: measured in its planes (a 3 px wall through every plane)
    wall = np.zeros((6, 32, 32), np.uint8)
    wall[:, :, 10:13] = 1
    volume = fingerprint(Dataset([np.zeros((1, 6, 32, 32), np.uint8)], [wall], ["v"], 3))
    assert 2.5 <= volume.foreground_width <= 3.5
    assert fingerprint(Dataset([lines[0]], [np.zeros((64, 64), np.uint8)], ["none"],
                               2)).foreground_width == 0.0
