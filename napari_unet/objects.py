"""Training targets of instance masks (one value per object): background / interior / boundary.

``--instances boundary`` trains a U-Net on three classes made from the user's instance labels
(a napari labels layer, a TIF or a folder of them) instead of one merged foreground: every
object's own outline is its boundary class, so two touching nuclei are two interiors with a
boundary between them, and a seeded watershed of the predicted probabilities gives them back
as two objects (:mod:`napari_unet.engine.prediction.instances`). This is the three-class target
of the Data Science Bowl 2018 study of Caicedo et al. (Cytometry A, 2019) and of torch-em /
micro-sam's foreground-and-boundary targets; it needs no change to the network, the losses or
the sliding window, which StarDist's rays or Cellpose's flows would.

The boundary is each object's inner outline (scikit-image ``find_boundaries(mode="inner")``,
one pixel or voxel wide, faces only): pixels of an object that touch another object or the
background. Touching objects therefore get two boundary pixels between their interiors.
Targets are made when the masks are read, once per sample, in the sample's own dimensions
(a stack of 2D samples gets 2D outlines); augmentation then moves them as a class map
(nearest neighbour), as it moves every mask.

numpy and scikit-image only: the data sets, the training set and the widgets ask it.
"""
from __future__ import annotations

import numpy as np
from skimage.measure import label
from skimage.segmentation import find_boundaries

from .choices import IGNORE_CLASS, OBJECT_CLASSES

BACKGROUND, INTERIOR, BOUNDARY = range(len(OBJECT_CLASSES))


def object_classes(instances, ignore=None) -> np.ndarray:
    """uint8 (*spatial) classes of an instance mask: 0 background, 1 interior, 2 boundary;
    pixels of the boolean ``ignore`` (nobody labelled them) are IGNORE_CLASS."""
    ids = np.asarray(instances)
    if ids.dtype == bool:
        ids = ids.astype(np.uint8)
    if ignore is not None and np.any(ignore):
        ids = np.where(ignore, 0, ids)
    classes = (ids != 0).astype(np.uint8)
    if classes.any():
        classes[find_boundaries(ids, connectivity=1, mode="inner")] = BOUNDARY
    if ignore is not None and np.any(ignore):
        classes[ignore] = IGNORE_CLASS
    return classes


def instances_of(mask) -> bool:
    """Whether a mask's integer values can be object ids (no negative values, integers)."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return True
    if not np.issubdtype(mask.dtype, np.integer):
        return bool(np.all(mask == np.round(mask)) and mask.min(initial=0) >= 0)
    return int(mask.min(initial=0)) >= 0


def object_ids(mask) -> np.ndarray:
    """The objects of a mask as scored: its ids, or, where it holds one non-zero value in
    several separate regions (a binary mask: 0/1, 0/255), its connected components (faces
    only), one id each."""
    ids = np.asarray(mask)
    if np.count_nonzero(np.unique(ids)) == 1:
        components, count = label(ids != 0, connectivity=1, return_num=True)
        if count > 1:
            return components.astype(np.uint32)
    return ids
