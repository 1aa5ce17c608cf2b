"""Data sets, mask conventions, folds, normalisation and patch batches."""
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_unet.engine.data.dataset import (
    LAYOUTS,
    Dataset,
    load_dataset,
    masks_to_classes,
    split_folds,
)
from napari_unet.engine.data.layout import as_channel_first
from napari_unet.engine.data.normalization import NormStats, compute_norm_stats, normalize
from napari_unet.engine.data.patches import PatchSampler, crop_mirrored
from napari_unet.errors import ConfigError, DataError
from napari_unet.sample_data import dagm_like

DATA = Path(__file__).parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real data sets not found at {DATA} (../shared/data)"
)
NONE = NormStats("none", [], [], [], [])


# ------------------------------------------------------------------------- mask conventions
@pytest.mark.parametrize("values, expected", [
    ([0, 255, 255], [0, 1, 1]),          # 8-bit picture masks
    ([0, 1, 1], [0, 1, 1]),              # already classes
    ([0, 0, 0], [0, 0, 0]),              # an empty mask stays empty
    ([255, 255, 255], [1, 1, 1]),
    ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]),  # BraTS classes are kept
])
def test_mask_conventions(values, expected):
    for dtype in (np.uint8, np.uint16, np.int32):
        result = masks_to_classes(np.array(values, dtype))
        assert result.dtype == np.uint8
        assert result.tolist() == expected


def test_foreground_value_makes_that_value_class_one():
    isbi = np.array([[0, 255], [255, 0]], np.uint8)  # ISBI: 0 = membrane
    assert masks_to_classes(isbi, foreground_value=0).tolist() == [[1, 0], [0, 1]]
    assert masks_to_classes(np.array([3, 7, 3]), foreground_value=7).tolist() == [0, 1, 0]


def test_float_and_bool_masks():
    assert masks_to_classes(np.array([0.1, 0.7, 0.5, np.nan])).tolist() == [0, 1, 0, 0]
    assert masks_to_classes(np.array([0.0, 2.0, 1.0])).tolist() == [0, 2, 1]
    assert masks_to_classes(np.array([True, False])).tolist() == [1, 0]


def test_impossible_masks_raise_data_error():
    with pytest.raises(DataError, match="negative"):
        masks_to_classes(np.array([0, -1, 2]))
    with pytest.raises(DataError, match="0..255"):
        masks_to_classes(np.arange(1000, dtype=np.uint16))


# ------------------------------------------------------------------------- channel layouts
@pytest.mark.parametrize("shape, dims, expected", [
    ((20, 30), 2, (1, 20, 30)),
    ((20, 30, 3), 2, (3, 20, 30)),
    ((20, 30, 4), 2, (3, 20, 30)),       # alpha dropped
    ((2, 20, 30), 2, (2, 20, 30)),
    ((9, 20, 30), 3, (1, 9, 20, 30)),
    ((4, 9, 20, 30), 3, (4, 9, 20, 30)),
    ((9, 20, 30, 2), 3, (2, 9, 20, 30)),
    ((20, 30, 2), 2, (2, 20, 30)),
])
def test_as_channel_first(shape, dims, expected):
    image = np.zeros(shape, np.int16)
    result = as_channel_first(image, dims)
    assert result.shape == expected and result.dtype == np.int16
    assert np.shares_memory(result, image)  # no copy: memory maps stay lazy


@pytest.mark.parametrize("shape, dims", [((40, 20, 30), 2), ((20, 30), 3), ((5, 40, 20, 30, 2), 3)])
def test_as_channel_first_rejects_what_it_cannot_read(shape, dims):
    with pytest.raises(DataError, match="spatial_dims"):
        as_channel_first(np.zeros(shape, np.uint8), dims)


dtypes = st.sampled_from([np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64])


@settings(max_examples=40, deadline=None)
@given(data=st.data(), dims=st.sampled_from([2, 3]), channels=st.sampled_from([0, 1, 2, 3]),
       dtype=dtypes)
def test_as_channel_first_keeps_pixels_and_type(data, dims, channels, dtype):
    spatial = data.draw(st.tuples(*[st.integers(5, 12)] * dims))
    shape = spatial if channels == 0 else (channels,) + spatial
    image = data.draw(hnp.arrays(dtype, shape, elements=st.integers(0, 200)))
    result = as_channel_first(image, dims)
    assert result.shape == (max(channels, 1),) + spatial
    assert result.dtype == image.dtype
    np.testing.assert_array_equal(result.reshape(image.shape), image)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), dtype=dtypes, mode=st.sampled_from(["minus_one_one", "zscore", "none"]))
