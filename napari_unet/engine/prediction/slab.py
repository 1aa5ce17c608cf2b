"""Where blended tiles go: the slab of weighted sums, and the writer of finished rows.

Peak memory does not grow with the volume: the weighted sums are kept only for the slab of rows
along the first spatial axis that the tiles in flight cover (``Slab``). Rows no later tile
reaches are finished: they are normalised, written to ``out`` (and their labels to
``labels_out``) and forgotten, and the pages of memory-mapped arrays that hold them are handed
back to the operating system (``_PageReleaser``).
"""
from __future__ import annotations

import mmap
import sys

import numpy as np
import torch

from ..labels import LabelHead
from .tiles import Axis


class Slab:
    """Weighted sums of probabilities and of weights for rows [base, base + depth) of the first
    spatial axis: the only accumulator, so its size is independent of the volume's depth."""

    def __init__(self, channels: int, depth: int, rest: tuple[int, ...], device):
        self.sums = torch.zeros((channels, depth, *rest), device=device)
        self.weights = torch.zeros((depth, *rest), device=device)
        self.base = 0    # image row of the slab's first row
        self.filled = 0  # slab rows touched so far

    def add(self, probs: torch.Tensor, origin: tuple[int, ...], axes: list[Axis],
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


class Writer:
    """Writes finished rows into ``out`` (and ``labels_out``) and releases their pages."""

    def __init__(self, out, labels_out, head: LabelHead, threshold: float, image,
                 input_margin: int):
        self.out, self.labels_out, self.head = out, labels_out, head
        self.many = head.blended_channels > 1
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
            self.labels_out[low:high] = self.head.labels(probs if self.many else probs[0],
                                                         self.threshold)
        for releaser, shift in self.releasers:
            releaser.release(max(high + shift, 0))
