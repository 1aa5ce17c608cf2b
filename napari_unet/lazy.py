"""Arrays read on demand (a napari-ome-zarr layer's dask levels, a zarr array): used without
being loaded whole. The widgets give them to the engine as they are (it reads tile by tile),
put what comes back in memory-mapped scratch arrays, and compute over them slab by slab.

Engine-free: numpy only (dask where a stack of lazy channels is built, it is there with them).
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

SLAB_BYTES = 64 * 2 ** 20  # what one step of :func:`map_slabs` reads at most (roughly)
_SCRATCH: list[Path] = []


def is_lazy(array) -> bool:
    """Whether `array` reads from its store on demand (dask, zarr, tensorstore...): an array
    that is not numpy's (a memory map is numpy's: the OS pages it)."""
    return hasattr(array, "shape") and hasattr(array, "dtype") \
        and not isinstance(array, np.ndarray)


def stack(arrays):
    """The arrays stacked first, lazily (dask) when any of them is lazy, else in memory."""
    arrays = list(arrays)
    if not any(is_lazy(a) for a in arrays):
        return np.stack([np.asarray(a) for a in arrays])
    import dask.array as da

    return da.stack([a if isinstance(a, da.Array) else da.from_array(a, chunks="auto")
                     for a in arrays])


def scratch_folder() -> Path:
    """This process's folder of scratch arrays (removed when the process ends)."""
    if not _SCRATCH:
        folder = Path(tempfile.mkdtemp(prefix="napari-unet-scratch-"))
        _SCRATCH.append(folder)
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return _SCRATCH[0]


def scratch_array(shape, dtype, name: str = "array") -> np.memmap:
    """A zeroed array of `shape` on disk (a memory-mapped .npy file in the scratch folder): as
    big as the disk allows, paged by the OS, painted on like any numpy array."""
    path = scratch_folder() / f"{name}-{uuid.uuid4().hex[:8]}.npy"
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype),
                                     shape=tuple(int(s) for s in shape))


def slabs(shape, itemsize: int, lead: int = 0) -> list[slice]:
    """Slices of axis `lead` of an array of `shape` that each hold about SLAB_BYTES."""
    size = int(shape[lead]) if len(shape) > lead else 1
    per_index = itemsize * int(np.prod(shape, dtype=np.int64)) // max(size, 1)
    step = max(1, SLAB_BYTES // max(per_index, 1))
    return [slice(start, min(start + step, size)) for start in range(0, size, step)]


def map_slabs(function, source, out, lead: int = 0):
    """``out[..slab..] = function(source[..slab..])`` slab by slab along axis `lead` of
    `source` (``out``'s first axis), `source` read one slab at a time; returns `out`.
    `lead` 1: a channel-first source (its channels stay together), out without them."""
    for part in slabs(source.shape, np.dtype(source.dtype).itemsize, lead):
        key = (slice(None),) * lead + (part,)
        out[part] = function(np.asarray(source[key]))
    return out


def painted_box(labels, margin: int = 0) -> tuple[slice, ...] | None:
    """The bounding box of the non-zero pixels of `labels`, grown by `margin` on each side
    (within the array), read slab by slab; None when nothing is painted."""
    hits = [np.zeros(int(n), bool) for n in labels.shape]
    for part in slabs(labels.shape, np.dtype(labels.dtype).itemsize):
        block = np.asarray(labels[part]) != 0
        if not block.any():
            continue
        for axis in range(block.ndim):
            seen = block.any(axis=tuple(a for a in range(block.ndim) if a != axis))
            if axis == 0:
                hits[0][part] |= seen
            else:
                hits[axis] |= seen
    if not hits[0].any():
        return None
    box = []
    for hit in hits:
        where = np.flatnonzero(hit)
        box.append(slice(max(0, int(where[0]) - margin), min(hit.size, int(where[-1]) + 1 + margin)))
    return tuple(box)


def any_nonzero(array) -> bool:
    """Whether `array` has a non-zero value, read slab by slab (stops at the first)."""
    return any(np.any(np.asarray(array[part]))
               for part in slabs(array.shape, np.dtype(array.dtype).itemsize))


def painted_part(labels):
    """A lazily read labels array's painted box (a corner when nothing is painted); an array
    in memory as it is."""
    if not is_lazy(labels):
        return labels
    box = painted_box(labels)
    return np.asarray(labels[box] if box else labels[(slice(0, 1),) * labels.ndim])
