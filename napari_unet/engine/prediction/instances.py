"""Objects from a U-Net's probabilities: seeded watersheds, in 2D and 3D, whole or by blocks.

Why: a semantic U-Net calls touching objects one blob of foreground. Trained on three classes
(background / interior / boundary, ``--instances boundary``), it marks where two objects meet,
and a seeded watershed turns that into instances: the recipe of the Data Science Bowl 2018
winners' family (Caicedo et al., 2019), of torch-em / micro-sam's foreground-and-boundary
decoders and of PlantSeg, which floods boundary maps from seeds the same way.

- :func:`objects_from_probabilities`, for a model trained on instance masks as background /
  interior / boundary (:mod:`napari_unet.objects`): the seeds are the connected regions where
  P(interior) >= ``seed_threshold`` (smaller than ``min_seed_size`` dropped); they are flooded
  (scikit-image's ``watershed``) over the boundary probability, within the foreground
  P(interior) + P(boundary) >= ``threshold``; a foreground region that holds no seed (a small
  object predicted all boundary) is an object of its own rather than lost; objects under
  ``min_size`` voxels become background. Touching objects come apart where the network saw a
  boundary between them.
- :func:`cells_from_membranes`, for an EM model of membranes (ISBI 2012): the cells are the
  regions between membranes. Seeds are the connected regions of the interior (membrane <
  ``threshold``) that lie at least ``min_seed_distance`` from a membrane (a Euclidean distance
  transform with the voxel ``spacing``), so two cells that touch through a gap in a membrane
  narrower than twice that distance get two seeds (plain connected components of the interior
  would merge them; maxima of the distance transform over-split elongated neurites); a cell
  thinner than twice the distance has no seed and goes to its neighbours. The seeds are
  flooded over the membrane probability over the whole image, so every pixel, membranes
  included, belongs to a cell, as the challenge's scores expect; cells under ``min_size``
  voxels are merged into their neighbours (their seeds removed, their voxels flooded again).

``spacing`` (the voxel size per axis, e.g. 0.284 / 0.127 / 0.127 um of an anisotropic stack)
makes the membranes' distances physical (``min_seed_distance`` is in the spacing's unit;
without spacing in voxels). The three-class flooding needs no distance: anisotropy is in what
the network learnt (outlines one voxel thick along each axis, the plan's anisotropic patches
and resampling); it takes ``spacing`` so that both are called alike and changes nothing.
Minimum sizes are voxels.

Large images go by blocks (``block_shape``, ``halo``; ``block_shape=None``: the whole array
at once): the seeds (and the foreground regions that hold none) are labelled block by block
and stitched into one id per connected region (union-find over the labels that face each
other across block faces, as dask-image's ``label``, :func:`label_blocks`), kept in a
temporary uint32 memory map (in memory for a single block); each block is then flooded with
its halo, from the global seeds (those of the halo included), and only its core is written to
``out`` (e.g. a uint32 memory map). Objects that cross blocks keep one id, and the result
equals the whole image's (up to the ids) wherever no object reaches farther than the halo
beyond a block (on exact plateaus of the elevation, e.g. hand-made 0/1 maps, the flooding's
ties may fall differently at a few voxels; real probabilities have none). Memory: a few blocks
with their halo, whatever the image's size; the probabilities (e.g. a memory map) are read
block by block.
"""
from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

SEED_VOXELS = {2: 4, 3: 8}  # default smallest seed (pixels, voxels)
MIN_VOXELS = {2: 12, 3: 40}  # default smallest object
DEFAULT_HALO = 16  # voxels of context around each block (per axis)


# -- blocks ------------------------------------------------------------------------------------
def _halo(halo, dims) -> tuple[int, ...]:
    if halo is None:
        return (0,) * dims
    return (int(halo),) * dims if np.isscalar(halo) else tuple(int(h) for h in halo)


def _grow(core, halo, shape):
    """(region = core + halo clipped to the image, core within region)."""
    region = tuple(slice(max(s.start - h, 0), min(s.stop + h, n))
                   for s, h, n in zip(core, halo, shape))
    inner = tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(core, region))
    return region, inner


