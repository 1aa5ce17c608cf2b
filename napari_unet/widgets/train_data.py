"""The Train widget's data: the image and labels pickers (with *New* labels), the preset and
the time to train (the first rows, kept in view above *Start*), more pairs, and the checks
of the pairs and the run folder made before anything is written.

A part of :class:`~napari_unet.widgets.train_form.TrainForm` (which it is mixed into): it
reads the form's fields (``self.viewer``, ``self.presets``, ``self.train_for``, ...).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHBoxLayout, QListWidget, QListWidgetItem, QPushButton

from napari_unet import layouts, lazy, runs
from napari_unet.choices import AUTO_PRESET, PRESET_CHOICES
from napari_unet.widgets import (
    ChannelGroup,
    UserError,
    add_labels_over,
    axes_of,
    choose,
    group_box,
    image_choices,
    image_picker,
    layer_picker,
    layer_shape,
    refuse_builtin_folder,
    show_error,
    show_warning,
    spatial_shape,
)
from napari_unet.widgets.train_fields import combo_box


def channel_count(image) -> int:
    """The channels a layer or group gives the model (RGB: 3, a group: its layers)."""
    return layouts.channels_of(layer_shape(image), axes_of(image))


class TrainData:
    """The data rows of the Train form and the checks before Start."""

    def _data_box(self):
        from napari.layers import Labels

        self.image_combo = image_picker(self.viewer)
        self.image_combo.tooltip = ("an image layer, or all the channel layers of one image "
                                    "(\"(N channels)\": trained as one N-channel input)")
        self.labels_combo = layer_picker(self.viewer, Labels)
        self.image_combo.changed.connect(self._image_changed)
        self.labels_combo.changed.connect(self.describe_labels)
        self.pickers = [self.image_combo, self.labels_combo]
        self.preset = combo_box(PRESET_CHOICES)  # auto first: the default
        self.preset.setItemData(0, "a recipe planned from your data, each choice explained "
                                   "when training starts", Qt.ToolTipRole)
        self.preset.currentTextChanged.connect(self._preset_changed)
        self.preset.currentTextChanged.connect(self.describe_labels)
        new_labels = QPushButton("New")
        new_labels.setToolTip("add an empty labels layer over the image and paint the objects")
        new_labels.clicked.connect(self.new_labels)
        labels_row = QHBoxLayout()
        labels_row.addWidget(self.labels_combo.native, 1)
        labels_row.addWidget(new_labels)
        return group_box("Data", [("Image", self.image_combo.native), ("Labels", labels_row),
                                  ("Preset", self.preset), *self.start_from.rows,
                                  *self.train_for.rows,
                                  self.train_for.estimate])

    def _pairs_box(self):
        """More (image, labels) pairs than the two pickers above: one model for them all."""
        self.pair_list = QListWidget()
        self.pair_list.setMaximumHeight(54)
        pair_buttons = QHBoxLayout()
        for text, slot in (("Add pair", self.add_current_pair), ("Remove", self._remove_pair)):
            button = QPushButton(text)
            button.clicked.connect(slot)
            pair_buttons.addWidget(button)
        return group_box("More pairs", [pair_buttons, self.pair_list])

    def new_labels(self):
        """An empty labels layer over the chosen image (its pixel grid), chosen, in paint mode:
        a first image needs labels before Start."""
        image = self.image_combo.value
        if image is None:
            show_error("choose an image first (open one: File > Open), then add its labels")
            return
        layer = add_labels_over(self.viewer, np.zeros(spatial_shape(image), np.uint8),
                                f"{image.name} labels", image)
        choose(self.labels_combo, layer)
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"

    def _pick_matching_labels(self, image):
        from napari.layers import Labels

        current = self.labels_combo.value
        if current is not None and tuple(current.data.shape) == spatial_shape(image):
            return
        matches = [layer for layer in self.viewer.layers if isinstance(layer, Labels)
                   and tuple(layer.data.shape) == spatial_shape(image)]
        # the labels named most like the image: "scan labels" for "scan", "case_labels" for
        # "case_image"
        matches.sort(key=lambda layer: -len(os.path.commonprefix([layer.name, image.name])))
        if matches:
            choose(self.labels_combo, matches[0])

    def add_current_pair(self):
        image, labels = self.image_combo.value, self.labels_combo.value
        if image is None or labels is None:
            show_error("choose an image layer and a labels layer to pair")
            return
        pair = (self.image_combo.current_choice, labels.name)
        if pair in self.pairs:
            return
        self.pairs.append(pair)
        self.pair_list.addItem(QListWidgetItem(f"{pair[0]}  ←  {labels.name}"))

    def _remove_pair(self):
        row = self.pair_list.currentRow()
        if row < 0 and self.pairs:
            row = len(self.pairs) - 1
        if row >= 0:
            self.pairs.pop(row)
            self.pair_list.takeItem(row)

    def _layer_pairs(self):
        """[(image layer or channel group, labels layer)] from the list, else from the two
        combo boxes; every image with the same number of channels."""
        from napari.layers import Image, Labels

        by_name = {layer.name: layer for layer in self.viewer.layers}
        images = dict(image_choices(self.viewer))
        names = self.pairs or [(self.image_combo.current_choice,
                                self.labels_combo.current_choice)]
        pairs = []
        for image_name, labels_name in names:
            image, labels = images.get(image_name), by_name.get(labels_name)
            if not isinstance(image, (Image, ChannelGroup)):
                raise UserError("choose an image layer to train on (open or add an image first)"
                                if not image_name else f"image layer '{image_name}' is gone")
            if not isinstance(labels, Labels):
                raise UserError("choose a labels layer: add one (Layers > New Labels) and paint "
                                "the objects" if not labels_name
                                else f"labels layer '{labels_name}' is gone")
            pairs.append((image, labels))
        counts = {name: channel_count(image) for name, (image, _) in zip(
            [name for name, _ in names], pairs)}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"'{name}' {count}" for name, count in counts.items())
            raise UserError(f"the images have different numbers of channels ({listed}): one "
                            f"model takes one number; pick each multi-channel image whole "
                            f"(its \"(N channels)\" entry)")
        return pairs

    def _check_pairs(self, pairs, preset, empty_ok=False):
        """The model's spatial dims (the preset's; under auto, the input-layout rule's, as
        the CLI decides) after checking every pair (`empty_ok`: labels with no paint yet
        pass, for a Live run that starts from a model)."""
        found = set()
        for image, labels in pairs:
            shape, labels_shape = spatial_shape(image), tuple(labels.data.shape)
            spatial_dims = layouts.guess_spatial_dims(shape) if preset == AUTO_PRESET \
                else self.presets[preset].get("spatial_dims", 2)
            found.add(spatial_dims)
            if shape != labels_shape:
                raise UserError(f"image '{image.name}' is {shape} but labels '{labels.name}' "
                                f"are {labels_shape}: paint labels on a layer of the image's size")
            if not empty_ok and not lazy.any_nonzero(labels.data):
                raise UserError(f"labels '{labels.name}' are empty: paint some objects with the "
                                f"brush before training")
            if spatial_dims == 3 and len(shape) != 3:
                raise UserError(f"the {preset} preset trains on 3D volumes but '{image.name}' is "
                                f"{len(shape)}D {shape}: choose industrial or isbi2012")
            if spatial_dims == 2 and len(shape) > 3:
                raise UserError(f"'{image.name}' is {len(shape)}D {shape}: a 2D model takes "
                                f"2D images or (Z, Y, X) stacks; split the extra axes first")
            if spatial_dims == 2 and layouts.looks_like_volume(shape):
                show_warning(f"'{image.name}' looks like a 3D volume: the {preset} preset "
                             f"trains on its slices one by one (choose volume3d for a 3D model)")
        if len(found) > 1:
            raise UserError("the pairs mix volumes and 2D images: one model takes one kind; "
                            "train them apart, or choose a named preset")
        return found.pop()

    def _prepare_run_folder(self) -> Path:
        text = self.run_folder.text().strip()
        refuse_builtin_folder(text, "choose a new folder for the run")
        run_dir = Path(text).expanduser() if text else runs.new_run_folder()
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"run folder {run_dir} is a file: choose a folder")
        if runs.is_run(run_dir) or (run_dir / runs.CHECKPOINTS).exists():
            raise UserError(f"{run_dir} already holds a run: choose a new folder (or fine-tune "
                            f"from it)")
        # a folder that holds only data/ (e.g. filled by "Add to training set") is fine: its
        # pairs are trained on too; one with other files is no run folder (a picked folder of
        # pictures would get config.yaml, checkpoints/, predictions/ and data/ among them)
        others = sorted(path.name for path in run_dir.iterdir()
                        if path.name != runs.DATA and not path.name.startswith(".")) \
            if run_dir.is_dir() else []
        if others:
            listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise UserError(f"run folder {run_dir} holds other files ({listed}): choose a new "
                            f"or empty folder")
        try:
            (run_dir / runs.DATA).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the run folder {run_dir} ({exc.strerror}): choose "
                            f"a writable folder") from None
        return run_dir
