"""Sliding-window prediction: tiles, Gaussian blending, mirror TTA, volumes bigger than RAM.

The scheme, learnt from MONAI's ``sliding_window_inference`` and nnU-Net's predictor:

- The *output* is cut into tiles (``tile_starts``: steps of ``tile * (1 - overlap)``, the last
  tile flush with the end). For a padded network an output tile is the input window; for an
  unpadded one (UNet 572 -> 388) the window is the output tile plus the context the network
  eats, read from around the tile and mirrored where it leaves the image (the UNet paper's
  overlap-tile strategy).
- Overlapping predictions are blended with a weight map (``gaussian_importance``) so that the
  centre of a tile, where the network saw the most context, counts the most, and divided by the
  summed weights, so any number of overlapping tiles blends to a weighted mean.
- Tiles go through the network in batches, under ``torch.inference_mode`` and optionally
  ``torch.autocast`` and channels-last, and optionally averaged over mirror flips or all the
  flips and quarter turns (TTA).
- A 2D network over a ``(C, Z, Y, X)`` stack runs slice by slice: the stack is just one more
  axis whose "tiles" are one slice thick, so the same code handles 2D images, stacks and
  volumes, and tiles from several slices share a batch.
- Peak memory does not grow with the volume: the input is read one window at a time (a
  memory map is never loaded whole) and the weighted sums are kept only for the slab of rows
  along the first spatial axis that the tiles in flight cover (``_Slab``). Rows no later tile
  reaches are finished: they are normalised, written to ``out`` and forgotten.

``iter_sliding_window`` is a generator: it yields ``TilesDone`` after each batch and *returns*
the probabilities (``StopIteration.value``; ``result = yield from iter_sliding_window(...)``
in a calling generator, ``worker.returned`` in napari's ``thread_worker``). Closing it cancels
between two batches. ``sliding_window_probabilities`` is the blocking form.
"""
from __future__ import annotations

import itertools
import math
import mmap
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...choices import AMP_MODES, TTA_MODES
from ...errors import ConfigError, DataError
from ..events import TilesDone
from ..labels import labels_from_regions, model_regions
from ..runtime import autocast, configure_backends

BLENDS = ("gaussian", "constant")


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
class _Axis:
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


