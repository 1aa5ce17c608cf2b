"""Edits of instance labels (one id per object, 0 = background, 2D or 3D, any integer
dtype): delete, merge and split objects picked by points (or cut by a drawn line), as the
Correct widget offers them. numpy / scipy / scikit-image only; each function returns a new
array (in a wider dtype when new ids need it) and leaves its input alone.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from .errors import DataError


def _index(labels, point):
    """The integer index of a point (data coordinates), or None outside the array."""
    index = tuple(int(round(float(c))) for c in point[-labels.ndim:])
    if len(index) != labels.ndim or any(i < 0 or i >= n for i, n in zip(index, labels.shape)):
        return None
    return index


def ids_at(labels, points) -> list[int]:
    """The object ids under `points` (rows of data coordinates), unique, in the points' order;
    points outside the array or on the background are left out."""
    labels = np.asarray(labels)
    found = []
    for point in np.atleast_2d(np.asarray(points, float)) if len(points) else []:
        index = _index(labels, point)
        value = int(labels[index]) if index is not None else 0
        if value and value not in found:
            found.append(value)
    return found


def delete_objects(labels, ids) -> np.ndarray:
    """`labels` with the objects `ids` set to background."""
    labels = np.asarray(labels)
    return np.where(np.isin(labels, list(ids)), 0, labels).astype(labels.dtype)


def merge_objects(labels, ids) -> np.ndarray:
    """`labels` with the objects `ids` as one object, the smallest of their ids (the pixels
    between them are not added: paint them if the objects should touch)."""
    labels = np.asarray(labels)
    ids = list(ids)
    if len(ids) < 2:
        raise DataError("pick two or more objects to merge (one point on each)")
    return np.where(np.isin(labels, ids), min(ids), labels).astype(labels.dtype)


def _fresh_ids(labels, new_id, count: int) -> int:
    """The first of `count` unused ids: `new_id`, else one above the largest id."""
    top = int(labels.max()) if labels.size else 0
    if new_id is None:
        return top + 1
    new_id = int(new_id)
    if new_id <= 0:
        raise DataError(f"new_id must be a positive id, not {new_id}")
    if np.isin(labels, np.arange(new_id, new_id + count)).any():
        raise DataError(f"ids {new_id}..{new_id + count - 1} are taken: choose another new_id")
    return new_id


def _with_room(labels, largest: int) -> np.ndarray:
    """A copy of `labels` in a dtype that holds ids up to `largest`."""
    return labels.astype(np.promote_types(labels.dtype, np.min_scalar_type(largest)), copy=True)


def _seeds(labels, points):
    """(the one object id under the points, their distinct indices); a DataError otherwise."""
    points = np.atleast_2d(np.asarray(points, float))
    if len(points) < 2 or not points.size:
        raise DataError("put two or more points on the object to split (one per part)")
    indices = [_index(labels, point) for point in points]
    values = {int(labels[i]) if i is not None else 0 for i in indices}
    if 0 in values:
        raise DataError("every point of a split must lie on the object to split")
    if len(values) > 1:
        raise DataError(f"the points lie on {len(values)} objects: put them all on the one "
                        f"object to split")
    indices = list(dict.fromkeys(indices))
    if len(indices) < 2:
        raise DataError("the points of a split fall on one pixel: put them apart, one per part")
    return values.pop(), indices


def split_object(labels, points, *, new_id=None, spacing=None) -> np.ndarray:
    """`labels` with the one object under `points` split into one object per point: a seeded
    watershed of its negative distance transform (``spacing``: the voxel size, for
    anisotropic stacks) from the points, restricted to the object. The part of the first
    point keeps the id; the others get ids `new_id`, `new_id` + 1, ... (default: above the
    largest id). Points on two objects, on the background, or fewer than two: DataError."""
    labels = np.asarray(labels)
    value, indices = _seeds(labels, points)
    first = _fresh_ids(labels, new_id, len(indices) - 1)
    box = ndimage.find_objects((labels == value).astype(np.uint8))[0]
    obj = labels[box] == value
    markers = np.zeros(obj.shape, np.int32)
    for k, index in enumerate(indices, start=1):
        markers[tuple(i - s.start for i, s in zip(index, box))] = k
    distance = ndimage.distance_transform_edt(np.pad(obj, 1), sampling=spacing)
    distance = distance[(slice(1, -1),) * obj.ndim]  # the box's edge counts as outside
    parts = watershed(-distance, markers, mask=obj)
    result = _with_room(labels, first + len(indices) - 2)
    view = result[box]
    for k in range(2, len(indices) + 1):
        view[parts == k] = first + k - 2
    return result


def split_by_line(labels, line_mask) -> np.ndarray:
    """`labels` with each object that a drawn line (`line_mask`, True on the line's pixels)
    cuts apart relabelled by the connected parts (face connectivity) of the object less the
    line: the largest part keeps the id, the others get new ids above the largest. The line's
    own pixels go to the part nearest inside the object, so no pixel is lost. An object the
    line crosses without cutting it apart keeps its id; an object already in pieces that the
    line crosses is relabelled piece by piece too."""
    labels = np.asarray(labels)
    line = np.asarray(line_mask, bool)
    if line.shape != labels.shape:
        raise DataError(f"the line mask is {line.shape} but the labels are {labels.shape}")
    crossed = [int(v) for v in np.unique(labels[line]) if v]
    cuts, top = [], int(labels.max()) if labels.size else 0
    for value in crossed:
        box = ndimage.find_objects((labels == value).astype(np.uint8))[0]
        obj = labels[box] == value
        pieces, count = ndimage.label(obj & ~line[box])
        if count < 2:
            continue
        parts = watershed(np.zeros(obj.shape, np.uint8), pieces, mask=obj)
        sizes = np.bincount(parts.ravel(), minlength=count + 1)[1:]
        order = [k + 1 for k in np.argsort(-sizes, kind="stable")]
        cuts.append((box, parts, order[1:], range(top + 1, top + count)))
        top += count - 1
    result = _with_room(labels, top)
    for box, parts, others, ids in cuts:
        view = result[box]
        for part, new in zip(others, ids):
            view[parts == part] = new
    return result