def blocks(shape, block_shape=None, halo=0):
    """(core slices, region slices = core + halo, core within region) of every block."""
    block_shape = tuple(block_shape or shape)
    halo = _halo(halo, len(shape))
    starts = [range(0, n, b) for n, b in zip(shape, block_shape)]
    for corner in itertools.product(*starts):
        core = tuple(slice(c, min(c + b, n)) for c, b, n in zip(corner, block_shape, shape))
        yield (core, *_grow(core, halo, shape))


def label_blocks(mask, shape=None, block_shape=None, out=None, *,
                 connectivity=1) -> tuple[np.ndarray, int]:
    """(uint32 labels, count) of the connected regions of a mask, labelled block by block and
    stitched: regions that cross blocks get one id (union-find over the labels that face each
    other across block faces, as dask-image's ``label``); ids are 1..count.

    ``mask``: an array (nonzero = in; ``shape`` then defaults to its shape) or a function
    ``mask(core slices)`` returning a block's boolean mask. ``connectivity``: 1 (faces) up to
    the number of axes (all neighbours), as ``ndimage.generate_binary_structure``. ``out``:
    where to write (e.g. a uint32 memory map); memory: one block and two block-face planes."""
    if not callable(mask):
        shape = np.shape(mask) if shape is None else shape
        mask = _nonzero(mask)
    shape = tuple(shape)
    out = np.zeros(shape, np.uint32) if out is None else out
    structure = ndimage.generate_binary_structure(len(shape), connectivity)
    offset = 0
    for core, _, _ in blocks(shape, block_shape):
        labels, count = ndimage.label(mask(core), structure)
        out[core] = np.where(labels > 0, labels + offset, 0)
        offset += count
    parent = np.arange(offset + 1, dtype=np.int64)
    for axis, size in enumerate(tuple(block_shape or shape)):
        for cut in range(size, shape[axis], size):
            for a, b in _facing(out, axis, cut, connectivity):
                _union(parent, a, b)
    if offset == 0:
        return out, 0
    roots = np.array([_find(parent, k) for k in range(offset + 1)], np.int64)
    unique, consecutive = np.unique(roots[1:], return_inverse=True)
    mapping = np.concatenate([[0], consecutive + 1]).astype(np.uint32)
    for core, _, _ in blocks(shape, block_shape):
        out[core] = mapping[np.asarray(out[core])]
    return out, int(unique.size)


def _nonzero(array):
    def block(core):
        return np.asarray(array[core]) != 0
    return block


def _facing(labels, axis, cut, connectivity) -> list[tuple[int, int]]:
    """The distinct (label before, label after) pairs of neighbours across the plane between
    index ``cut - 1`` and ``cut`` of ``axis`` (diagonal neighbours too, per connectivity)."""
    before = np.asarray(labels[(slice(None),) * axis + (cut - 1,)])
    after = np.asarray(labels[(slice(None),) * axis + (cut,)])
    pairs = []
    for shift in itertools.product((-1, 0, 1), repeat=before.ndim):
        if sum(map(abs, shift)) > connectivity - 1:
            continue
        a = before[tuple(slice(max(-s, 0), n - max(s, 0)) for s, n in zip(shift, before.shape))]
        b = after[tuple(slice(max(s, 0), n - max(-s, 0)) for s, n in zip(shift, after.shape))]
        both = (a > 0) & (b > 0)
        if both.any():
            pairs.append(np.unique(np.stack([a[both], b[both]], axis=1), axis=0))
    if not pairs:
        return []
    return [tuple(p) for p in np.unique(np.concatenate(pairs), axis=0).tolist()]


def _find(parent, k):
    root = k
    while parent[root] != root:
        root = parent[root]
    while parent[k] != root:
        parent[k], k = root, parent[k]
    return root


def _union(parent, a, b):
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)


def _scratch(shape, folder):
    """A uint32 array of `shape`: in memory for one block, else a memory map in `folder`."""
    if folder is None:
        return np.zeros(shape, np.uint32)
    return np.lib.format.open_memmap(Path(folder) / f"{len(list(Path(folder).iterdir()))}.npy",
                                     mode="w+", dtype=np.uint32, shape=tuple(shape))