def test_normalize_gives_finite_float32(data, dtype, mode):
    shape = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)))
    finite = np.issubdtype(dtype, np.integer)
    elements = (st.integers(0, 250) if finite else
                st.floats(-1e6, 1e6, width=32) | st.sampled_from([np.nan, np.inf, -np.inf]))
    image = data.draw(hnp.arrays(dtype, shape, elements=elements))
    stats = compute_norm_stats([image], mode)
    result = normalize(image, stats)
    assert result.dtype == np.float32 and result.shape == image.shape
    assert np.isfinite(result).all()
    if mode == "minus_one_one":
        assert np.abs(result).max() <= 1.5
    assert not np.shares_memory(result, image)  # the caller's (memory-mapped) data is untouched


def test_minus_one_one_uses_the_full_8_bit_range_and_percentiles_otherwise():
    image = np.array([[[0, 128, 255]]], np.uint8)
    stats = compute_norm_stats([image], "minus_one_one")
    assert (stats.low, stats.high) == ([0.0], [255.0])
    np.testing.assert_allclose(normalize(image, stats), [[[-1, 1 / 255, 1]]], atol=1e-6)

    wide = np.linspace(0, 4000, 10_001, dtype=np.float32).reshape(1, 1, -1)
    stats = compute_norm_stats([wide], "minus_one_one")
    np.testing.assert_allclose([stats.low[0], stats.high[0]], [20, 3980], rtol=1e-3)
    result = normalize(wide, stats)
    assert result.min() == pytest.approx(-1.0102, abs=1e-3) and result.max() <= 1.5


def test_zscore_leaves_out_a_constant_background():
    rng = np.random.default_rng(0)
    volume = np.full((2, 20, 20, 20), -3.0, np.float32)  # BraTS-like floor outside the brain
    means = np.reshape([5.0, -2.0], (2, 1, 1, 1))
    volume[:, 4:16, 4:16, 4:16] = rng.normal(means, 2.0, (2, 12, 12, 12))
    stats = compute_norm_stats([volume], "zscore")
    np.testing.assert_allclose(stats.mean, [5.0, -2.0], atol=0.2)
    np.testing.assert_allclose(stats.std, [2.0, 2.0], atol=0.2)
    assert NormStats.from_dict(stats.to_dict()) == stats
    with pytest.raises(ConfigError):
        NormStats.from_dict({"mode": "percent"})
    with pytest.raises(DataError, match="channels"):
        normalize(np.zeros((3, 4, 4)), stats)


# ------------------------------------------------------------------------- folds
def test_folds_are_deterministic_disjoint_and_cover_everything():
    seen = []
    for fold in range(5):
        train, validation = split_folds(24, fold, folds=5, seed=0)
        again = split_folds(24, fold, folds=5, seed=0)
        np.testing.assert_array_equal(train, again[0])
        assert not set(train) & set(validation)
        assert sorted(set(train) | set(validation)) == list(range(24))
        assert len(validation) in (4, 5)
        seen += list(validation)
    assert sorted(seen) == list(range(24))
    # the reference's rule: shuffle once with the seed, cut into parts, fold k validates on k
    parts = np.array_split(np.random.default_rng(7).permutation(24), 5)
    assert sorted(split_folds(24, 2, seed=7)[1]) == sorted(parts[2])
    assert not np.array_equal(split_folds(24, 0, seed=1)[1], split_folds(24, 0, seed=2)[1])


def test_fold_errors_and_no_fold():
    train, validation = split_folds(6, None)
    assert train.tolist() == list(range(6)) and validation.size == 0
    with pytest.raises(ConfigError, match="folds"):
        split_folds(3, 0, folds=5)
    with pytest.raises(ConfigError, match="0..4"):
        split_folds(24, 5, folds=5)


# ------------------------------------------------------------------------- the real data sets
@needs_data
def test_isbi_loads_as_24_slices_with_membrane_as_class_one():
    data = load_dataset(DATA / "isbi2012")
    assert len(data) == 24 and data.spatial_dims == 2 and data.in_channels == 1
    assert all(image.shape == (1, 512, 512) and image.dtype == np.uint8 for image in data.images)
    assert data.num_classes == 2 and data.names[3] == "train-volume[3]"
    membrane = np.mean([mask.mean() for mask in data.masks])
    assert 0.18 < membrane < 0.27  # membrane (0 in the file) is the minority class, ~22 %


@needs_data
def test_dagm_loads_100_images_half_of_them_with_a_defect():
    data = load_dataset(DATA / "dagm2007_class1")
    assert len(data) == 100 and data.spatial_dims == 2
    assert all(image.shape == (1, 512, 512) for image in data.images)
    defective = [mask.max() > 0 for mask in data.masks]
    assert sum(defective) == 50
    assert all(set(np.unique(mask)) <= {0, 1} for mask in data.masks)
    assert data.names[:2] == ["0001", "0002"] and not defective[0] and defective[1]


