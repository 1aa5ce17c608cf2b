"""The Correct widget's Objects box: delete, merge and split objects of an instance labels
layer (a prediction of objects, one id each) by points the user puts on them.

"Pick objects" adds (or selects) a Points layer, "object picks", in add mode; a click puts a
point. Delete removes the objects under the points, Merge makes them one, Split cuts the one
object under the points into one object per point (a seeded watershed of its distance
transform, :mod:`napari_unet.instance_edit`). Edits go through the labels layer's
``data_setitem``, so Ctrl+Z takes them back; the points are cleared after each edit.
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
                   ("Split", self.split, "cut the object under the points, a part a point")]
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
        layer = self.picks()
        labels = self.widget.labels_combo.value
        if layer is None:
            ndim = labels.data.ndim if labels is not None else 2
            layer = self.widget.viewer.add_points(
                np.zeros((0, ndim)), name=PICKS, size=6, face_color="yellow", ndim=ndim)
        self.widget.viewer.layers.selection.active = layer
        layer.mode = "add"

    def _targets(self):
        """(labels layer, points in its data coordinates)."""
        labels = self.widget.labels_combo.value
        if labels is None:
            raise UserError("choose the labels layer of the objects (Edit labels: Labels)")
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
        except (UserError, DataError) as exc:
            show_error(str(exc))
            return
        self.apply(labels, lambda _: result)
        self.picks().data = np.zeros((0, self.picks().data.shape[1]))
        self.widget._report(f"{what} {count} object(s) in '{labels.name}'")

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
        spacing = None
        labels = self.widget.labels_combo.value
        if labels is not None and labels.data.ndim >= 2:
            spacing = tuple(float(s) for s in labels.scale[-labels.data.ndim:])

        def make(data, points):
            return instance_edit.split_object(data, points, spacing=spacing), len(points)
        self._edit(make, "split into")
