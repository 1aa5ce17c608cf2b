"""Objects from a U-Net's probabilities: seeded watersheds, in 2D and 3D, whole or by blocks.

- :func:`objects_from_probabilities`, for a model trained on instance masks as background /
  interior / boundary (``--instances boundary``, :mod:`napari_unet.objects`): the seeds are
  the connected regions where P(interior) >= ``seed_threshold``; they are flooded
  (scikit-image's ``watershed``) over the boundary probability, within the foreground
  P(interior) + P(boundary) >= ``threshold``; a foreground region that holds no seed (a
  small object predicted all boundary) is an object of its own. This is the three-class
  recipe of the Data Science Bowl 2018 study (Caicedo et al., 2019) and of torch-em /
  micro-sam's foreground-and-boundary decoders; PlantSeg floods boundary maps the same way.
  Touching objects come apart where the network saw a boundary between them.
- :func:`cells_from_membranes`, for an EM model of membranes (ISBI 2012): the cells are the
  regions between membranes. Seeds are the connected regions of the interior (membrane <
  ``threshold``) that lie at least ``seed_distance`` from a membrane (a Euclidean distance
  transform with the voxel ``spacing``), so two cells that touch through a gap in a membrane
  narrower than twice that distance get two seeds; the seeds are flooded over the membrane
  probability over the whole image, so every pixel, membranes included, belongs to a cell,
  as the challenge's foreground-restricted scores expect.

``spacing`` (the voxel size per axis, e.g. 0.284 / 0.127 / 0.127 um of an anisotropic stack)
makes the membranes' distances physical (``seed_distance`` is in the spacing's unit; without
spacing in voxels). The three-class flooding needs no distance: anisotropy is in what the
network learnt (outlines one voxel thick along each axis, the plan's anisotropic patches and
resampling); it takes ``spacing`` so that both are called alike. Minimum sizes are voxels.

Large images go by blocks (``block_shape``, ``halo``): the seeds (and the foreground regions
that hold none) are labelled block by block and stitched into one id per connected region
(union-find over the voxels that face each other across block faces, as dask-image's
``label``), kept in a temporary memory map; each block is then flooded with its halo, from
the global seeds, and only its core is written. Objects that cross blocks keep one id, and
the result equals the whole-image one wherever no object reaches farther than the halo
beyond a block. Memory: a few blocks with their halo, whatever the image's size.
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


# -- blocks ------------------------------------------------------------------------------------
def blocks(shape, block_shape=None, halo=0):
    """(core slices, region slices = core + halo, core within region) of every block."""
    block_shape = tuple(block_shape or shape)
    halo = (halo,) * len(shape) if np.isscalar(halo) else tuple(halo or (0,) * len(shape))
    starts = [range(0, n, b) for n, b in zip(shape, block_shape)]
    for corner in itertools.product(*starts):
        core = tuple(slice(c, min(c + b, n)) for c, b, n in zip(corner, block_shape, shape))
        region = tuple(slice(max(s.start - h, 0), min(s.stop + h, n))
                       for s, h, n in zip(core, halo, shape))
        inner = tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(core, region))
        yield core, region, inner


def label_blocks(mask_of, shape, block_shape=None, out=None) -> tuple[np.ndarray, int]:
    """(uint32 labels, count) of the connected regions (faces only) of a mask given block by
    block: ``mask_of(core slices)`` returns the boolean mask of a block. Regions that cross
    blocks get one id (union-find over the faces); ids are 1..count."""
    out = np.zeros(shape, np.uint32) if out is None else out
    structure = ndimage.generate_binary_structure(len(shape), 1)
    offset = 0
    for core, _, _ in blocks(shape, block_shape):
        labels, count = ndimage.label(mask_of(core), structure)
        out[core] = np.where(labels > 0, labels + offset, 0)
        offset += count
    parent = np.arange(offset + 1, dtype=np.int64)
    for axis, size in enumerate(tuple(block_shape or shape)):
        for cut in range(size, shape[axis], size):
            before = np.asarray(out[(slice(None),) * axis + (cut - 1,)]).ravel()
            after = np.asarray(out[(slice(None),) * axis + (cut,)]).ravel()
            both = (before > 0) & (after > 0)
            for a, b in set(zip(before[both].tolist(), after[both].tolist())):
                _union(parent, a, b)
    if offset == 0:
        return out, 0
    roots = np.array([_find(parent, k) for k in range(offset + 1)], np.int64)
    unique, consecutive = np.unique(roots[1:], return_inverse=True)
    mapping = np.concatenate([[0], consecutive + 1]).astype(np.uint32)
    for core, _, _ in blocks(shape, block_shape):
        out[core] = mapping[np.asarray(out[core])]
    return out, int(unique.size)


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


# -- objects of a model of background / interior / boundary -------------------------------------
def objects_from_probabilities(probabilities, *, spacing=None, threshold=0.5,
                               seed_threshold=0.5, min_seed_size=None, min_size=None, out=None,
                               block_shape=None, halo=None) -> np.ndarray:
    """uint32 objects (0 = background) of (3, *spatial) probabilities of background, interior
    and boundary (module docstring); written into `out` where given."""
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


DEFAULT_HALO = 16


def _seeded(shape, seeds, foreground, flood, out, block_shape, halo, sizes):
    """The flooding shared by both kinds of model: global seeds (and, where ``foreground``
    is given, foreground regions holding no seed), each block flooded with its halo;
    ``sizes``: (smallest seed, smallest object) in voxels."""
    out = np.zeros(shape, np.uint32) if out is None else out
    whole = block_shape is None or all(b >= n for b, n in zip(block_shape, shape))
    with tempfile.TemporaryDirectory(prefix="napari-unet-objects-") as folder:
        folder = None if whole else folder
        markers, count = label_blocks(seeds, shape, block_shape, _scratch(shape, folder))
        if sizes[0] > 1:
            _drop_small(markers, sizes[0], block_shape)
        lonely = None
        if foreground is not None:
            regions, _ = label_blocks(foreground, shape, block_shape, _scratch(shape, folder))
            seeded = set()
            for core, _, _ in blocks(shape, block_shape):
                held = np.asarray(regions[core])[np.asarray(markers[core]) > 0]
                seeded.update(np.unique(held).tolist())
            lonely = (regions, np.array(sorted(seeded), np.int64), count)
        for core, region, inner in blocks(shape, block_shape, 0 if whole else halo):
            marks = np.array(markers[region], np.int64)
            mask = foreground(region) if foreground is not None else None
            if lonely is not None:
                ids = np.asarray(lonely[0][region]).astype(np.int64)
                alone = (ids > 0) & ~np.isin(ids, lonely[1])
                marks[alone] = ids[alone] + lonely[2]
            flooded = flood(region, marks, mask) if marks.any() else np.zeros_like(marks)
            out[core] = flooded[inner].astype(np.uint32)
    if sizes[1] > 1:
        _drop_small(out, sizes[1], block_shape)
    return out


def _drop_small(out, min_size, block_shape):
    """Objects of fewer than `min_size` voxels become background (counted block by block)."""
    counts = np.zeros(1, np.int64)
    for core, _, _ in blocks(out.shape, block_shape):
        part = np.bincount(np.asarray(out[core]).ravel())
        counts = np.pad(counts, (0, max(0, part.size - counts.size)))
        counts[:part.size] += part
    small = counts < min_size
    small[0] = False
    if not small.any():
        return
    for core, _, _ in blocks(out.shape, block_shape):
        part = np.asarray(out[core])
        out[core] = np.where(small[part], 0, part)


# -- cells between membranes (EM) -----------------------------------------------------------------
def cells_from_membranes(membrane, *, spacing=None, threshold=0.5, seed_distance=None,
                         min_size=None, out=None, block_shape=None,
                         halo=None) -> np.ndarray:
    """uint32 cells (module docstring) of a membrane probability map (*spatial); every pixel
    belongs to a cell where there is any seed. ``seed_distance`` defaults to 3 voxels of the
    finest spacing; ``min_size`` (default none): smaller cells become 0."""
    shape = tuple(membrane.shape)
    dims = len(shape)
    sampling = tuple(spacing) if spacing is not None else (1.0,) * dims
    distance = 3.0 * min(sampling) if seed_distance is None else float(seed_distance)
    halo = DEFAULT_HALO if halo is None else halo
    whole = block_shape is None or all(b >= n for b, n in zip(block_shape, shape))

    def seeds(core):  # the distance transform sees the halo around the core
        region = tuple(slice(max(s.start - (0 if whole else halo), 0),
                             min(s.stop + (0 if whole else halo), n))
                       for s, n in zip(core, shape))
        interior = np.asarray(membrane[region]) < threshold
        far = ndimage.distance_transform_edt(interior, sampling=sampling) >= distance
        return far[tuple(slice(s.start - r.start, s.stop - r.start)
                         for s, r in zip(core, region))]

    def flood(region, markers, _mask):
        return watershed(np.asarray(membrane[region]), markers)

    return _seeded(shape, seeds, None, flood, out, block_shape, halo, (0, min_size or 0))
