"""Sliding-window prediction (napari_unet.engine.inference).

Exactness tests use models whose whole-image result is known: a pointwise (1x1 conv) model
is translation-equivariant with no context, so any tiling with correctly normalised blending
gives exactly the whole-image result; a stack of 'valid' 3x3 convs does the same for unpadded
models once the whole image is mirror-padded by its margin.
"""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from napari_unet.engine.events import TilesDone
from napari_unet.engine.prediction.sliding_window import (
    gaussian_importance,
    iter_sliding_window,
    sliding_window_probabilities,
    tile_starts,
)
from napari_unet.errors import ConfigError, DataError
from napari_unet.io import TifMemmapWriter
from napari_unet.models import build_model

# -- stand-in models that follow docs/CONTRACTS.md ---------------------------------------------

class Pointwise(nn.Module):
    """A 1x1 conv: padded, any size valid, flip-equivariant."""

    def __init__(self, spatial_dims=2, in_channels=1, num_classes=1, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        self.num_classes = num_classes
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.conv = conv(in_channels, num_classes, 1)

    def output_size(self, size):
        return tuple(size)

    def valid_input_size(self, size):
        return tuple(size)

    def forward(self, x):
        return self.conv(x)


class ValidConvs(nn.Module):
    """Unpadded: ``convs`` 3x3 'valid' convs crop ``convs`` pixels on each side."""

    def __init__(self, convs=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.spatial_dims, self.in_channels, self.num_classes = 2, 1, 1
        self.margin = convs
        layers = [nn.Conv2d(1, 4, 3), nn.ReLU()]
        for _ in range(convs - 2):
            layers += [nn.Conv2d(4, 4, 3), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Conv2d(4, 1, 3))

    def output_size(self, size):
        return tuple(n - 2 * self.margin for n in size)

    def valid_input_size(self, size):
        return tuple(max(n, 2 * self.margin + 1) for n in size)

    def forward(self, x):
        return self.net(x)


def whole(model, image, num_classes=1):
    """The reference: the network run once on the whole (channel-first) image."""
    with torch.inference_mode():
        logits = model.eval()(torch.from_numpy(np.ascontiguousarray(image))[None].float())
        if num_classes == 1:
            return torch.sigmoid(logits)[0, 0].numpy()
        probs = torch.softmax(logits, dim=1)[0]
        return (probs[1] if num_classes == 2 else probs).numpy()


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- the pieces --------------------------------------------------------------------------------

def test_gaussian_importance_is_a_positive_centred_bump():
    w = gaussian_importance((64, 48))
    assert w.shape == (64, 48) and w.dtype == torch.float32
    assert 0.99 < float(w.max()) < 1  # even sizes: the centre falls between two pixels
    assert float(gaussian_importance((33, 9)).max()) == pytest.approx(1.0)
    assert float(w.min()) >= 1e-3 - 1e-9  # borders still count
    assert torch.equal(w, w.flip(0)) and torch.equal(w, w.flip(1))
    assert w[32, 24] > w[32, 0] > 0
    assert gaussian_importance((5, 6, 7), dtype=torch.float64).shape == (5, 6, 7)
    with pytest.raises(ConfigError):
        gaussian_importance((8, 8), sigma_scale=0)


def test_tile_starts_follow_monai_grid():
    assert tile_starts(512, 256, 0.25) == [0, 192, 256]
    assert tile_starts(512, 256, 0.0) == [0, 256]
    assert tile_starts(256, 256, 0.5) == [0]
    assert tile_starts(100, 128) == [0]  # smaller than a tile: one (padded) tile
    with pytest.raises(ConfigError):
        tile_starts(100, 10, 1.0)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 300), tile=st.integers(1, 120), overlap=st.floats(0, 0.95))
