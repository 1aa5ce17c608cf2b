"""Training windows: random patches of the samples, a pure function of (seed, step).

The image window and the mask window are concentric (the unpadded UNet sees a 572 input around
the 388 region it labels); where a window leaves the image both are mirrored.
"""
from __future__ import annotations

import itertools
import threading

import numpy as np
import torch

from ...choices import IGNORE_CLASS
from ...errors import ConfigError, DataError
from ...io import sample_step, strided_sample
from .dataset import check_same_shape
from .normalization import normalize


class PatchSampler:
    """Random training windows, the same for a given (seed, step) on every run and rank.

    Each item is a random window of a random sample. The image window (`input_size`) and the
    mask window (`output_size`) are concentric: the unpadded UNet sees a 572 input around the
    388 region it labels. Where a window leaves the image (the margin at a border, or an image
    smaller than the window) both image and mask are mirrored: a mirrored image with a zero
    mask would teach the network that mirrored structures are background.
    With probability `foreground_oversample` the window is centred on a foreground voxel,
    which matters when defects cover 2 % of an image. Sparse masks (some pixels unlabelled,
    IGNORE_CLASS; `sparse`): the other windows are centred on a labelled pixel, so that a
    step learns from strokes rather than from windows with nothing labelled in them.
    """

    def __init__(self, images, masks, input_size, output_size, batch_size, norm_stats,
                 seed=0, foreground_oversample=0.0, rank=0, world_size=1, sparse=False):
        self.images, self.masks = list(images), list(masks)
        self.input_size = tuple(int(s) for s in input_size)
        self.output_size = tuple(int(s) for s in output_size)
        self.batch_size, self.norm_stats, self.seed = int(batch_size), norm_stats, int(seed)
        self.foreground_oversample = float(foreground_oversample)
        self.rank, self.world_size = int(rank), int(world_size)
        self.sparse = bool(sparse)
        self._check()
        self.margin = tuple((i - o) // 2 for i, o in zip(self.input_size, self.output_size))
        self._foreground = {}  # sample index -> foreground coordinates, filled lazily
        self._labelled = {}  # sample index -> labelled coordinates of a sparse mask, or None
        # held while a batch is planned and cut, and while a live run changes a mask
        self.lock = threading.RLock()

    def _check(self) -> None:
        dims = len(self.input_size)
        if len(self.output_size) != dims or any(
            i < o or (i - o) % 2 for i, o in zip(self.input_size, self.output_size)
        ):
            raise ConfigError(
                f"input size {self.input_size} must contain output size {self.output_size} "
                "with an even margin on every axis"
            )
        if not self.images or len(self.images) != len(self.masks):
            raise DataError(
                f"{len(self.images)} images and {len(self.masks)} masks: give one mask per image"
            )
        for image, mask in zip(self.images, self.masks):
            if image.ndim != dims + 1:
                raise ConfigError(
                    f"{dims}D windows cannot be cut from images of shape {image.shape}"
                )
            check_same_shape(image.shape[1:], mask.shape, "sample")
        if self.batch_size < 1 or not 0 <= self.rank < self.world_size:
            raise ConfigError(
                f"batch size {self.batch_size}, rank {self.rank} of {self.world_size}: "
                "need batch size >= 1 and 0 <= rank < world size"
            )
        if not 0.0 <= self.foreground_oversample <= 1.0:
            raise ConfigError("foreground_oversample is a probability: use 0..1")

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def batch(self, step: int):
        """(x float32 (B, C, *input_size), y int64 (B, *output_size)) for this rank,
        normalised on the host (training normalises on the device: engine.pipeline)."""
        images, masks = zip(*(self.read_window(index, start) for index, start in self.plan(step)))
        x = torch.from_numpy(np.stack([normalize(image, self.norm_stats) for image in images]))
        return x, torch.from_numpy(np.stack(masks).astype(np.int64))

    def plan(self, step: int) -> list:
        """This rank's windows of a step: [(sample index, start of the output window)]."""
        rng = np.random.default_rng([self.seed, int(step)])
        # every rank draws the whole global batch so that all ranks consume the same stream
        plan = [self._draw_window(rng) for _ in range(self.global_batch_size)]
        return plan[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def _draw_window(self, rng: np.random.Generator):
        """(sample index, start of the output window in the sample; may be negative)."""
        index = int(rng.integers(len(self.images)))
        if self.sparse and self._unpainted(index):  # a window of nothing labelled teaches
            painted = [i for i in range(len(self.masks)) if not self._unpainted(i)]  # nothing
            if painted:
                index = painted[int(rng.integers(len(painted)))]
        shape = self.masks[index].shape
        lowest = [min(0, s - o) for s, o in zip(shape, self.output_size)]
        highest = [max(0, s - o) for s, o in zip(shape, self.output_size)]
        if rng.random() < self.foreground_oversample:
            coords = self._foreground_coords(index)
            if len(coords):
                centre = coords[rng.integers(len(coords))]
                start = np.clip(centre - np.asarray(self.output_size) // 2, lowest, highest)
                return index, tuple(int(s) for s in start)
        labelled = self._labelled_coords(index)
        if labelled is not None and len(labelled):
            centre = labelled[rng.integers(len(labelled))]
            start = np.clip(centre - np.asarray(self.output_size) // 2, lowest, highest)
            return index, tuple(int(s) for s in start)
        return index, tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(lowest, highest))

    def _unpainted(self, index: int) -> bool:
        """Whether sample `index` of sparse masks has no labelled pixel (a slice of a stack
        nobody painted yet)."""
        labelled = self._labelled_coords(index)
        return labelled is not None and not len(labelled)

    def _foreground_coords(self, index: int) -> np.ndarray:
        if index not in self._foreground:
            mask = self.masks[index]
            if self._labelled_coords(index) is not None:  # strokes: a grid could miss them
                self._foreground[index] = _coords_of(mask, (mask > 0) & (mask != IGNORE_CLASS))
            else:
                step = sample_step(mask.shape)
                self._foreground[index] = np.argwhere(strided_sample(mask) > 0) * step
        return self._foreground[index]

    def _labelled_coords(self, index: int):
        """The labelled pixels of a sparse mask (at most MAX_COORDS of them, evenly spaced
        in reading order), or None for a mask labelled everywhere."""
        if not self.sparse:
            return None
        if index not in self._labelled:
            mask = np.asarray(self.masks[index])
            unknown = mask == IGNORE_CLASS
            self._labelled[index] = _coords_of(mask, ~unknown) if unknown.any() else None
        return self._labelled[index]

    def update_mask(self, index: int, classes, offset=None) -> None:
        """Replace sample `index`'s mask (class indices, IGNORE_CLASS unknown), whole or the
        region of `classes`' shape at `offset` (a live run's new paint): the next batch
        planned draws from the new labelled pixels, erased ones are gone."""
        classes = np.asarray(classes)
        with self.lock:
            mask = self.masks[index]
            offset = (0,) * mask.ndim if offset is None else tuple(int(o) for o in offset)
            region = tuple(slice(o, o + s) for o, s in zip(offset, classes.shape))
            if len(offset) != mask.ndim or classes.ndim != mask.ndim or any(
                    o < 0 or o + s > m for o, s, m in zip(offset, classes.shape, mask.shape)):
                raise DataError(f"a mask update of shape {classes.shape} at {offset} does not "
                                f"fit sample {index}'s mask {mask.shape}: send a region inside it")
            if not mask.flags.writeable:
                mask = self.masks[index] = np.array(mask)
            mask[region] = classes
            self._foreground.pop(index, None)
            self._labelled.pop(index, None)

    def labelled_pixels(self, index: int) -> int:
        """How many pixels of sample `index`'s mask are labelled (not IGNORE_CLASS)."""
        with self.lock:
            mask = np.asarray(self.masks[index])
            return int(mask.size - np.count_nonzero(mask == IGNORE_CLASS))

    def read_window(self, index: int, start, image_out=None, mask_out=None):
        """The image and mask windows at `start` in their stored dtypes, or written into
        `image_out` (C, *input_size) and `mask_out` (*output_size) (any dtypes)."""
        image_start = [s - m for s, m in zip(start, self.margin)]
        image = crop_mirrored(self.images[index], image_start, self.input_size, out=image_out)
        mask = crop_mirrored(self.masks[index], start, self.output_size, out=mask_out)
        return image, mask


MAX_COORDS = 1_000_000


def _coords_of(mask, chosen) -> np.ndarray:
    """(N, dims) coordinates of the chosen pixels, at most MAX_COORDS, evenly spaced in
    reading order (every stroke keeps its share)."""
    flat = np.flatnonzero(chosen)
    if flat.size > MAX_COORDS:
        flat = flat[np.linspace(0, flat.size - 1, MAX_COORDS).astype(np.int64)]
    return np.stack(np.unravel_index(flat, mask.shape), axis=1)


def crop_mirrored(array, start, size, out=None) -> np.ndarray:
    """The window [start, start + size) of the last len(size) axes, mirrored where it leaves
    the array, as a new array or written into `out`. Mirrored or not, every axis is a few
    runs of consecutive (or reversed) indices, so the window is copied as a few blocks of
    basic slices: cheap on memory maps, and no gather of every pixel."""
    lead = array.ndim - len(size)
    runs = [_runs(int(b), int(n), int(s)) for b, n, s in zip(start, size, array.shape[lead:])]
    if out is None:
        out = np.empty(tuple(array.shape[:lead]) + tuple(size), array.dtype)
    for block in itertools.product(*runs):
        target = (Ellipsis,) + tuple(slice(at, at + n) for at, n, _ in block)
        out[target] = array[(Ellipsis,) + tuple(source for _, _, source in block)]
    return out


def _runs(start: int, length: int, size: int) -> list:
    """[(position, length, source slice)] covering [start, start + length) mirrored into
    [0, size): between two reflections (multiples of size - 1) the mirrored index runs with
    step +1 or -1, so each stretch is one slice."""
    if size == 1:
        return [(0, length, slice(0, 1))]  # broadcast along the axis
    runs, position, period = [], start, size - 1
    while position < start + length:
        stop = min(start + length, (position // period + 1) * period)
        first, last = (int(i) for i in _mirror(np.array([position, stop - 1]), size))
        if last >= first:
            source = slice(first, last + 1)
        else:
            source = slice(first, last - 1 if last > 0 else None, -1)
        runs.append((position - start, stop - position, source))
        position = stop
    return runs


def _mirror(index: np.ndarray, size: int) -> np.ndarray:
    """Indices reflected into [0, size) like numpy's 'reflect' padding, for any distance."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    index = np.abs(index) % period
    return np.where(index >= size, period - index, index)
