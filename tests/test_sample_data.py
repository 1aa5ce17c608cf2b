"""Synthetic sample data: shapes, conventions, determinism, speed and visible contrast."""
import time

import numpy as np
import pytest

from napari_unet.sample_data import SAMPLES, blobs3d, dagm_like, em_like


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_samples_are_seeded_and_fast(name):
    started = time.perf_counter()
    images, masks = SAMPLES[name](seed=3)
    assert time.perf_counter() - started < 1.5
    again, again_masks = SAMPLES[name](seed=3)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(masks, again_masks)
    assert not np.array_equal(SAMPLES[name](seed=4)[1], masks)
    assert masks.dtype == np.uint8


def test_dagm_like_has_defects_in_half_of_the_images():
    images, masks = dagm_like(n=10, size=96)
    assert images.shape == masks.shape == (10, 96, 96) and images.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 1}
    defective = masks.reshape(10, -1).max(1) > 0
    assert defective.sum() == 5
    fraction = masks[defective].mean()
    assert 0.01 < fraction < 0.2  # like DAGM's 1.5-9.5 %
    # each defect differs clearly from the texture around it, darker or brighter
    for image, mask in zip(images[defective], masks[defective]):
        assert abs(image[mask > 0].mean() - image[mask == 0].mean()) > 15


def test_em_like_membranes_are_dark_and_thin():
    images, masks = em_like(n=4, size=96)
    assert images.shape == masks.shape == (4, 96, 96)
    assert set(np.unique(masks)) == {0, 1}
    assert 0.05 < masks.mean() < 0.35  # ISBI: about 22 % membrane
    assert images[masks == 1].mean() < images[masks == 0].mean() - 30
    assert images.std() > 20  # noise and grey levels, not a binary picture


def test_blobs3d_nested_classes_show_in_different_channels():
    images, labels = blobs3d(n=2, size=32, channels=3)
    assert images.shape == (2, 3, 32, 32, 32) and images.dtype == np.float32
    assert labels.shape == (2, 32, 32, 32) and labels.dtype == np.uint8
    for i in range(2):
        assert set(np.unique(labels[i])) == {0, 1, 2}
    whole, core = images[:, 0], images[:, 1]
    assert whole[labels > 0].mean() > whole[labels == 0].mean() + 0.5
    assert core[labels == 2].mean() > core[labels == 1].mean() + 0.5