def _counts(labels, block_shape) -> np.ndarray:
    """Voxels per id (index = id), counted block by block."""
    counts = np.zeros(1, np.int64)
    for core, _, _ in blocks(labels.shape, block_shape):
        part = np.bincount(np.asarray(labels[core]).ravel())
        counts = np.pad(counts, (0, max(0, part.size - counts.size)))
        counts[:part.size] += part
    return counts


def _small(labels, min_size, block_shape) -> np.ndarray:
    """Boolean per id: an object of fewer than `min_size` voxels (never id 0)."""
    small = _counts(labels, block_shape) < min_size
    small[0] = False
    return small


def _drop_small(labels, min_size, block_shape):
    """Objects of fewer than `min_size` voxels become background, in place."""
    small = _small(labels, min_size, block_shape)
    if small.any():
        for core, _, _ in blocks(labels.shape, block_shape):
            part = np.asarray(labels[core])
            labels[core] = np.where(small[part], 0, part)


# -- the seeded flooding shared by both kinds of model -----------------------------------------
def _seeded(shape, seeds, foreground, flood, out, block_shape, halo, sizes, merge=False):
    """Global seeds (and, where ``foreground`` is given, foreground regions that hold none),
    each block flooded with its halo; ``sizes``: (smallest seed, smallest object) in voxels;
    ``merge``: small objects go to their neighbours (else to the background)."""
    out = np.zeros(shape, np.uint32) if out is None else out
    whole = block_shape is None or all(b >= n for b, n in zip(block_shape, shape))
    block_shape = None if whole else tuple(block_shape)
    halo = (0,) * len(shape) if whole else _halo(halo, len(shape))
    with tempfile.TemporaryDirectory(prefix="napari-unet-objects-") as folder:
        folder = None if whole else folder
        markers, count = label_blocks(seeds, shape, block_shape, _scratch(shape, folder))
        if sizes[0] > 1:
            _drop_small(markers, sizes[0], block_shape)
        if foreground is not None:
            _add_unseeded(markers, count, foreground, block_shape, folder)
        for core, region, inner in blocks(shape, block_shape, halo):
            out[core] = _flood_block(flood, foreground, markers, region)[inner]
        if sizes[1] > 1 and merge:
            _merge_small(out, markers, flood, sizes[1], block_shape, halo)
        elif sizes[1] > 1:
            _drop_small(out, sizes[1], block_shape)
        del markers  # a memory map in `folder`: closed before the folder goes
    return out


def _flood_block(flood, foreground, markers, region) -> np.ndarray:
    marks = np.array(markers[region], np.int64)
    if not marks.any():
        return np.zeros(marks.shape, np.uint32)
    mask = foreground(region) if foreground is not None else None
    return flood(region, marks, mask).astype(np.uint32)


def _add_unseeded(markers, count, foreground, block_shape, folder):
    """Foreground regions (stitched) that hold no seed become seeds of their own (whole
    regions), with ids after the ``count`` seed ids: a small object whose interior the network
    called all boundary stays an object."""
    shape = markers.shape
    regions, _ = label_blocks(foreground, shape, block_shape, _scratch(shape, folder))
    seeded = set()
    for core, _, _ in blocks(shape, block_shape):
        seeded.update(np.unique(np.asarray(regions[core])[np.asarray(markers[core]) > 0]).tolist())
    seeded = np.array(sorted(seeded), np.int64)
    for core, _, _ in blocks(shape, block_shape):
        ids = np.asarray(regions[core]).astype(np.int64)
        alone = (ids > 0) & ~np.isin(ids, seeded)
        if alone.any():
            markers[core] = np.where(alone, ids + count, np.asarray(markers[core]))
    del regions


