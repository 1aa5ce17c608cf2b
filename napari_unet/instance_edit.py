"""Edits of instance labels (one id per object, 0 = background): delete, merge and split
objects picked by points, as the Correct widget offers them. numpy / scipy / scikit-image
only; each function returns a new array and leaves its input alone.
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


def split_object(labels, points, *, spacing=None) -> np.ndarray:
    """`labels` with the one object under `points` split into one object per point: a seeded
    watershed of its distance transform (``spacing``: the voxel size) from the points; the
    part of the first point keeps the id, the others get new ids above the largest."""
    labels = np.asarray(labels)
    points = np.atleast_2d(np.asarray(points, float))
    indices = [_index(labels, point) for point in points]
    values = {int(labels[i]) if i is not None else 0 for i in indices}
    if len(points) < 2:
        raise DataError("put two or more points on the object to split (one per part)")
    if values == {0} or 0 in values:
        raise DataError("every point of a split must lie on the object to split")
    if len(values) > 1:
        raise DataError(f"the points lie on {len(values)} objects: put them all on the one "
                        f"object to split")
    value = values.pop()
    obj = labels == value
    markers = np.zeros(labels.shape, np.int32)
    for k, index in enumerate(dict.fromkeys(indices), start=1):
        markers[index] = k
    distance = ndimage.distance_transform_edt(obj, sampling=spacing)
    parts = watershed(-distance, markers, mask=obj)
    dtype = np.promote_types(labels.dtype, np.min_scalar_type(int(labels.max()) + len(points)))
    result = labels.astype(dtype, copy=True)
    top = int(labels.max())
    for k in range(2, int(markers.max()) + 1):
        result[parts == k] = top + k - 1
    return result