def _plan_axes(model, image_shape: tuple[int, ...], tile_size, overlap: float) -> list[_Axis]:
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
    axes = [_Axis(n, 1, 1, 0, tuple(range(n))) for n in image_shape[1:1 + lead]]
    axes += [_Axis(n, w, t, (w - t) // 2, tuple(tile_starts(n, t, overlap)))
             for n, w, t in zip(sizes, window, tile)]
    return axes


def _tile_origin(axes: list[_Axis], index: int) -> tuple[int, ...]:
    """Output start of tile number ``index`` in row-major order (first axis slowest)."""
    origin = []
    for axis in reversed(axes):
        index, i = divmod(index, len(axis.starts))
        origin.append(axis.starts[i])
    return tuple(reversed(origin))


def _slab_depth(axes: list[_Axis], total: int, batch_size: int) -> int:
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

def _as_float32(region: np.ndarray) -> np.ndarray:
    return region.astype(np.float32, copy=False)


def _read_window(image, axes: list[_Axis], origin: tuple[int, ...],
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


# -- running the network -----------------------------------------------------------------------
def tta_mode(tta) -> str:
    """``tta`` as one of TTA_MODES: False/None -> "off", True -> "mirror"."""
    if tta is None or tta is False:
        return "off"
    if tta is True:
        return "mirror"
    if tta not in TTA_MODES:
        raise ConfigError(f"tta={tta!r} is not valid: choose one of {', '.join(TTA_MODES)} "
                          f"(or True for mirror)")
    return tta


def _tta_transforms(dims: int, tta, window: tuple[int, ...]) -> list[tuple[tuple[int, ...], bool]]:
    """(flipped axes, last two axes swapped) of each pass: 1; mirror: every flip combination
    (4 in 2D, 8 in 3D); dihedral: those again with the last two axes swapped, which adds the
    quarter turns (all 8 symmetries of a square in 2D; 16 in 3D, in-plane turns)."""
    mode = tta_mode(tta)
    if mode == "off":
        return [((), False)]
    spatial = range(2, 2 + dims)
    flips = [combo for r in range(dims + 1) for combo in itertools.combinations(spatial, r)]
    if mode == "mirror":
        return [(axes, False) for axes in flips]
    if window[-1] != window[-2]:
        raise ConfigError(f"dihedral tta turns tiles by quarter turns, which needs square tiles, "
                          f"not {'x'.join(map(str, window))}: use a square tile size or mirror tta")
    return [(axes, swap) for swap in (False, True) for axes in flips]


def blended_channels(model) -> int:
    """Channels of the probabilities that are blended and returned: one per region of a
    region model (independent sigmoids), else 1 for sigmoid and 2-class models, K for K > 2."""
    regions = model_regions(model)
    if regions:
        return len(regions)
    return 1 if model.num_classes <= 2 else model.num_classes


def _probabilities(logits: torch.Tensor, model) -> torch.Tensor:
    """What is blended: sigmoid (K=1, or every region of a region model), the foreground of a
    2-class softmax (K=2, computed as the sigmoid of the logit difference: one channel to blend
    instead of two), softmax (K>2)."""
    logits = logits.float()
    if model.num_classes == 1 or model_regions(model):
        return torch.sigmoid(logits)
    if model.num_classes == 2:
        return torch.sigmoid(logits[:, 1:2] - logits[:, 0:1])
    return torch.softmax(logits, dim=1)


def labels_from_probabilities(probabilities: np.ndarray, num_outputs: int,
                              threshold: float = 0.5, regions=None) -> np.ndarray:
    """The labels of blended probabilities: region models (``regions``) each region at the
    threshold, labels in the data's convention (engine.regions); multi-class (K > 2): argmax
    over the class axis; binary: probability >= threshold."""
    if regions:
        return labels_from_regions(probabilities, regions, threshold)
    if num_outputs > 2:
        return np.argmax(probabilities, axis=0).astype(np.uint8)
    return (probabilities >= threshold).astype(np.uint8)


def _predict_batch(model, batch: torch.Tensor, transforms, amp: str,
                   tile: tuple[int, ...]) -> torch.Tensor:
    """Probabilities of a batch of windows, averaged over the TTA transforms (each undone)."""
    total = None
    with autocast(batch.device, amp):
        for axes, swap in transforms:
            x = batch.transpose(-1, -2) if swap else batch
            logits = model(x.flip(axes) if axes else x)
            if tuple(logits.shape[2:]) != tile:
                raise DataError(f"the model returned {tuple(logits.shape[2:])} for a "
                                f"{tuple(batch.shape[2:])} window, but its output_size says "
                                f"{tile}: fix the model's output_size")
            probs = _probabilities(logits, model)
            probs = probs.flip(axes) if axes else probs
            probs = probs.transpose(-1, -2) if swap else probs
            total = probs if total is None else total.add_(probs)
    return total.div_(len(transforms)) if len(transforms) > 1 else total


# -- the slab of weighted sums, and where finished rows go -------------------------------------

class _Slab:
    """Weighted sums of probabilities and of weights for rows [base, base + depth) of the first
    spatial axis: the only accumulator, so its size is independent of the volume's depth."""

    def __init__(self, channels: int, depth: int, rest: tuple[int, ...], device):
        self.sums = torch.zeros((channels, depth, *rest), device=device)
        self.weights = torch.zeros((depth, *rest), device=device)
        self.base = 0    # image row of the slab's first row
        self.filled = 0  # slab rows touched so far

    def add(self, probs: torch.Tensor, origin: tuple[int, ...], axes: list[_Axis],
            weight: torch.Tensor) -> None:
        """Blend one tile's probabilities ``(channels, *tile)`` in, cropped to the image."""
        spans = [axis.span(start) for axis, start in zip(axes, origin)]
        crop = tuple(slice(0, stop - start) for start, stop in spans)
        where = [slice(start, stop) for start, stop in spans]
        where[0] = slice(spans[0][0] - self.base, spans[0][1] - self.base)
        self.sums[(slice(None), *where)].addcmul_(probs[(slice(None), *crop)], weight[crop])
        self.weights[tuple(where)].add_(weight[crop])
        self.filled = max(self.filled, where[0].stop)

    def take_finished(self, upto: int) -> torch.Tensor | None:
        """Rows [base, upto), which no later tile reaches, as probabilities; the slab moves on."""
        rows = upto - self.base
        if rows <= 0:
            return None
        probs = self.sums[:, :rows] / self.weights[:rows]
        keep = self.filled - rows
        if keep > 0:  # rows already touched by tiles of the next band move to the front
            self.sums[:, :keep] = self.sums[:, rows:self.filled].clone()
            self.weights[:keep] = self.weights[rows:self.filled].clone()
        self.sums[:, max(keep, 0):self.filled].zero_()
        self.weights[max(keep, 0):self.filled].zero_()
        self.filled, self.base = max(keep, 0), upto
        return probs


def _shared_file_map(array) -> tuple[mmap.mmap | None, int]:
    """The shared file mapping behind a (view of a) np.memmap, and its start address."""
    if not (sys.platform.startswith("linux") and hasattr(mmap, "MADV_DONTNEED")):
        return None, 0
    node = array
    while node is not None:
        if isinstance(node, np.memmap) and getattr(node, "_mmap", None) is not None:
            if node.mode == "c":  # copy-on-write: dropping pages would lose the caller's edits
                return None, 0
            return node._mmap, np.frombuffer(node._mmap, dtype=np.uint8).ctypes.data
        node = getattr(node, "base", None)
    return None, 0


class _PageReleaser:
    """Drops finished rows of a memory-mapped array from this process's resident memory.

    Every page of a np.memmap that was read or written stays mapped, and counted as resident,
    until the map is closed: predicting a 2 GiB volume from disk into a 4 GiB output would hold
    6 GiB. ``madvise(MADV_DONTNEED)`` unmaps finished pages; for shared file mappings (modes
    r, r+, w+) the data stays in the file and page cache and is read back if touched again.
    Linux only; elsewhere, and for ordinary arrays, it does nothing.
    """

    def __init__(self, array, row_axis: int):
        self.array, self.row_axis, self.done = array, row_axis, 0
        self.map, self.map_start = _shared_file_map(array) if array is not None else (None, 0)

    def release(self, upto: int) -> None:
        if self.map is None or upto <= self.done:
            return
        page = mmap.PAGESIZE
        for index in np.ndindex(*self.array.shape[:self.row_axis]):
            rows = self.array[index]
            if not rows[self.done:upto].flags.c_contiguous:
                continue
            begin = rows[self.done:].ctypes.data - self.map_start
            end = begin + rows[self.done:upto].nbytes
            # whole pages only; a page shared with unfinished rows is kept for the next call
            begin, end = begin // page * page, end // page * page
            if end > begin:
                self.map.madvise(mmap.MADV_DONTNEED, begin, end - begin)
        self.done = upto


class _Writer:
    """Writes finished rows into ``out`` (and ``labels_out``) and releases their pages."""

    def __init__(self, out, labels_out, model, threshold: float, image, input_margin: int):
        self.out, self.labels_out = out, labels_out
        self.num_outputs, self.regions = model.num_classes, model_regions(model)
        self.many = blended_channels(model) > 1
        self.threshold = threshold
        self.input_margin = input_margin
        self.releasers = [(_PageReleaser(out, int(self.many)), 0),
                          (_PageReleaser(labels_out, 0), 0),
                          (_PageReleaser(image, 1), -input_margin)]

    def write(self, low: int, high: int, probs: torch.Tensor) -> None:
        probs = probs.cpu().numpy()
        if self.many:
            self.out[:, low:high] = probs
        else:
            self.out[low:high] = probs[0]
        if self.labels_out is not None:
            self.labels_out[low:high] = labels_from_probabilities(
                probs if self.many else probs[0], self.num_outputs, self.threshold, self.regions)
        for releaser, shift in self.releasers:
            releaser.release(max(high + shift, 0))


# -- the public API ----------------------------------------------------------------------------

def _check_options(overlap, batch_size, blend, amp, threshold) -> None:
    if not 0 <= overlap < 1:
        raise ConfigError(f"overlap={overlap!r} is not valid: use a fraction in [0, 1)")
    if batch_size is None:  # chosen from the free device memory
        pass
    elif isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} is not valid: use a whole number >= 1")
    if blend not in BLENDS:
        raise ConfigError(f"blend={blend!r} is not valid: choose one of {', '.join(BLENDS)}")
    if amp not in AMP_MODES:
        raise ConfigError(f"amp={amp!r} is not valid: choose one of {', '.join(AMP_MODES)}")
    if not 0 <= threshold <= 1:
        raise ConfigError(f"threshold={threshold!r} is not valid: use a number in [0, 1]")


def _check_output(array, shape: tuple[int, ...], what: str, dtype) -> np.ndarray:
    if array is None:
        return np.empty(shape, dtype)
    if tuple(array.shape) != shape:
        raise DataError(f"{what} has shape {tuple(array.shape)} but the prediction is {shape}: "
                        f"allocate it with that shape")
    return array


def iter_sliding_window(model, image, *, tile_size, overlap: float = 0.25,
                        batch_size: int | None = 4,
                        blend: str = "gaussian", sigma_scale: float = 0.125, tta=False,
                        amp: str = "off", device="cpu", channels_last: bool = False,
                        preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
                        out=None, labels_out=None,
                        threshold: float = 0.5) -> Iterator[TilesDone]:
    """Predict a channel-first image tile by tile; yield ``TilesDone`` after each batch and
    return the probabilities (the generator's return value).

    ``image``: ``(C, Y, X)``, or ``(C, Z, Y, X)`` for a 3D model or a stack under a 2D model;
    any array-like that slices to numpy, e.g. a read-only ``np.memmap`` bigger than RAM.
    ``tile_size``: the network's input window (int or one per model axis; rounded up to a
    valid size, shrunk to the image when it is smaller). ``preprocess`` maps each read region
    ``(C, ...)`` to a float32 array of the same shape; it must be pointwise (statistics computed
    beforehand), since it never sees the whole image.

    Returns float32 probabilities in [0, 1]: ``(*spatial)`` for 1-class (sigmoid) and 2-class
    (softmax, foreground = class 1) models, ``(K, *spatial)`` for K > 2 classes; written into
    ``out`` if given (e.g. a memory map from ``io.TifMemmapWriter``) progressively, else into a
    new array. ``labels_out`` (optional, ``(*spatial)``) receives ``probability >= threshold``
    or the argmax class. The model is put in eval mode (restored at the end) and moved to
    ``device`` (and to channels-last when asked) in place. ``batch_size`` None: as many tiles
    as half the free memory of a GPU holds (``default_tile_batch``; 4 on a CPU). On a GPU the
    backends are set as for training (cudnn benchmark, TF32) and tile batches travel from two
    pinned buffers in turn, so the next batch is read while the last one is copied. Closing the generator stops the work
    between two batches; what was written stays for the caller's writer to discard.
    """
    _check_options(overlap, batch_size, blend, amp, threshold)
    device = torch.device(device)
    axes = _plan_axes(model, tuple(image.shape), tile_size, overlap)
    if tta_mode(tta) != "off" and any(axis.window - axis.tile != 2 * axis.margin
                                      for axis in axes):
        raise ConfigError("tta needs a model whose output is centred in its input (an even "
                          "size difference): predict without tta")
    transforms = _tta_transforms(model.spatial_dims, tta,
                                 tuple(axis.window for axis in axes))
    spatial = tuple(axis.size for axis in axes)
    channels = blended_channels(model)
    out = _check_output(out, spatial if channels == 1 else (channels, *spatial),
                        "out", np.float32)
    labels_out = None if labels_out is None else _check_output(labels_out, spatial,
                                                               "labels_out", np.uint8)
    return _run(model, image, axes, out, labels_out, batch_size=batch_size, blend=blend,
                sigma_scale=sigma_scale, transforms=transforms, amp=amp, device=device,
                channels_last=channels_last, preprocess=preprocess or _as_float32,
                threshold=threshold)


def _run(model, image, axes: list[_Axis], out, labels_out, *, batch_size, blend, sigma_scale,
         transforms, amp, device, channels_last, preprocess, threshold):
    """The generator behind ``iter_sliding_window`` (split off so that bad arguments raise at
    the call, not at the first ``next``)."""
    dims = model.spatial_dims
    lead = len(axes) - dims
    window = tuple(axis.window for axis in axes[lead:])
    tile = tuple(axis.tile for axis in axes[lead:])
    channels = blended_channels(model)
    total = math.prod(len(axis.starts) for axis in axes)
    memory_format = {2: torch.channels_last, 3: torch.channels_last_3d}[dims] \
        if channels_last else torch.contiguous_format
    was_training = model.training
    model.eval()
    model.to(device)
    if channels_last:  # left as the caller has it otherwise (a trainer may use either)
        model.to(memory_format=memory_format)
    configure_backends(device)
    if batch_size is None:
        batch_size = default_tile_batch(model, (image.shape[0], *window), device, amp,
                                        memory_format)
    with torch.inference_mode():
        weight = (gaussian_importance(tile, sigma_scale) if blend == "gaussian"
                  else torch.ones(tile)).reshape((1,) * lead + tile).to(device)
        slab = _Slab(channels, _slab_depth(axes, total, batch_size),
                     tuple(axis.size for axis in axes[1:]), device)
    writer = _Writer(out, labels_out, model, threshold, image, axes[0].margin)
    buffers = _TileBuffers((batch_size, image.shape[0], *window), device)
    try:
        for first in range(0, total, batch_size):
            origins = [_tile_origin(axes, i) for i in range(first, min(first + batch_size, total))]
            batch = buffers.take()
            for slot, origin in enumerate(origins):
                batch[slot] = _read_window(image, axes, origin, preprocess).reshape(batch.shape[1:])
            done = first + len(origins)
            upto = _tile_origin(axes, done)[0] if done < total else axes[0].size
            with torch.inference_mode():
                x = buffers.send(len(origins))
                probs = _predict_batch(model, x.contiguous(memory_format=memory_format),
                                       transforms, amp, tile)
                for tile_probs, origin in zip(probs, origins):
                    slab.add(tile_probs.reshape(channels, *weight.shape), origin, axes, weight)
                finished = slab.take_finished(upto)
            if finished is not None:
                writer.write(upto - finished.shape[1], upto, finished)
            yield TilesDone(done, total)
    finally:
        model.train(was_training)
    return out


class _TileBuffers:
    """Host memory for tile batches: one array on a CPU; on a GPU two pinned buffers used in
    turn, each copied with ``non_blocking`` so that the host reads the next batch meanwhile
    (a buffer is refilled only once its last copy has finished)."""

    def __init__(self, shape, device: torch.device):
        self.device, pinned = device, device.type == "cuda"
        self.tensors = [torch.empty(shape, dtype=torch.float32, pin_memory=pinned)
                        for _ in range(2 if pinned else 1)]
        self.copied = [None] * len(self.tensors)  # CUDA events of the last copies
        self.current = -1

    def take(self) -> np.ndarray:
        self.current = (self.current + 1) % len(self.tensors)
        if self.copied[self.current] is not None:
            self.copied[self.current].synchronize()
        return self.tensors[self.current].numpy()

    def send(self, count: int) -> torch.Tensor:
        host = self.tensors[self.current][:count]
        if self.device.type != "cuda":
            return host.to(self.device)
        x = host.to(self.device, non_blocking=True)
        self.copied[self.current] = torch.cuda.Event()
        self.copied[self.current].record()
        return x


def default_tile_batch(model, window, device: torch.device, amp: str = "off",
                       memory_format=torch.contiguous_format, fraction: float = 0.5,
                       most: int = 64) -> int:
    """Tiles per batch: on a GPU as many as `fraction` of its free memory holds, measured
    with one tile (its peak memory under inference); 4 on a CPU."""
    if device.type != "cuda":
        return 4
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.inference_mode(), autocast(device, amp):
        x = torch.zeros((1, *window), device=device).contiguous(memory_format=memory_format)
        model(x)
    per_tile = max(1, torch.cuda.max_memory_allocated(device) - before)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(most, fraction * free // per_tile)))


def sliding_window_probabilities(model, image, **options) -> np.ndarray:
    """The probabilities of ``image``, blocking: ``iter_sliding_window`` run to its end."""
    run = iter_sliding_window(model, image, **options)
    while True:
        try:
            next(run)
        except StopIteration as finished:
            return finished.value
