"""The Train widget's *Start from*: the weights a run begins with, the CLI's ``--init-from``.

One field: *planned* (under the auto preset the plan may start from a built-in model whose
training data the images look like, and says why), *nothing* (a new model), a built-in model
by name (its card's description as tooltip and under the field) or a run (the recent ones, or
any folder through the "…" button; its training set is trained on too). A built-in model of
the other kind (a 3D model on a 2D image) is said under the field at once, and Start refuses it
before anything is written.
"""
from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QObject
from qtpy.QtWidgets import QComboBox, QFileDialog

from napari_unet import builtin, runs
from napari_unet.choices import AUTO_PRESET
from napari_unet.widgets import (
    StatusLabel,
    UserError,
    builtin_dims,
    builtin_text,
    checkpoint_file,
    existing_path,
    with_browse_button,
)
from napari_unet.widgets.runner import RunCombo

PLANNED, NOTHING = "planned", "nothing"
NO_START = "none"  # the CLI's --init-from none: under auto, no built-in model either
FIRSTS = {PLANNED: "under the auto preset: a built-in model when the images look like its "
                   "training data (the plan says which and why), else nothing",
          NOTHING: "a new model, trained from random weights"}


class StartFrom(QObject):
    """The *Start from* row and the line under it (``rows``); `on_run(path)` is called when a
    run is chosen (the form takes its settings), `on_builtin(name)` for a built-in model."""

    def __init__(self, on_run, on_builtin, parent=None):
        super().__init__(parent)
        self.on_run, self.on_builtin = on_run, on_builtin
        self.combo = RunCombo(PLANNED, builtins=True, firsts=FIRSTS)
        self.combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(12)
        self.combo.setToolTip("the weights training starts from: a built-in model or a run "
                              "(fine-tuning, the CLI's --init-from)")
        self.combo.activated.connect(lambda _index: self.chosen())
        self.combo.lineEdit().editingFinished.connect(self.chosen)
        self.note = StatusLabel()  # the built-in model's description, or why it does not fit
        self.rows = [("Start from", with_browse_button(self.combo, self._browse)), self.note]

    def text(self) -> str:
        return self.combo.currentText().strip()

    def builtin(self) -> str | None:
        """The built-in model chosen, by name, else None."""
        return builtin.builtin_name(self.text()) if self.text() not in (PLANNED, NOTHING) \
            else None

    def set(self, run_or_name) -> None:
        self.combo.setEditText(str(run_or_name))
        self.chosen()

    def chosen(self) -> None:
        """A new choice: a run gives its settings, a built-in model the auto preset."""
        text, name = self.text(), self.builtin()
        if name is not None:
            self.on_builtin(name)
        elif text and text not in (PLANNED, NOTHING):
            self.on_run(Path(text).expanduser())

    def mismatch(self, spatial_dims: int) -> str:
        """Why the built-in model chosen does not fit images of `spatial_dims` ("" when it does)."""
        name = self.builtin()
        dims = builtin_dims(name) if name else None
        if dims is None or dims == spatial_dims:
            return ""
        return (f"{name} is a {dims}D model and the image is {spatial_dims}D: choose a "
                f"{spatial_dims}D model (or nothing) to start from")

    def describe(self, spatial_dims: int) -> None:
        """Say under the field what the built-in model chosen is, or why it does not fit."""
        name = self.builtin()
        self.note.setText(self.mismatch(spatial_dims) or (builtin_text(name) if name else ""))

    def init_from(self, preset: str, spatial_dims: int):
        """The ``--init-from`` value: None (planned; nothing under a named preset), 'none'
        (nothing under auto: no built-in model either), a built-in model's name or a run's
        path. A UserError for a built-in model that does not fit, or a path with no
        checkpoint (checked before the run folder is written)."""
        text = self.text()
        if text in ("", PLANNED) or (text == NOTHING and preset != AUTO_PRESET):
            return None
        if text == NOTHING:
            return NO_START
        if self.builtin() is not None:
            if self.mismatch(spatial_dims):
                raise UserError(self.mismatch(spatial_dims))
            return self.builtin()
        path = existing_path(text, "a built-in model or a run folder to start from")
        checkpoint_file(path, "fine-tune from")
        return path

    def _browse(self, *_):
        parent = self.combo.window()
        folder = QFileDialog.getExistingDirectory(parent, "Run to fine-tune",
                                                  str(runs.default_runs_root()))
        if folder:
            self.set(folder)
