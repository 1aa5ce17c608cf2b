"""Correct widget: turn a prediction into good labels, then feed it back as training data.

Threshold a probability layer into a new Labels layer; on a Labels layer remove small objects,
fill holes and copy the neighbouring slice; on objects (one id each) delete, merge and split
them by points (widgets.correct_objects); edits go through ``Labels.data_setitem``, so
napari's undo, Ctrl+Z, takes them back; "Add to training set" saves (image, labels) into
``RUN/data/images`` + ``RUN/data/masks`` under new names, never replacing a file, so the
next training or fine-tune of that run uses them.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)
from scipy import ndimage
from skimage import morphology

from napari_unet import engine, layouts, lazy, runs
from napari_unet.io import strided_sample
from napari_unet.training_set import write_training_pairs
from napari_unet.widgets import (
    LayerPickers,
    UserError,
    add_labels_over,
    choose,
    current_index,
    existing_path,
    group_box,
    image_picker,
    is_probability_map,
    layer_data,
    layer_picker,
    one_line,
    probability_picker,
    refuse_builtin_folder,
    scrolling_layout,
    show_error,
    show_info,
    spatial_shape,
    training_array,
    with_browse_button,
)
from napari_unet.widgets.correct_objects import ObjectTools
from napari_unet.widgets.runner import RunCombo, run_registry

# probabilities a little outside 0..1 (float rounding of an average) are still probabilities
PROBABILITY_SLACK = 1e-3
CURRENT_SLICE, EVERY_SLICE, WHOLE_VOLUME = "current slice", "every slice (2D)", "whole volume (3D)"


# -- label operations on arrays (one class at a time, other classes untouched) ------------------
def _classes(labels: np.ndarray):
    values = np.unique(labels)
    return values[values != 0]


def remove_small_objects(labels: np.ndarray, min_size: int) -> np.ndarray:
    """`labels` without connected objects smaller than `min_size` pixels (per class value)."""
    result = labels.copy()
    for value in _classes(labels):
        mask = labels == value
        try:  # scikit-image >= 0.26 names the cut-off max_size (objects <= it go)
            kept = morphology.remove_small_objects(mask, max_size=max(min_size - 1, 0))
        except TypeError:
            kept = morphology.remove_small_objects(mask, min_size=min_size)
        result[mask & ~kept] = 0
    return result


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """`labels` with background holes inside each class's objects filled with that class."""
    result = labels.copy()
    for value in _classes(labels):
        filled = ndimage.binary_fill_holes(labels == value)
        result[filled & (result == 0)] = value
    return result


def _regions(layer, scope: str, index: int):
    """The index tuples the operation runs on, one at a time."""
    ndim = layer.data.ndim
    if ndim == 2 or scope == WHOLE_VOLUME:
        return [()]
    if scope == EVERY_SLICE:
        return [(z,) for z in range(layer.data.shape[0])]
    return [(index,)]


def apply_to_labels(layer, operation, regions) -> int:
    """Run `operation(array) -> array` on each region of a Labels layer through
    ``data_setitem`` (undoable). Returns the number of pixels changed."""
    changed_total = 0
    for region in regions:
        before = np.asarray(layer.data[region])
        after = operation(before)
        changed = np.nonzero(after != before)
        if not changed[0].size:
            continue
        full = tuple(np.full(changed[0].shape, i) for i in region) + changed
        layer.data_setitem(full, after[changed].astype(layer.data.dtype))
        changed_total += changed[0].size
    return changed_total


def copy_slice(layer, source: int, target: int) -> int:
    """Replace slice `target` of a stack by slice `source` (undoable). Pixels changed."""
    return apply_to_labels(layer, lambda _: np.asarray(layer.data[source]), [(target,)])