def test_tiles_cover_the_axis_and_end_flush(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert starts[-1] + tile >= size and (size <= tile or starts[-1] + tile == size)
    assert all(b - a <= tile for a, b in zip(starts, starts[1:]))  # no gap


# -- exactness against whole-image runs --------------------------------------------------------

def test_one_tile_equals_whole_image_with_padded_model():
    model = build_model("tiny_unet", base_channels=4)
    image = rand(1, 64, 48)
    probs = sliding_window_probabilities(model, image, tile_size=64)
    np.testing.assert_allclose(probs, whole(model, image), atol=1e-6)


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_overlapping_tiles_of_pointwise_model_equal_whole_image(blend):
    model = Pointwise()
    image = rand(1, 70, 90)
    probs = sliding_window_probabilities(model, image, tile_size=32, overlap=0.5, blend=blend, batch_size=3)
    assert probs.shape == (70, 90) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, whole(model, image), atol=1e-6)


def test_unpadded_model_tiles_like_a_mirror_padded_whole_image():
    model = ValidConvs(convs=3)
    image = rand(1, 100, 130)
    probs = sliding_window_probabilities(model, image, tile_size=40, overlap=0.25, batch_size=5)
    padded = np.pad(image, ((0, 0), (3, 3), (3, 3)), mode="reflect")
    np.testing.assert_allclose(probs, whole(model, padded), atol=1e-5)


def test_real_unpadded_unet_matches_whole_image_when_tiles_keep_the_pooling_grid():
    # depth 3: margin 20, valid sizes are multiples of 4; tile starts 0/36/40 and 0/36/72 keep
    # the max-pool grid of the whole-image run, so the results are equal.
    model = build_model("unet", base_channels=4, depth=3)
    image = rand(1, 100, 132)
    probs = sliding_window_probabilities(model, image, tile_size=100, overlap=0.4)
    padded = np.pad(image, ((0, 0), (20, 20), (20, 20)), mode="reflect")
    np.testing.assert_allclose(probs, whole(model, padded, num_classes=2), atol=1e-5)


