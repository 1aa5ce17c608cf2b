"""Augmentation keeps images and masks aligned, in 2D and 3D, with concentric windows."""
import pytest
import torch

from napari_unet.engine.training.augment import Augmenter
from napari_unet.errors import ConfigError

EVERYTHING = dict(hflip=0.5, vflip=0.5, rot90=(0, 1, 2, 3), crop_resize=(0.5, 1.0),
                  brightness=0.0)


def coordinate_batch(batch, out_size, margin):
    """x: one channel per spatial axis holding that axis' coordinate in the mask's frame (a
    linear ramp, which bilinear resampling reproduces exactly); y: each mask pixel's own
    index. After any geometric augmentation, the ramps at the centre of x must point to the
    mask pixel that y holds there."""
    dims = len(out_size)
    in_size = [s + 2 * margin for s in out_size]
    ramps = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) - margin for n in in_size],
                           indexing="ij")
    x = torch.stack(ramps)[None].repeat(batch, 1, *([1] * dims))
    y = torch.arange(torch.tensor(out_size).prod()).reshape(out_size)
    y = y[None].repeat(batch, *([1] * dims))
    return x, y


def assert_aligned(x, y, out_size, margin):
    dims = len(out_size)
    centre = x[(slice(None), slice(None)) + tuple(slice(margin, margin + s) for s in out_size)]
    strides = torch.tensor([torch.tensor(out_size[a + 1:]).prod() for a in range(dims)])
    for axis in range(dims):
        mask_coordinate = (y // strides[axis]) % out_size[axis]
        assert (centre[:, axis] - mask_coordinate).abs().max() <= 0.5 + 1e-4


@pytest.mark.parametrize("out_size, margin", [((16, 16), 0), ((16, 16), 6), ((12, 16), 4),
                                              ((8, 8, 8), 0), ((8, 10, 10), 3)])
@pytest.mark.parametrize("options", [
    dict(hflip=0.5, vflip=0.5), dict(rot90=(1, 2, 3)), dict(crop_resize=(0.4, 0.9)), EVERYTHING,
])
def test_geometry_keeps_image_and_mask_aligned(out_size, margin, options):
    dims = len(out_size)
    x, y = coordinate_batch(8, out_size, margin)
    augment = Augmenter(dims, flip_all_axes=dims == 3, **options)
    x2, y2 = augment(x, y, torch.Generator().manual_seed(0))
    assert x2.shape == x.shape and y2.shape == y.shape and y2.dtype == torch.long
    assert not torch.equal(y2, y)  # something happened
    assert_aligned(x2, y2, out_size, margin)


@pytest.mark.parametrize("dims", [2, 3])
def test_an_image_equal_to_its_mask_still_equals_it(dims):
    y = torch.zeros((4,) + (12,) * dims, dtype=torch.long)
    y[(slice(None),) + (slice(2, 7),) * dims] = 1
    y[(slice(None),) + (slice(6, 11),) + (slice(0, 4),) * (dims - 1)] = 2
    augment = Augmenter(dims, hflip=0.5, vflip=0.5, rot90=(0, 1, 2, 3), flip_all_axes=dims == 3)
    x2, y2 = augment(y[:, None].float(), y, torch.Generator().manual_seed(1))
    assert torch.equal(x2[:, 0].long(), y2) and not torch.equal(y2, y)


def test_draws_come_from_the_generator_per_item():
    x, y = coordinate_batch(16, (16, 16), 2)
    augment = Augmenter(2, **{**EVERYTHING, "brightness": 0.2})
    first = augment(x, y, torch.Generator().manual_seed(5))
    second = augment(x, y, torch.Generator().manual_seed(5))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    other = augment(x, y, torch.Generator().manual_seed(6))
    assert not torch.equal(first[1], other[1])
    # items differ from each other: the choices are per item, not per batch
    assert len({tuple(item.flatten()[:20].tolist()) for item in first[1]}) > 4


def test_brightness_shifts_each_item_within_range():
    x = torch.zeros(64, 2, 4, 4)
    y = torch.zeros(64, 4, 4, dtype=torch.long)
    x2, y2 = Augmenter(2, brightness=0.2)(x, y, torch.Generator().manual_seed(0))
    shift = x2.amax(dim=(1, 2, 3))
    assert torch.equal(shift, x2.amin(dim=(1, 2, 3)))  # one shift per item, all channels
    assert shift.abs().max() <= 0.2 and shift.std() > 0.05 and torch.equal(y2, y)


def test_rot90_is_skipped_for_non_square_windows():
    x, y = coordinate_batch(4, (8, 12), 0)
    x2, y2 = Augmenter(2, rot90=(1,))(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(x2, x) and torch.equal(y2, y)


def test_nothing_switched_on_is_the_identity():
    x, y = coordinate_batch(4, (8, 8, 8), 2)
    x2, y2 = Augmenter(3)(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(x2, x) and torch.equal(y2, y)


def test_bad_options_raise_config_error():
    with pytest.raises(ConfigError):
        Augmenter(2, rot90=(4,))
    with pytest.raises(ConfigError):
        Augmenter(2, crop_resize=(0.9, 0.5))
    with pytest.raises(ConfigError):
        Augmenter(4)


@pytest.mark.parametrize("out_size, margin", [((32, 32), 0), ((24, 32), 6), ((20, 20, 20), 0),
                                              ((16, 20, 20), 4)])
def test_elastic_deformation_keeps_image_and_mask_aligned(out_size, margin):
    """Away from the window edges (where mirrored samples of the two windows differ) each
    warped mask pixel still sits where the warped coordinate ramps of the image point."""
    dims = len(out_size)
    x, y = coordinate_batch(6, out_size, margin)
    augment = Augmenter(dims, elastic=1.0, elastic_magnitude=1.5, elastic_grid=3)
    x2, y2 = augment(x, y, torch.Generator().manual_seed(3))
    assert x2.shape == x.shape and y2.shape == y.shape and y2.dtype == torch.long
    centre = x2[(slice(None), slice(None)) + tuple(slice(margin, margin + s) for s in out_size)]
    displacement = (centre - x[(slice(None), slice(None)) + tuple(
        slice(margin, margin + s) for s in out_size)]).abs()
    assert displacement.max() > 0.5  # the field moves pixels by more than rounding
    band = 6  # > the largest displacement at this magnitude
    inner = (slice(None),) + tuple(slice(band, s - band) for s in out_size)
    strides = torch.tensor([torch.tensor(out_size[a + 1:]).prod() for a in range(dims)])
    for axis in range(dims):
        mask_coordinate = (y2 // strides[axis]) % out_size[axis]
        assert (centre[:, axis][inner] - mask_coordinate[inner]).abs().max() <= 0.5 + 1e-3


def test_elastic_is_smooth_per_item_and_follows_its_probability():
    x, y = coordinate_batch(64, (32, 32), 0)
    x2, _ = Augmenter(2, elastic=0.5, elastic_magnitude=3.0)(x, y, torch.Generator().manual_seed(0))
    moved = (x2 - x).flatten(1).abs().amax(dim=1) > 1e-4
    assert 16 < int(moved.sum()) < 48  # about half of the items are warped
    assert torch.equal(x2[~moved], x[~moved])  # the others are untouched
    # smooth: neighbouring displacements differ far less than the displacements themselves
    d = (x2 - x)[moved]
    assert d.abs().max() > 2.0 and d.diff(dim=-1).abs().max() < 0.5 * d.abs().max()


def test_enabling_elastic_leaves_the_other_draws_unchanged():
    x, y = coordinate_batch(8, (16, 16), 0)
    plain = Augmenter(2, hflip=0.5, vflip=0.5, rot90=(0, 1, 2, 3))
    warped = Augmenter(2, hflip=0.5, vflip=0.5, rot90=(0, 1, 2, 3), elastic=1.0,
                       elastic_magnitude=0.0)  # magnitude 0: the warp is skipped
    a = plain(x, y, torch.Generator().manual_seed(4))
    b = warped(x, y, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_elastic_options_raise_config_error():
    with pytest.raises(ConfigError, match="elastic"):
        Augmenter(2, elastic=1.5)
    with pytest.raises(ConfigError, match="elastic"):
        Augmenter(3, elastic=0.5, elastic_grid=1)


def test_contrast_scales_each_channel_about_its_mean_within_range():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, 8, 8, generator=generator) * 2 + 5
    y = torch.zeros(64, 8, 8, dtype=torch.long)
    x2, y2 = Augmenter(2, contrast=0.25)(x, y, torch.Generator().manual_seed(1))
    dims = (2, 3)
    torch.testing.assert_close(x2.mean(dim=dims), x.mean(dim=dims))  # the mean stays
    factor = x2.std(dim=dims) / x.std(dim=dims)
    assert factor.min() >= 0.75 - 1e-4 and factor.max() <= 1.25 + 1e-4
    assert factor.std() > 0.1  # drawn per item ...
    assert (factor[:, 0] - factor[:, 1]).abs().max() > 0.1  # ... and per channel
    assert torch.equal(y2, y)
    with pytest.raises(ConfigError, match="contrast"):
        Augmenter(2, contrast=1.0)


def test_gamma_keeps_each_channels_statistics_and_order_and_only_where_chosen():
    from napari_unet.engine.training import intensity

    x = torch.randn(2, 3, 8, 12, 12, generator=torch.Generator().manual_seed(0))
    chosen = torch.tensor([[True, False, True], [False, False, True]])
    draws = torch.tensor([[0.1, 0.5, 0.9], [0.3, 0.3, 0.0]])  # gammas below and above 1
    out = intensity.gamma(x, chosen, draws)
    dims = (2, 3, 4)
    assert torch.equal(out[~chosen], x[~chosen])
    torch.testing.assert_close(out.mean(dims), x.mean(dims), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dims), x.std(dims), atol=1e-5, rtol=1e-4)
    for item, channel in chosen.nonzero().tolist():
        a, b = x[item, channel].flatten(), out[item, channel].flatten()
        # monotone: the order of values stays (values a float apart may tie, never swap)
        assert bool((b[a.argsort()].diff() >= -1e-6).all())
        assert not torch.allclose(a, b, atol=1e-3)  # and the values did change


def test_low_resolution_coarsens_the_chosen_channels_and_keeps_the_draws_of_the_rest():
    from napari_unet.engine.training import intensity

    x = torch.randn(1, 2, 16, 16, 16)
    out = intensity.low_resolution(x, torch.tensor([[True, False]]), torch.tensor([[0.0, 0.0]]))
    assert torch.equal(out[0, 1], x[0, 1])
    # at half resolution a voxel's neighbours agree more than in white noise
    def neighbour_difference(v):
        return (v[..., 1:] - v[..., :-1]).abs().mean()
    assert neighbour_difference(out[0, 0]) < 0.6 * neighbour_difference(x[0, 0])
    blocky = x[:, :, ::2, ::2, ::2].repeat_interleave(2, 2).repeat_interleave(2, 3) \
        .repeat_interleave(2, 4)
    assert torch.equal(intensity.low_resolution(blocky, torch.tensor([[False, False]]),
                                                torch.zeros(1, 2)), blocky)
    # intensity augmentations switched on leave the spatial ones drawn exactly as before
    y = torch.randint(0, 3, (2, 16, 16, 16))
    images = torch.randn(2, 2, 16, 16, 16)
    plain = Augmenter(3, flip_all_axes=True)(images, y, torch.Generator().manual_seed(3))
    more = Augmenter(3, flip_all_axes=True, gamma=1.0, low_resolution=1.0)(
        images, y, torch.Generator().manual_seed(3))
    assert torch.equal(plain[1], more[1]) and not torch.equal(plain[0], more[0])
    with pytest.raises(ConfigError, match="gamma is a probability"):
        Augmenter(3, gamma=1.5)


@pytest.mark.parametrize("option, value", [
    ("hflip", 0.5), ("vflip", 0.5), ("rot90", (0, 1)), ("crop_resize", (0.5, 1.0)),
    ("brightness", 0.1), ("flip_all_axes", True), ("elastic", 0.5), ("contrast", 0.1),
    ("gamma", 0.3), ("low_resolution", 0.3)])
def test_an_augmenter_with_everything_off_passes_batches_as_they_are(option, value):
    # issue 35: no draws, no per-item loop where nothing is on; any one option is something
    off = Augmenter(2, rot90=(0,))
    x, y = torch.randn(2, 1, 16, 16), torch.randint(0, 2, (2, 16, 16))
    out = off(x, y, torch.Generator().manual_seed(0))
    assert off.does_nothing and out[0] is x and out[1] is y
    assert not Augmenter(2, **{option: value}).does_nothing
