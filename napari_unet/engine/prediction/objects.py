"""Objects (instances) from a prediction: which objects a prediction makes, how (the seeded
watershed of a boundary model, cells between membranes, connected components), block by block
for large images, and the warnings when they are probably not what was meant.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage  # a dependency of scikit-image

from ...choices import OBJECT_MODES
from ...errors import ConfigError
from ..labels import LabelHead
from .instances import cells_from_membranes, label_blocks, objects_from_probabilities

BLOCK_VOXELS = 1 << 25   # objects of larger images are made block by block
BLOCK_SIDE, BLOCK_HALO = 256, 32


def objects_wanted(head: LabelHead, instances, own: str | None = None) -> str | None:
    """The objects a prediction makes: None (none), "auto" or "membranes" (make_objects).
    `instances` None: the model's `own` where it names them, else objects for a boundary head."""
    if instances is None:
        instances = own or ("auto" if head.objects else "off")
    if instances not in OBJECT_MODES:
        raise ConfigError(f"instances={instances!r}: choose one of {', '.join(OBJECT_MODES)}")
    if instances == "membranes" and head.blended_channels != 1:
        raise ConfigError("--instances membranes needs a model of one foreground (the "
                          "membrane): this model has several outputs")
    return None if instances == "off" else instances


def make_objects(probabilities, labels, head: LabelHead, how="auto", spacing=None, out=None,
                 dims=None):
    """uint32 instance labels (into ``out`` where given) of a prediction:

    - a model of background / interior / boundary (``--instances boundary``): seeded watershed
      of its probabilities (prediction.instances.objects_from_probabilities);
    - "membranes", a model of one foreground that is a membrane (ISBI 2012's EM): the cells
      between the membranes (prediction.instances.cells_from_membranes);
    - any other model: the connected components of its foreground (labels > 0; faces only).

    ``dims``: the model's (2 for a 2D model over a stack: each slice's objects on their own,
    numbered on from the slice before). Images larger than BLOCK_VOXELS are made block by
    block with halos (objects that cross blocks keep one id): the memory of a few blocks."""
    shape = tuple(np.shape(labels))
    dims = dims or len(shape)
    spacing = tuple(spacing[-dims:]) if spacing is not None and len(spacing) >= dims else None
    if out is None:
        out = np.zeros(shape, np.uint32)
    objects_wanted(head, how)  # a membrane model for "membranes"
    many = head.blended_channels > 1
    if len(shape) > dims:  # a stack under a 2D model
        offset = 0
        for z in range(shape[0]):
            probs = probabilities[:, z] if many else probabilities[z]
            part = _objects_of(probs, labels[z], head, how, spacing)
            out[z] = np.where(part > 0, part + np.uint32(offset), 0)
            offset += int(part.max(initial=0))
        return out
    return _objects_of(probabilities, labels, head, how, spacing, out)


def objects_note(labels, objects, head: LabelHead, how) -> str | None:
    """A warning when the objects show that the mode does not fit the model: "membranes" of
    a model whose foreground is objects (no cell, or more foreground regions than cells:
    membranes are a network that divides the image into cells), or the connected components
    of a membrane model (one object, a network around many regions). Images of up to
    BLOCK_VOXELS only (a look at the whole costs a labelling of it)."""
    if head.objects or int(np.prod(np.shape(labels))) > BLOCK_VOXELS:
        return None
    foreground = np.asarray(labels) > 0
    count = len(np.unique(np.asarray(objects))) - int(np.any(np.asarray(objects) == 0))
    if how == "membranes":
        regions = ndimage.label(foreground)[1]
        if count == 0 or (count <= 1 < regions) or regions > count:
            return (f"--instances membranes found {count} cell(s) between {regions} separate "
                    "foreground region(s): this model's foreground looks like objects, not "
                    "membranes (a membrane network divides the image into cells); for objects "
                    "of the foreground, use --instances auto")
    elif count == 1:
        enclosed = ndimage.label(~foreground)[1]
        if enclosed >= 3:
            return (f"--instances auto found one object, a network around {enclosed} regions: "
                    "if the model's foreground is membranes (EM), use --instances membranes "
                    "for the cells between them")
    return None


def _objects_of(probabilities, labels, head, how, spacing, out=None):
    """make_objects of one image or volume of the model's dimensions."""
    blocks = {}
    if int(np.prod(np.shape(labels))) > BLOCK_VOXELS:
        blocks = dict(block_shape=(BLOCK_SIDE,) * np.ndim(labels), halo=BLOCK_HALO)
    if how == "membranes":
        return cells_from_membranes(probabilities, spacing=spacing, out=out, **blocks)
    if head.objects:
        return objects_from_probabilities(probabilities, spacing=spacing, out=out,
                                          seed_threshold=head.seed_threshold, **blocks)
    return label_blocks(lambda core: np.asarray(labels[core]) > 0, np.shape(labels),
                        blocks.get("block_shape"), out)[0]


def keep_largest_object(labels, core_values=()) -> None:
    """Clear, in place, every foreground voxel outside the largest connected object of
    ``labels > 0`` (full connectivity: 8 in 2D, 26 in 3D). With `core_values` (a region
    model's inner labels, e.g. the tumour core's), every object that holds a voxel of them is
    kept instead (the largest where none does): a whole tumour is the parts around a core."""
    foreground = np.asarray(labels) > 0
    components, count = ndimage.label(foreground, np.ones((3,) * foreground.ndim, bool))
    if count <= 1:
        return
    if len(core_values):
        cored = np.unique(components[np.isin(labels, core_values)])
        cored = cored[cored > 0]
        if cored.size:
            labels[foreground & ~np.isin(components, cored)] = 0
            return
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    labels[(components != int(sizes.argmax())) & foreground] = 0
