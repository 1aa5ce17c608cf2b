"""The Correct widget's Objects box: delete, merge and split objects of an instance labels
layer (a prediction of objects, one id each) by points the user puts on them.

"Pick objects" adds (or selects) a Points layer, "object picks", in add mode over the labels
(their scale and translation); a click puts a point. Delete removes the objects under the
points, Merge makes them one, "Split (one seed per point)" cuts the one object under the
points into one object per point (a seeded watershed of its distance transform, in the
layer's voxel size, :mod:`napari_unet.instance_edit`). Edits go through the labels layer's
``data_setitem`` for the changed pixels only, so Ctrl+Z takes them back; the points are
cleared after each edit. Bad input is a one-line error; the viewer lives on.
"""
from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QHBoxLayout, QPushButton

from napari_unet import instance_edit
from napari_unet.errors import DataError
from napari_unet.widgets import UserError, group_box, show_error

PICKS = "object picks"


class ObjectTools:
    """The Objects box; `widget` is the Correct widget (its labels picker, status line and
    `apply(layer, operation)` that edits a layer undoably and returns the pixels changed)."""

    def __init__(self, widget, apply):
        self.widget, self.apply = widget, apply
        buttons = [("Pick objects", self.pick, "add a points layer: click on objects"),
                   ("Delete", self.delete, "remove the objects under the points"),
                   ("Merge", self.merge, "make the objects under the points one object"),
                   ("Split (one seed per point)", self.split,
                    "cut the one object under the points into a part per point")]
        self.buttons = {}
        rows = [QHBoxLayout(), QHBoxLayout()]
        for k, (text, action, tip) in enumerate(buttons):
            button = QPushButton(text)
            button.setToolTip(tip)
            button.clicked.connect(action)
            rows[k // 2].addWidget(button)
            self.buttons[text] = button
        self.box = group_box("Objects", rows)

    # -- the points -------------------------------------------------------------------------------
    def picks(self):
        """The "object picks" Points layer, or None."""
        viewer = self.widget.viewer
        return next((layer for layer in viewer.layers if layer.name == PICKS), None)

    def pick(self):
        """Add (or select) the picks layer in add mode, over the chosen labels."""
        viewer, layer = self.widget.viewer, self.picks()
        labels = self.widget.labels_combo.value
        ndim = labels.ndim if labels is not None else 2
        if layer is not None and layer.ndim != ndim:  # picks of another (2D/3D) layer
            viewer.layers.remove(layer)
            layer = None
        if layer is None:
            place = {} if labels is None else {"scale": labels.scale,
                                               "translate": labels.translate}
            layer = viewer.add_points(np.zeros((0, ndim)), name=PICKS, size=6,
                                      face_color="yellow", ndim=ndim, **place)
        viewer.layers.selection.active = layer
        layer.mode = "add"

    def _targets(self):
        """(labels layer, points in its data coordinates)."""
        labels = self.widget.labels_combo.value
        if labels is None:
            raise UserError("choose the labels layer of the objects (Edit labels: Labels)")
        if getattr(labels, "multiscale", False):
            raise UserError(f"'{labels.name}' is multiscale: edit a single-scale labels layer")
        layer = self.picks()
        if layer is None or not len(layer.data):
            raise UserError("press Pick objects and click on the objects first")
        points = [labels.world_to_data(layer.data_to_world(p)) for p in layer.data]
        return labels, np.asarray(points, float)

    # -- the edits --------------------------------------------------------------------------------
    def _edit(self, make, what):
        try:
            labels, points = self._targets()
            data = np.asarray(labels.data)
            result, count = make(data, points)
            _fits(result, data.dtype, labels.name)
        except (UserError, DataError) as exc:
            show_error(str(exc))
            return
        self.apply(labels, lambda _: result)
        self.picks().data = np.zeros((0, self.picks().data.shape[1]))
        self.widget._report(f"{what} {count} object{'s' if count != 1 else ''} in "
                            f"'{labels.name}'")

    @staticmethod
    def _picked(data, points):
        ids = instance_edit.ids_at(data, points)
        if not ids:
            raise UserError("the points lie on no object: put them on the objects")
        return ids

    def delete(self):
        def make(data, points):
            ids = self._picked(data, points)
            return instance_edit.delete_objects(data, ids), len(ids)
        self._edit(make, "deleted")

    def merge(self):
        def make(data, points):
            ids = self._picked(data, points)
            return instance_edit.merge_objects(data, ids), len(ids)
        self._edit(make, "merged")

    def split(self):
        labels = self.widget.labels_combo.value
        spacing = None if labels is None else tuple(abs(float(s)) for s in labels.scale)

        def make(data, points):
            result = instance_edit.split_object(data, points, spacing=spacing[-data.ndim:])
            return result, len(np.unique(result[data != result])) + 1
        self._edit(make, "split into")


def _fits(result, dtype, name: str) -> None:
    """A UserError when `result` holds ids the layer's integer dtype cannot."""
    if np.issubdtype(dtype, np.integer) and result.size and \
            int(result.max()) > np.iinfo(dtype).max:
        raise UserError(f"'{name}' is {np.dtype(dtype).name} and has no id left for new "
                        f"objects: relabel it (or convert it to uint32) first")