@needs_data
def test_brats_loads_4_two_channel_volumes_with_classes_up_to_4():
    data = load_dataset(DATA / "brats2013")
    assert len(data) == 4 and data.spatial_dims == 3 and data.in_channels == 2
    for image, mask in zip(data.images, data.masks):
        assert image.ndim == 4 and image.shape[0] == 2 and image.dtype == np.float32
        assert image.shape[1:] == mask.shape
    assert data.num_classes == 5 and max(int(mask.max()) for mask in data.masks) == 4
    assert data.names == ["pat0003", "pat0004", "pat0005", "pat0006"]


# ------------------------------------------------------------------------- layouts on disk
def write_pngs(folder, names, arrays):
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(names, arrays):
        iio.imwrite(folder / name, array)


@pytest.mark.parametrize("mask_folder", ["masks", "labels"])
def test_generic_layout(tmp_path, mask_folder):
    images, masks = dagm_like(n=3, size=32)
    names = ["a.png", "b.png", "c.png"]
    write_pngs(tmp_path / "images", names, images)
    write_pngs(tmp_path / mask_folder, names, masks * 255)
    data = load_dataset(tmp_path)
    assert data.names == ["a", "b", "c"] and data.images[0].shape == (1, 32, 32)
    for got, expected in zip(data.masks, masks):
        np.testing.assert_array_equal(got, expected)
    (tmp_path / mask_folder / "c.png").unlink()
    with pytest.raises(DataError, match="no mask for c.png"):
        load_dataset(tmp_path)


def test_dagm_layout_gives_empty_masks_to_images_without_a_label(tmp_path):
    images, masks = dagm_like(n=4, size=32, seed=1)
    write_pngs(tmp_path, [f"000{i}.PNG" for i in range(4)], images)
    defective = [i for i in range(4) if masks[i].any()]
    write_pngs(tmp_path / "Label", [f"000{i}_label.PNG" for i in defective], masks[defective] * 255)
    data = load_dataset(tmp_path)
    assert len(data) == 4
    for got, expected in zip(data.masks, masks):
        np.testing.assert_array_equal(got, expected)