def test_3d_windows_with_pointwise_model():
    model = Pointwise(spatial_dims=3, in_channels=2, num_classes=3)
    image = rand(2, 20, 40, 36)
    probs = sliding_window_probabilities(model, image, tile_size=(8, 16, 16), overlap=0.25, batch_size=3)
    assert probs.shape == (3, 20, 40, 36)
    np.testing.assert_allclose(probs, whole(model, image, num_classes=3), atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def test_2d_model_over_a_stack_runs_slice_by_slice():
    model = build_model("tiny_unet", base_channels=4)
    stack = rand(1, 5, 40, 40)
    # batches of 3 tiles mix slices (4 tiles per slice)
    probs = sliding_window_probabilities(model, stack, tile_size=32, overlap=0.25, batch_size=3)
    assert probs.shape == (5, 40, 40)
    for z in range(5):
        one = sliding_window_probabilities(model, stack[:, z], tile_size=32, overlap=0.25)
        np.testing.assert_allclose(probs[z], one, atol=1e-6)
    pointwise = Pointwise()
    np.testing.assert_allclose(sliding_window_probabilities(pointwise, stack, tile_size=16, batch_size=7),
                               whole(Pointwise(spatial_dims=3), stack), atol=1e-6)


def test_two_class_model_gives_foreground_probability_and_labels():
    model = Pointwise(num_classes=2)
    image = rand(1, 30, 50)
    labels = np.zeros((30, 50), np.uint8)
    probs = sliding_window_probabilities(model, image, tile_size=16, labels_out=labels, threshold=0.3)
    np.testing.assert_allclose(probs, whole(model, image, num_classes=2), atol=1e-6)
    np.testing.assert_array_equal(labels, probs >= 0.3)


def test_image_smaller_than_one_tile():
    model = build_model("tiny_unet", base_channels=4)
    image = rand(1, 20, 13)
    probs = sliding_window_probabilities(model, image, tile_size=64)
    assert probs.shape == (20, 13)
    padded = np.pad(image, ((0, 0), (0, 12), (0, 3)), mode="reflect")  # to 32 x 16
    np.testing.assert_allclose(probs, whole(model, padded)[:20, :13], atol=1e-6)
    assert sliding_window_probabilities(ValidConvs(), rand(1, 5, 3), tile_size=40).shape == (5, 3)


# -- options -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dims,shape", [(2, (1, 33, 45)), (3, (1, 12, 20, 18))])
def test_tta_with_flip_equivariant_model_equals_no_tta(dims, shape):
    model = Pointwise(spatial_dims=dims)
    image = rand(*shape)
    plain = sliding_window_probabilities(model, image, tile_size=16)
    np.testing.assert_allclose(sliding_window_probabilities(model, image, tile_size=16, tta=True), plain,
                               atol=1e-6)


def test_tta_averages_flipped_predictions_of_a_real_model():
    model = build_model("tiny_unet", base_channels=4)
    image = rand(1, 32, 32)
    expected = np.mean([np.flip(whole(model, np.flip(image, axes).copy()), [a - 1 for a in axes])
                        for axes in [(), (1,), (2,), (1, 2)]], axis=0)
    np.testing.assert_allclose(sliding_window_probabilities(model, image, tile_size=32, tta=True), expected,
                               atol=1e-6)


def test_dihedral_tta_averages_all_eight_symmetries_of_a_real_model():
    model = build_model("tiny_unet", base_channels=4)
    image = rand(1, 32, 32)

    def turned(k):  # the model's prediction of the image turned by k quarter turns, turned back
        return [np.rot90(np.flip(whole(model, np.flip(np.rot90(image, k, (1, 2)), axes).copy()),
                                 [a - 1 for a in axes]), -k) for axes in [(), (1,), (2,), (1, 2)]]
    expected = np.mean(turned(0) + turned(1), axis=0)  # flips x {identity, quarter turn}: all 8
    dihedral = sliding_window_probabilities(model, image, tile_size=32, tta="dihedral")
    np.testing.assert_allclose(dihedral, expected, atol=1e-6)
    mirror = sliding_window_probabilities(model, image, tile_size=32, tta="mirror")
    assert np.abs(dihedral - mirror).max() > 1e-4  # the quarter turns add something
    np.testing.assert_allclose(mirror, sliding_window_probabilities(model, image, tile_size=32, tta=True))


def test_dihedral_tta_needs_square_tiles_and_a_known_mode():
    model = build_model("tiny_unet", base_channels=4)
    with pytest.raises(ConfigError, match="square"):
        iter_sliding_window(model, rand(1, 64, 32), tile_size=(64, 32), tta="dihedral")
    with pytest.raises(ConfigError, match="tta"):
        iter_sliding_window(model, rand(1, 32, 32), tile_size=32, tta="rotate")


def test_channels_last_and_bf16():
    model = build_model("tiny_unet", base_channels=4)
    image = rand(1, 48, 40)
    plain = sliding_window_probabilities(model, image, tile_size=32)
    fast = sliding_window_probabilities(model, image, tile_size=32, channels_last=True)
    np.testing.assert_allclose(fast, plain, atol=1e-5)
    half = sliding_window_probabilities(model, image, tile_size=32, amp="bf16")
    assert half.dtype == np.float32 and np.abs(half - plain).max() < 0.05


def test_memory_mapped_input_and_output(tmp_path):
    model = build_model("tiny_unet", base_channels=4)
    data = np.random.default_rng(1).integers(0, 4000, (3, 50, 70), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", data, photometric="minisblack")
    image = tifffile.memmap(tmp_path / "in.tif", mode="r")[None]
    assert isinstance(image, np.memmap)
    labels = tifffile.memmap(tmp_path / "labels.tif", shape=(3, 50, 70), dtype=np.uint8,
                             photometric="minisblack")

    def normalise(region):  # pointwise, with fixed statistics
        return region.astype(np.float32) / 2000 - 1

    with TifMemmapWriter(tmp_path / "out.tif", (3, 50, 70), np.float32) as out:
        result = sliding_window_probabilities(model, image, tile_size=32, overlap=0.25, batch_size=5,
                               preprocess=normalise, out=out, labels_out=labels)
        assert result is out
    labels.flush()
    expected = sliding_window_probabilities(model, normalise(data)[None], tile_size=32, overlap=0.25)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "out.tif"), expected, atol=1e-6)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "labels.tif"), expected >= 0.5)
    np.testing.assert_array_equal(np.asarray(image[0]), data)  # input untouched