# -- the widget ---------------------------------------------------------------------------------------
class CorrectWidget(LayerPickers, QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        threshold_box, edit_box, feed_box = (self._threshold_box(), self._edit_box(),
                                             self._feed_box())
        self.objects = ObjectTools(self, lambda layer, edit: apply_to_labels(layer, edit, [()]))
        self.pickers = [self.probability_combo, self.labels_combo, self.image_combo]
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = scrolling_layout(self)
        layout.addWidget(threshold_box)
        layout.addWidget(edit_box)
        layout.addWidget(self.objects.box)
        layout.addWidget(feed_box)
        layout.addWidget(self.status)
        layout.addStretch(1)
        napari_viewer.layers.events.inserted.connect(self._on_layer_added)

    def _threshold_box(self):
        """The Threshold box: a probability layer cut into a new labels layer."""
        self.probability_combo = probability_picker(self.viewer)  # float maps, never RGB
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        threshold_button = QPushButton("Threshold → new labels")
        threshold_button.clicked.connect(self.threshold_to_labels)
        return group_box("Threshold", [("Probabilities", self.probability_combo.native),
                                       ("Threshold", self.threshold), threshold_button])

    def _edit_box(self):
        """The Edit labels box: undoable edits of a labels layer, by slice or volume."""
        from napari.layers import Labels

        self.labels_combo = layer_picker(self.viewer, Labels)
        self.scope = QComboBox()
        self.scope.addItems([CURRENT_SLICE, EVERY_SLICE, WHOLE_VOLUME])
        self.min_size = QSpinBox()
        self.min_size.setRange(1, 10_000_000)
        self.min_size.setValue(20)
        self.min_size.setSuffix(" px")
        remove_button = QPushButton("Remove small objects")
        remove_button.clicked.connect(self.remove_small)
        fill_button = QPushButton("Fill holes")
        fill_button.clicked.connect(self.fill_holes)
        previous_button = QPushButton("Copy previous slice")
        previous_button.clicked.connect(lambda: self.copy_neighbour(-1))
        next_button = QPushButton("Copy next slice")
        next_button.clicked.connect(lambda: self.copy_neighbour(+1))
        undo_button = QPushButton("Undo")
        undo_button.setToolTip("undo the last edit of the labels layer (as Ctrl+Z)")
        undo_button.clicked.connect(self.undo)
        rows = []
        for pair in ((remove_button, self.min_size), (fill_button, undo_button),
                     (previous_button, next_button)):
            row = QHBoxLayout()
            for widget in pair:
                row.addWidget(widget)
            rows.append(row)
        return group_box("Edit labels", [("Labels", self.labels_combo.native),
                                         ("Apply to", self.scope), *rows])

    def _feed_box(self):
        """The Training set box: a corrected pair fed back into a run's data."""
        self.image_combo = image_picker(self.viewer)  # a channel group adds all channels
        self.run_combo = RunCombo("run folder")
        run_row = with_browse_button(self.run_combo, self._browse_run)
        add_button = QPushButton("Add to training set")
        add_button.setToolTip("save the image and the labels above into RUN/data (new files); "
                              "fine-tune from RUN to use them")
        add_button.clicked.connect(self.add_to_training_set)
        return group_box("Training set", [("Image", self.image_combo.native), ("Run", run_row),
                                          add_button])

    def _on_layer_added(self, event):
        """A new prediction becomes the default thing to correct."""
        from napari.layers import Labels

        layer = event.value
        try:
            if is_probability_map(layer) and "probabilit" in layer.name:
                choose(self.probability_combo, layer)
                if "threshold" in layer.metadata:  # the model's own (a fitted one: not 0.5)
                    self.threshold.setValue(float(layer.metadata["threshold"]))
            elif isinstance(layer, Labels) and re.search(r"(prediction|objects)( \[\d+\])?$",
                                                         layer.name):
                choose(self.labels_combo, layer)
        except RuntimeError:  # the widget is gone, napari's event is not
            pass

    # -- helpers ----------------------------------------------------------------------------------------
    def _labels(self):
        layer = self.labels_combo.value
        if layer is None:
            raise UserError("choose a labels layer (a prediction or painted labels)")
        return layer

    def _browse_run(self):
        folder = QFileDialog.getExistingDirectory(self, "Run folder", self.run_combo.currentText())
        if folder:
            self.run_combo.setEditText(folder)

    def _report(self, text):
        self.status.setText(text)

    # -- actions ------------------------------------------------------------------------------------------
    def threshold_to_labels(self):
        """A new Labels layer: probability >= threshold, placed over the probabilities."""
        layer = self.probability_combo.value
        if layer is None:
            show_error("choose a probability layer (from Predict) to threshold")
            return
        data = layer_data(layer)
        sample = strided_sample(data) if is_probability_map(layer) else None
        if sample is None or (sample.size and not (
                np.nanmin(sample) >= -PROBABILITY_SLACK
                and np.nanmax(sample) <= 1 + PROBABILITY_SLACK)):
            found = "" if sample is None else \
                f" (values {np.nanmin(sample):.3g}..{np.nanmax(sample):.3g})"
            show_error(f"'{layer.name}' is not a probability map (floats in 0..1){found}: "
                       f"choose the probabilities layer of a prediction")
            return
        threshold = self.threshold.value()
        head = engine.LabelHead.for_outputs(1)
        labels = lazy.map_slabs(lambda part: head.labels(part, threshold), data,
                                lazy.scratch_array(data.shape, np.uint8, "threshold")) \
            if lazy.is_lazy(data) else head.labels(np.asarray(data), threshold)
        new = add_labels_over(self.viewer, labels, f"{layer.name} > {self.threshold.value():.2f}",
                              layer)
        choose(self.labels_combo, new)
        self._report(f"added '{new.name}'")

    def _edit(self, operation, what: str):
        try:
            layer = self._labels()
            index = current_index(self.viewer, layer) if layer.data.ndim > 2 else 0
        except UserError as exc:
            show_error(str(exc))
            return
        changed = apply_to_labels(layer, operation, _regions(layer, self.scope.currentText(),
                                                             index))
        self._report(f"{what}: {changed} pixel(s) changed in '{layer.name}'")

    def remove_small(self):
        size = self.min_size.value()
        self._edit(lambda a: remove_small_objects(a, size), f"removed objects < {size} px")

    def fill_holes(self):
        self._edit(fill_holes, "filled holes")

    def copy_neighbour(self, offset: int):
        """Copy the previous (-1) or next (+1) slice into the current one."""
        try:
            layer = self._labels()
        except UserError as exc:
            show_error(str(exc))
            return
        if layer.data.ndim < 3:
            show_error(f"'{layer.name}' is a single 2D image: there is no neighbouring slice")
            return
        target = current_index(self.viewer, layer)
        source = target + offset
        if not 0 <= source < layer.data.shape[0]:
            show_error(f"slice {target} has no {'previous' if offset < 0 else 'next'} slice")
            return
        changed = copy_slice(layer, source, target)
        self._report(f"copied slice {source} to slice {target}: {changed} pixel(s) changed")

    def undo(self):
        try:
            self._labels().undo()
        except UserError as exc:
            show_error(str(exc))

    def add_to_training_set(self):
        """Save (image, labels) as new pairs in RUN/data/images + RUN/data/masks."""
        try:
            image, labels, run_dir, spatial_dims = self._feed_choices()
        except UserError as exc:
            show_error(str(exc))
            return
        try:
            objects = runs.read_config_value(run_dir, "instances") == "boundary"
            report = write_training_pairs(
                run_dir / runs.DATA, [(image.name, training_array(image, spatial_dims),
                                       labels.data)], spatial_dims,
                **({"instances": "boundary"} if objects else {}))
        except Exception as exc:  # noqa: BLE001 - disk full, permissions: tell, keep the viewer
            show_error(f"cannot add to {run_dir / runs.DATA}: {one_line(exc)}")
            return
        names = ", ".join(report["written"])
        same = (f"; {report['duplicates']} identical pair(s) were there already"
                if report["duplicates"] else "")
        if report["written"]:
            show_info(f"added {len(report['written'])} training pair(s) to {run_dir / runs.DATA}: "
                      f"{names}{same}; fine-tune from this run to use them")
        else:
            show_info(f"nothing new to add: the training set of {run_dir} holds these pairs")
        self._report(f"added {names or 'nothing'}{same}")
        run_registry().add(run_dir)

    def _feed_choices(self):
        image, labels = self.image_combo.value, self._labels()
        if image is None:
            raise UserError("choose the image the labels belong to")
        if spatial_shape(image) != tuple(labels.data.shape):
            raise UserError(f"image '{image.name}' is {spatial_shape(image)} but labels "
                            f"'{labels.name}' are {tuple(labels.data.shape)}: choose matching layers")
        if not lazy.any_nonzero(labels.data):
            raise UserError(f"labels '{labels.name}' are empty: nothing to learn from")
        refuse_builtin_folder(self.run_combo.currentText(), "add the pairs to a run of yours "
                              "(start one from it in the Train widget)")
        run_dir = existing_path(self.run_combo.currentText(),
                                "the run folder whose training set gets the pair")
        if not run_dir.is_dir():
            raise UserError(f"{run_dir} is a file: choose the run folder")
        return image, labels, run_dir, self._spatial_dims(run_dir, labels)

    @staticmethod
    def _spatial_dims(run_dir: Path, labels) -> int:
        """The run's own (2D or 3D), else a guess from the layer."""
        dims = runs.read_spatial_dims(run_dir)
        if dims is not None:
            return dims
        return layouts.guess_spatial_dims(tuple(labels.data.shape))