def test_stack_files_are_2d_samples_or_one_volume(tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 255, (6, 16, 20)).astype(np.uint8)
    labels = (stack > 128).astype(np.uint8) * 255
    tifffile.imwrite(tmp_path / "img.tif", stack)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    slices = load_dataset(images=tmp_path / "img.tif", masks=tmp_path / "lab.tif")
    assert len(slices) == 6 and slices.spatial_dims == 2 and slices.images[0].shape == (1, 16, 20)
    np.testing.assert_array_equal(slices.masks[2], labels[2] // 255)
    volume = load_dataset(images=tmp_path / "img.tif", masks=tmp_path / "lab.tif", spatial_dims=3)
    assert len(volume) == 1 and volume.images[0].shape == (1, 6, 16, 20)

    tifffile.imwrite(tmp_path / "czyx.tif", np.stack([stack, stack]), photometric="minisblack")
    volume = load_dataset(images=tmp_path / "czyx.tif", masks=tmp_path / "lab.tif")
    assert volume.spatial_dims == 3 and volume.images[0].shape == (2, 6, 16, 20)
    slices = load_dataset(images=tmp_path / "czyx.tif", masks=tmp_path / "lab.tif", spatial_dims=2)
    assert len(slices) == 6 and slices.images[4].shape == (2, 16, 20)
    np.testing.assert_array_equal(slices.images[4][1], stack[4])


def test_mismatched_shapes_and_unknown_layouts_say_what_to_do(tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((4, 16, 20), np.uint8))
    tifffile.imwrite(tmp_path / "lab.tif", np.zeros((4, 16, 21), np.uint8))
    with pytest.raises(DataError, match=r"\(16, 20\).*\(16, 21\)"):
        load_dataset(images=tmp_path / "img.tif", masks=tmp_path / "lab.tif")
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    assert all(layout.split(" (")[0] in str(info.value) for layout in LAYOUTS)
    with pytest.raises(ConfigError):
        load_dataset(images=tmp_path / "img.tif")


def test_dataset_subset_and_classes():
    images = [np.zeros((1, 4, 4), np.uint8) for _ in range(3)]
    masks = [np.full((4, 4), i, np.uint8) for i in range(3)]
    data = Dataset(images, masks, ["a", "b", "c"], 2)
    assert data.num_classes == 3 and data.in_channels == 1
    part = data.subset([2, 0])
    assert part.names == ["c", "a"] and part.masks[0].max() == 2
    assert Dataset(images[:1], masks[:1], ["a"], 2).num_classes == 2
    with pytest.raises(DataError, match="differ"):
        Dataset(images[:1], [np.zeros((4, 5))], ["a"], 2)


# ------------------------------------------------------------------------- patch batches
def position_sample(shape):
    """An image whose every pixel holds its own index, and a mask with the same codes, so a
    window says exactly where it was cut from."""
    codes = np.arange(np.prod(shape), dtype=np.int64).reshape(shape)
    return codes[None].astype(np.float32), codes


def test_batches_are_a_pure_function_of_seed_and_step():
    images, masks = dagm_like(n=6, size=64)
    stats = compute_norm_stats([images[:1]], "minus_one_one")

    def sampler(seed):
        return PatchSampler([i[None] for i in images], list(masks), (32, 32), (32, 32), 4,
                            stats, seed=seed)

    x, y = sampler(0).batch(5)
    assert x.shape == (4, 1, 32, 32) and y.shape == (4, 32, 32)
    assert str(x.dtype) == "torch.float32" and str(y.dtype) == "torch.int64"
    again = sampler(0)
    again.batch(0)  # batches do not depend on what was drawn before
    x2, y2 = again.batch(5)
    assert (x == x2).all() and (y == y2).all()
    assert not (sampler(0).batch(6)[0] == x).all()
    assert not (sampler(1).batch(5)[0] == x).all()


@pytest.mark.parametrize("dims", [2, 3])
def test_rank_slices_concatenate_to_the_single_process_batch(dims):
    image, mask = position_sample((20,) * dims)
    size = (8,) * dims
    single = PatchSampler([image] * 3, [mask] * 3, size, size, 4, NONE, seed=3,
                          foreground_oversample=0.5).batch(9)
    ranks = [PatchSampler([image] * 3, [mask] * 3, size, size, 2, NONE, seed=3,
                          foreground_oversample=0.5, rank=r, world_size=2).batch(9)
             for r in range(2)]
    assert (single[0] == np.concatenate([r[0] for r in ranks])).all()
    assert (single[1] == np.concatenate([r[1] for r in ranks])).all()


def test_foreground_oversampling_raises_the_foreground_fraction():
    images, masks = dagm_like(n=8, size=128)
    stats = compute_norm_stats([images[:1]], "minus_one_one")

    def fraction(probability):
        sampler = PatchSampler([i[None] for i in images], list(masks), (32, 32), (32, 32), 8,
                               stats, foreground_oversample=probability)
        return np.mean([sampler.batch(step)[1].float().mean().item() for step in range(10)])

    assert fraction(1.0) > 0.15 > 3 * fraction(0.0)


@pytest.mark.parametrize("shape, input_size, output_size", [
    ((40, 50), (36, 36), (20, 20)),       # margin 8, inside the image
    ((12, 10), (36, 36), (20, 20)),       # image smaller than both windows: mirrored
    ((14, 16, 18), (12, 12, 12), (4, 4, 4)),
])
def test_mask_window_is_the_centre_of_the_image_window(shape, input_size, output_size):
    image, mask = position_sample(shape)
    sampler = PatchSampler([image], [mask], input_size, output_size, 6, NONE, seed=1)
    x, y = sampler.batch(0)
    margin = tuple((i - o) // 2 for i, o in zip(input_size, output_size))
    centre = (slice(None), 0) + tuple(slice(m, m + o) for m, o in zip(margin, output_size))
    assert (x[centre].long() == y).all()
    assert set(np.unique(y.numpy())) <= set(mask.ravel().tolist())


def test_crop_mirrored_matches_numpy_reflect_padding():
    array = np.arange(5 * 7).reshape(5, 7)
    padded = np.pad(array, ((13, 13), (9, 9)), mode="reflect")
    for start in [(-13, -9), (-3, 2), (0, 0), (4, 6)]:
        window = crop_mirrored(array, start, (11, 8))
        expected = padded[start[0] + 13:start[0] + 24, start[1] + 9:start[1] + 17]
        np.testing.assert_array_equal(window, expected)


@needs_data
def test_isbi_windows_for_the_unpadded_unet():
    data = load_dataset(DATA / "isbi2012")
    stats = compute_norm_stats(data.images, "minus_one_one")
    sampler = PatchSampler(data.images, data.masks, (572, 572), (388, 388), 2, stats)
    x, y = sampler.batch(0)
    assert x.shape == (2, 1, 572, 572) and y.shape == (2, 388, 388)
    assert x.min() >= -1.0 and x.max() <= 1.0 and set(y.unique().tolist()) == {0, 1}


def test_sampler_rejects_impossible_windows():
    image, mask = position_sample((16, 16))
    with pytest.raises(ConfigError, match="even margin"):
        PatchSampler([image], [mask], (15, 15), (8, 8), 1, NONE)
    with pytest.raises(ConfigError, match="rank"):
        PatchSampler([image], [mask], (8, 8), (8, 8), 1, NONE, rank=2, world_size=2)
