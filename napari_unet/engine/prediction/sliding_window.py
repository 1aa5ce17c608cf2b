"""Sliding-window prediction: tiles, Gaussian blending, mirror TTA, volumes bigger than RAM.

The scheme, learnt from MONAI's ``sliding_window_inference`` and nnU-Net's predictor:

- The output is cut into overlapping tiles, each read with the context the network needs
  (:mod:`.tiles`: tile geometry, the Gaussian weights, reading windows).
- Overlapping predictions are blended with a weight map (``gaussian_importance``) so that the
  centre of a tile, where the network saw the most context, counts the most, and divided by the
  summed weights, so any number of overlapping tiles blends to a weighted mean.
- Tiles go through the network in batches, under ``torch.inference_mode`` and optionally
  ``torch.autocast`` and channels-last, and optionally averaged over mirror flips or all the
  flips and quarter turns (TTA). What is blended, and the labels of it, the label head says
  (``engine.labels.LabelHead``; without one, the classes of the model's outputs).
- A 2D network over a ``(C, Z, Y, X)`` stack runs slice by slice, and tiles from several slices
  share a batch.
- Peak memory does not grow with the volume: the input is read one window at a time (a
  memory map is never loaded whole) and the weighted sums are kept only for the slab of rows
  that the tiles in flight cover (:mod:`.slab`).

``iter_sliding_window`` is a generator: it yields ``TilesDone`` after each batch and *returns*
the probabilities (``StopIteration.value``; ``result = yield from iter_sliding_window(...)``
in a calling generator, ``worker.returned`` in napari's ``thread_worker``). Closing it cancels
between two batches. ``sliding_window_probabilities`` is the blocking form.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from ...choices import AMP_MODES, TTA_MODES
from ...errors import ConfigError, DataError
from ..events import TilesDone
from ..labels import LabelHead
from ..runtime import autocast, configure_backends
from .slab import Slab, Writer
from .tiles import (
    Axis,
    as_float32,
    gaussian_importance,
    plan_axes,
    read_window,
    slab_depth,
    tile_origin,
    tile_starts,
)

__all__ = ["BLENDS", "default_tile_batch", "gaussian_importance", "iter_sliding_window",
           "sliding_window_probabilities", "tile_starts", "tta_mode"]

BLENDS = ("gaussian", "constant")


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


def _predict_batch(model, head: LabelHead, batch: torch.Tensor, transforms, amp: str,
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
            probs = head.probabilities(logits)
            probs = probs.flip(axes) if axes else probs
            probs = probs.transpose(-1, -2) if swap else probs
            total = probs if total is None else total.add_(probs)
    return total.div_(len(transforms)) if len(transforms) > 1 else total


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
                        out=None, labels_out=None, threshold: float = 0.5,
                        head: LabelHead | None = None, tf32: bool = True) -> Iterator[TilesDone]:
    """Predict a channel-first image tile by tile; yield ``TilesDone`` after each batch and
    return the probabilities (the generator's return value).

    ``image``: ``(C, Y, X)``, or ``(C, Z, Y, X)`` for a 3D model or a stack under a 2D model;
    any array-like that slices to numpy, e.g. a read-only ``np.memmap`` bigger than RAM.
    ``tile_size``: the network's input window (int or one per model axis; rounded up to a
    valid size, shrunk to the image when it is smaller). ``preprocess`` maps each read region
    ``(C, ...)`` to a float32 array of the same shape; it must be pointwise (statistics computed
    beforehand), since it never sees the whole image.

    ``head``: what the outputs mean (a run's ``checkpoint.head``); None: the classes of the
    model's ``num_classes`` outputs. Returns float32 probabilities in [0, 1]: ``(*spatial)`` for
    1-class (sigmoid) and 2-class (softmax, foreground = class 1) models, ``(C, *spatial)`` for
    K > 2 classes or R > 1 regions (``head.blended_channels``); written into ``out`` if given
    (e.g. a memory map from ``io.TifMemmapWriter``) progressively, else into a new array.
    ``labels_out`` (optional, ``(*spatial)``) receives the head's labels. The model is put in eval mode (restored at the end) and moved to
    ``device`` (and to channels-last when asked) in place. ``batch_size`` None: as many tiles
    as half the free memory of a GPU holds (``default_tile_batch``; 4 on a CPU). On a GPU the
    backends are set as for training (cudnn benchmark, TF32) and tile batches travel from two
    pinned buffers in turn, so the next batch is read while the last one is copied (``tf32``
    False: exact fp32 convolutions on the GPU). Closing the
    generator stops the work between two batches; what was written stays for the caller's
    writer to discard.
    """
    _check_options(overlap, batch_size, blend, amp, threshold)
    device = torch.device(device)
    head = head or LabelHead.for_outputs(model.num_classes)
    axes = plan_axes(model, tuple(image.shape), tile_size, overlap)
    if tta_mode(tta) != "off" and any(axis.window - axis.tile != 2 * axis.margin
                                      for axis in axes):
        raise ConfigError("tta needs a model whose output is centred in its input (an even "
                          "size difference): predict without tta")
    transforms = _tta_transforms(model.spatial_dims, tta,
                                 tuple(axis.window for axis in axes))
    spatial = tuple(axis.size for axis in axes)
    channels = head.blended_channels
    out = _check_output(out, spatial if channels == 1 else (channels, *spatial),
                        "out", np.float32)
    labels_out = None if labels_out is None else _check_output(labels_out, spatial,
                                                               "labels_out", np.uint8)
    return _run(model, head, image, axes, out, labels_out, batch_size=batch_size, blend=blend,
                sigma_scale=sigma_scale, transforms=transforms, amp=amp, device=device,
                channels_last=channels_last, preprocess=preprocess or as_float32,
                threshold=threshold, tf32=tf32)


def _run(model, head: LabelHead, image, axes: list[Axis], out, labels_out, *, batch_size,
         blend, sigma_scale, transforms, amp, device, channels_last, preprocess, threshold,
         tf32):
    """The generator behind ``iter_sliding_window`` (split off so that bad arguments raise at
    the call, not at the first ``next``)."""
    dims = model.spatial_dims
    lead = len(axes) - dims
    window = tuple(axis.window for axis in axes[lead:])
    tile = tuple(axis.tile for axis in axes[lead:])
    channels = head.blended_channels
    total = math.prod(len(axis.starts) for axis in axes)
    memory_format = {2: torch.channels_last, 3: torch.channels_last_3d}[dims] \
        if channels_last else torch.contiguous_format
    was_training = model.training
    model.eval()
    model.to(device)
    if channels_last:  # left as the caller has it otherwise (a trainer may use either)
        model.to(memory_format=memory_format)
    configure_backends(device, tf32)
    if batch_size is None:
        batch_size = default_tile_batch(model, (image.shape[0], *window), device, amp,
                                        memory_format)
    with torch.inference_mode():
        weight = (gaussian_importance(tile, sigma_scale) if blend == "gaussian"
                  else torch.ones(tile)).reshape((1,) * lead + tile).to(device)
        slab = Slab(channels, slab_depth(axes, total, batch_size),
                    tuple(axis.size for axis in axes[1:]), device)
    writer = Writer(out, labels_out, head, threshold, image, axes[0].margin)
    buffers = _TileBuffers((batch_size, image.shape[0], *window), device)
    try:
        for first in range(0, total, batch_size):
            origins = [tile_origin(axes, i) for i in range(first, min(first + batch_size, total))]
            batch = buffers.take()
            for slot, origin in enumerate(origins):
                batch[slot] = read_window(image, axes, origin, preprocess).reshape(batch.shape[1:])
            done = first + len(origins)
            upto = tile_origin(axes, done)[0] if done < total else axes[0].size
            with torch.inference_mode():
                x = buffers.send(len(origins))
                probs = _predict_batch(model, head, x.contiguous(memory_format=memory_format),
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