def test_progress_counts_reach_total():
    events = []
    run = iter_sliding_window(Pointwise(), rand(1, 3, 40, 40), tile_size=16, batch_size=4)
    while True:
        try:
            events.append(next(run))
        except StopIteration as finished:
            probs = finished.value
            break
    assert probs.shape == (3, 40, 40)
    assert all(isinstance(e, TilesDone) for e in events)
    assert [e.done for e in events] == [4, 8, 12, 16, 20, 24, 27]
    assert {e.total for e in events} == {27}  # 3 slices x 3 x 3 tiles


def test_closing_the_generator_cancels_between_batches():
    model = Pointwise()
    model.train()
    out = np.full((4, 64, 64), -1, np.float32)
    run = iter_sliding_window(model, rand(1, 4, 64, 64), tile_size=16, batch_size=2, out=out)
    first = next(run)
    assert first == TilesDone(2, 100)
    run.close()  # no exception
    with pytest.raises(StopIteration):
        next(run)
    assert model.training  # mode restored
    assert (out[1:] == -1).all()  # nothing beyond the first slice's band was written


def test_bad_arguments_raise_at_the_call():
    model = Pointwise()
    with pytest.raises(ConfigError):
        iter_sliding_window(model, rand(1, 8, 8), tile_size=8, overlap=1.0)
    with pytest.raises(ConfigError):
        iter_sliding_window(model, rand(1, 8, 8), tile_size=8, blend="max")
    with pytest.raises(DataError):
        iter_sliding_window(model, rand(2, 8, 8), tile_size=8)  # wrong channels
    with pytest.raises(DataError):
        iter_sliding_window(Pointwise(spatial_dims=3), rand(1, 8, 8), tile_size=8)
    with pytest.raises(DataError):
        iter_sliding_window(model, rand(1, 8, 8), tile_size=8, out=np.zeros((8, 9), np.float32))
    off_centre = ValidConvs()
    off_centre.output_size = lambda size: tuple(n - 7 for n in size)  # odd context
    with pytest.raises(ConfigError):
        iter_sliding_window(off_centre, rand(1, 30, 30), tile_size=20, tta=True)


def test_caller_memory_format_is_kept_unless_channels_last_is_asked():
    model = build_model("tiny_unet", base_channels=4).to(memory_format=torch.channels_last)
    sliding_window_probabilities(model, rand(1, 32, 32), tile_size=32)
    assert model.encoder[1].conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    """What the GPU's precision allows, from its mantissa (probabilities lie in [0, 1]):
    - fp32 with TF32 off: the CPU's arithmetic up to the order of the sums (cuDNN's algorithms
      against oneDNN's): 1e-5;
    - TF32 (the engine's GPU default): products rounded to a 10-bit mantissa, a relative error
      of 2^-11 (4.9e-4) each, carried through the network's layers: 8 x 2^-11 (3.9e-3; seen
      1.4e-4 on an H200);
    - fp16 autocast (10-bit mantissa, fp16 activations in between): 0.05."""
    model = build_model("tiny_unet", base_channels=4)
    image = rand(1, 3, 70, 90)
    on_cpu = sliding_window_probabilities(model, image, tile_size=32, tta=True)
    options = dict(tile_size=32, tta=True, device="cuda", channels_last=True)
    exact = sliding_window_probabilities(model, image, tf32=False, **options)
    np.testing.assert_allclose(exact, on_cpu, atol=1e-5)
    tf32 = sliding_window_probabilities(model, image, tf32=True, **options)
    np.testing.assert_allclose(tf32, on_cpu, atol=8 * 2.0**-11)
    half = sliding_window_probabilities(model, image, tile_size=32, device="cuda", amp="fp16")
    assert np.abs(half - on_cpu).max() < 0.05