def _merge_small(out, markers, flood, min_size, block_shape, halo):
    """Cells of fewer than ``min_size`` voxels lose their seeds and their voxels go to the
    neighbouring cells, flooded again from the remaining seeds; other cells keep every voxel.
    A small cell with no other seed within reach (block + halo) stays as it is."""
    small = _small(out, min_size, block_shape)
    if not small.any():
        return
    touched = [np.any(small[np.asarray(out[core])]) for core, _, _ in blocks(out.shape,
                                                                             block_shape)]
    small_ids = np.flatnonzero(small)
    for core, _, _ in blocks(out.shape, block_shape):
        part = np.asarray(markers[core])
        markers[core] = np.where(np.isin(part, small_ids), 0, part)
    for redo, (core, region, inner) in zip(touched, blocks(out.shape, block_shape, halo)):
        if redo:
            old = np.asarray(out[core]).copy()
            new = _flood_block(flood, None, markers, region)[inner]
            out[core] = np.where(small[old] & (new > 0), new, old)


# -- objects of a model of background / interior / boundary -------------------------------------
def objects_from_probabilities(probabilities, *, spacing=None, threshold=0.5,
                               seed_threshold=0.5, min_seed_size=None, min_size=None, out=None,
                               block_shape=None, halo=None) -> np.ndarray:
    """uint32 objects (0 = background, ids unique, not consecutive) of (3, *spatial)
    probabilities of background, interior and boundary; written into ``out`` where given.

    Foreground: P(interior) + P(boundary) >= ``threshold`` (P(background) <= 1 - threshold);
    seeds: connected regions (faces) of P(interior) >= ``seed_threshold`` within it, those under
    ``min_seed_size`` voxels dropped (default 4 px in 2D, 8 in 3D); seeded watershed of
    P(boundary) within the foreground; foreground regions without a seed are objects of their
    own; objects under ``min_size`` voxels (default 12 in 2D, 40 in 3D) become background.
    ``spacing`` changes nothing here (module docstring). ``block_shape`` / ``halo`` (default
    16): by blocks, equal to the whole image's result for objects smaller than the halo."""
    shape = tuple(probabilities.shape[1:])
    dims = len(shape)
    min_seed = SEED_VOXELS[dims] if min_seed_size is None else int(min_seed_size)
    min_size = MIN_VOXELS[dims] if min_size is None else int(min_size)

    def foreground(region):
        return np.asarray(probabilities[(0, *region)]) <= 1.0 - threshold

    def seeds(region):
        inner = np.asarray(probabilities[(1, *region)]) >= seed_threshold
        return inner & foreground(region)

    def flood(region, markers, mask):
        return watershed(np.asarray(probabilities[(2, *region)]), markers, mask=mask)

    return _seeded(shape, seeds, foreground, flood, out, block_shape,
                   DEFAULT_HALO if halo is None else halo, (min_seed, min_size))


# -- cells between membranes (EM) -----------------------------------------------------------------
def cells_from_membranes(membrane, *, spacing=None, threshold=0.5, min_seed_distance=None,
                         min_size=None, out=None, block_shape=None,
                         halo=None) -> np.ndarray:
    """uint32 cells (module docstring) of a membrane probability map (*spatial); every voxel
    belongs to a cell wherever there is any seed. Seeds: the connected regions of the interior
    (membrane < ``threshold``) at least ``min_seed_distance`` (unit of ``spacing``; default 3
    voxels of the finest spacing) from a membrane; flooded over the membrane probability.
    ``min_size`` (voxels, default none): smaller cells are merged into their neighbours.
    By blocks, ``halo`` (default 16) must exceed the seed distance in voxels."""
    shape = tuple(membrane.shape)
    dims = len(shape)
    sampling = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * dims
    distance = 3.0 * min(sampling) if min_seed_distance is None else float(min_seed_distance)
    halo = _halo(DEFAULT_HALO if halo is None else halo, dims)
    whole = block_shape is None or all(b >= n for b, n in zip(block_shape, shape))
    context = (0,) * dims if whole else halo

    def seeds(core):  # the distance transform sees the halo around the core
        region, inner = _grow(core, context, shape)
        interior = np.asarray(membrane[region]) < threshold
        return ndimage.distance_transform_edt(interior, sampling=sampling)[inner] >= distance

    def flood(region, markers, _mask):
        return watershed(np.asarray(membrane[region]), markers)

    return _seeded(shape, seeds, None, flood, out, block_shape, halo, (0, min_size or 0),
                   merge=True)
