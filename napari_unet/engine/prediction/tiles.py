"""Tile geometry for the sliding window: where the tiles are, what the network sees of each,
and how much each output pixel of a tile counts when tiles are blended.

- The *output* is cut into tiles (``tile_starts``: steps of ``tile * (1 - overlap)``, the last
  tile flush with the end). For a padded network an output tile is the input window; for an
  unpadded one (UNet 572 -> 388) the window is the output tile plus the context the network
  eats, read from around the tile and mirrored where it leaves the image (the UNet paper's
  overlap-tile strategy).
- A 2D network over a ``(C, Z, Y, X)`` stack runs slice by slice: the stack is one more axis
  whose "tiles" are one slice thick.
- ``gaussian_importance``: the blending weight of a tile's pixels, highest at its centre.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import ConfigError, DataError

# -- the pieces: weights and tile positions ---------------------------------------------------

def gaussian_importance(tile_shape: Sequence[int], sigma_scale: float | Sequence[float] = 0.125,
                        dtype: torch.dtype = torch.float32,
                        min_fraction: float = 1e-3) -> torch.Tensor:
    """Blending weight of each pixel of an output tile: a Gaussian centred on the tile.

    ``sigma = sigma_scale * tile`` per axis (nnU-Net and MONAI use 1/8); 1 at the centre (just
    below between the two central pixels of an even tile), as MONAI computes it. Weights are
    clamped from below to ``min_fraction`` of that so that a tile's border still counts where
    no other tile covers it (the image's edges and corners).
    """
    shape = [int(n) for n in tile_shape]
    scales = list(sigma_scale) if isinstance(sigma_scale, Sequence) else [sigma_scale] * len(shape)
    if len(scales) != len(shape) or min(scales) <= 0:
        raise ConfigError(f"sigma_scale={sigma_scale!r} is not valid: give a positive number "
                          f"or one per axis ({len(shape)})")
    weight = torch.ones((), dtype=torch.float64)
    for n, scale in zip(shape, scales):
        x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        weight = weight[..., None] * torch.exp(-0.5 * (x / (scale * n)) ** 2)
    return weight.clamp_(min=min_fraction).to(dtype)


def tile_starts(size: int, tile: int, overlap: float = 0.25) -> list[int]:
    """Where the tiles start along one axis of length ``size``.

    Steps of ``tile * (1 - overlap)`` (at least 1 pixel), the last tile flush with the end, as
    MONAI places them; one tile at 0 when the axis is not longer than a tile (it is padded).
    """
    if not 0 <= overlap < 1:
        raise ConfigError(f"overlap={overlap!r} is not valid: use a fraction in [0, 1)")
    if size <= tile:
        return [0]
    step = max(1, int(tile * (1 - overlap)))
    return list(range(0, size - tile, step)) + [size - tile]


# -- the plan: where the tiles are, what the network sees --------------------------------------

@dataclass(frozen=True)
class Axis:
    """One spatial axis of the image and how it is tiled."""

    size: int      # image (and output) length
    window: int    # input length the network sees per tile
    tile: int      # output length the network returns per tile
    margin: int    # input context before the output tile: (window - tile) // 2
    starts: tuple  # output-tile starts

    def span(self, start: int) -> tuple[int, int]:
        """The output pixels of the tile at ``start`` that lie inside the image."""
        return start, min(start + self.tile, self.size)


def _as_sizes(value, dims: int, what: str) -> tuple[int, ...]:
    sizes = (value,) * dims if isinstance(value, (int, np.integer)) else tuple(value)
    if len(sizes) != dims or any(int(n) < 1 for n in sizes):
        raise ConfigError(f"{what}={value!r} is not valid: give one positive size or {dims}")
    return tuple(int(n) for n in sizes)


def plan_axes(model, image_shape: tuple[int, ...], tile_size, overlap: float) -> list[Axis]:
    """Tile geometry for a channel-first image; the leading axis of a stack under a 2D model
    is tiled one slice at a time."""
    dims = model.spatial_dims
    lead = len(image_shape) - 1 - dims
    if lead not in (0, 1):
        expected = "(C, Y, X) or (C, Z, Y, X)" if dims == 2 else "(C, Z, Y, X)"
        raise DataError(f"a {dims}D model takes a channel-first {expected} image, not shape "
                        f"{tuple(image_shape)}: add the channel axis or use a {dims}D image")
    if image_shape[0] != model.in_channels:
        raise DataError(f"the image has {image_shape[0]} channel(s) but the model takes "
                        f"{model.in_channels}: give the channels first, like the training images")
    sizes = image_shape[1 + lead:]
    window = model.valid_input_size(_as_sizes(tile_size, dims, "tile_size"))
    context = [w - t for w, t in zip(window, model.output_size(window))]
    # An image smaller than a tile: shrink the window to the image (plus context) rather than
    # spend the network on padding.
    window = model.valid_input_size([min(w, n + c) for w, n, c in zip(window, sizes, context)])
    tile = model.output_size(window)
    axes = [Axis(n, 1, 1, 0, tuple(range(n))) for n in image_shape[1:1 + lead]]
    axes += [Axis(n, w, t, (w - t) // 2, tuple(tile_starts(n, t, overlap)))
             for n, w, t in zip(sizes, window, tile)]
    return axes


def tile_origin(axes: list[Axis], index: int) -> tuple[int, ...]:
    """Output start of tile number ``index`` in row-major order (first axis slowest)."""
    origin = []
    for axis in reversed(axes):
        index, i = divmod(index, len(axis.starts))
        origin.append(axis.starts[i])
    return tuple(reversed(origin))


def slab_depth(axes: list[Axis], total: int, batch_size: int) -> int:
    """Rows (along the first axis) that the tiles in flight can span: the accumulator's depth.

    Before batch k the slab starts at the first row of its first tile (rows above are
    finished); it must reach the last row of the batch's last tile.
    """
    first_axis = axes[0]
    per_row = total // len(first_axis.starts)
    starts = np.asarray(first_axis.starts)
    firsts = np.arange(0, total, batch_size)
    lasts = np.minimum(firsts + batch_size, total) - 1
    ends = np.minimum(starts[lasts // per_row] + first_axis.tile, first_axis.size)
    return int((ends - starts[firsts // per_row]).max())


# -- reading windows ---------------------------------------------------------------------------

def as_float32(region: np.ndarray) -> np.ndarray:
    return region.astype(np.float32, copy=False)


def read_window(image, axes: list[Axis], origin: tuple[int, ...],
                preprocess: Callable) -> np.ndarray:
    """The network's input for the tile at ``origin``: only that region of the image is read
    (a memory map stays on disk), preprocessed, then mirrored where it leaves the image."""
    inside, pads = [slice(None)], [(0, 0)]
    for axis, start in zip(axes, origin):
        low = start - axis.margin
        high = low + axis.window
        inside.append(slice(max(low, 0), min(high, axis.size)))
        pads.append((max(-low, 0), max(high - axis.size, 0)))
    raw = np.asarray(image[tuple(inside)])
    region = np.asarray(preprocess(raw), dtype=np.float32)
    if region.shape != raw.shape:
        raise DataError(f"preprocess turned a {raw.shape} region into {region.shape}: it must "
                        "keep the shape (a pointwise normalisation)")
    if any(p != (0, 0) for p in pads):
        # numpy reflects repeatedly when a pad is longer than the image (tiny images)
        region = np.pad(region, pads, mode="reflect")
    return region
