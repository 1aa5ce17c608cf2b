"""Predict widget: a built-in model (by name: it segments before anything is painted), a
trained run or a checkpoint applied to an Image layer, alone or averaged with more runs of
the same task (*Average with*: an ensemble, e.g. the folds of one recipe).

The prediction runs in napari's ``thread_worker`` (:mod:`.prediction_job`): a progress bar,
Cancel, and the result as probability and labels layers over the image. For binary and region
models (BraTS: whole tumour, tumour core, enhancing tumour) a threshold slider re-cuts the
labels live.
"""
from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_unet import builtin
from napari_unet.choices import BACKENDS, DEVICES, TTA_MODES
from napari_unet.widgets import (
    LayerPickers,
    StatusLabel,
    UserError,
    builtin_text,
    image_picker,
    layer_data,
    model_choice,
    one_line,
    refuse_builtin_folder,
    scrolling_layout,
    show_error,
    show_info,
    stop_on_window_close,
)
from napari_unet.widgets.prediction_job import PredictionJob
from napari_unet.widgets.runner import RunCombo

EXPORT_FORMATS = {".zip": "bioimageio", ".onnx": "onnx", ".pt": "torchscript"}
EXPORT_FILTERS = ("bioimage.io package (*.zip)", "ONNX (*.onnx)", "TorchScript (*.pt)")


def _export(checkpoint, format_name, path, image=None):
    """Runs in a worker thread: one line saying what was written, or why not."""
    from napari_unet.engine.export.formats import export_model
    from napari_unet.errors import NapariUnetError

    try:
        # the file dialog asked before replacing a file
        written = export_model(checkpoint, format_name, path, image=image, overwrite=True)
    except NapariUnetError as exc:
        return f"cannot export: {one_line(exc)}"
    return f"exported {written}"


def _combo(items, tooltip: str = "") -> QComboBox:
    combo = QComboBox()
    combo.addItems(items)
    if tooltip:
        combo.setToolTip(tooltip)
    return combo


def _button(text: str, slot) -> QPushButton:
    """A button that calls `slot()` with no argument (Qt would pass its `checked` flag to a
    slot with an optional argument: ``export(path=False)``)."""
    button = QPushButton(text)
    button.clicked.connect(lambda _checked=False: slot())
    return button


class PredictWidget(LayerPickers, QWidget):
    """Choose a run or checkpoint and an image; get probability and label layers."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.job = None
        self.last_job = None
        layout = scrolling_layout(self)  # a short dock scrolls instead of squeezing rows
        layout.addLayout(self._options_form(napari_viewer))
        layout.addLayout(self._buttons())
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m tiles")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addLayout(self._threshold_form())
        layout.addStretch(1)
        stop_on_window_close(self, self.cancel)

    # -- building ------------------------------------------------------------------------------------
    def _model_row(self) -> QHBoxLayout:
        self.model_combo = RunCombo("a built-in model, a run folder or a .pt", builtins=True)
        self.model_combo.currentTextChanged.connect(self._model_changed)
        browse_run = QPushButton("Run…")
        browse_run.clicked.connect(self._browse_run)
        browse_file = QPushButton(".pt…")
        browse_file.clicked.connect(self._browse_checkpoint)
        row = QHBoxLayout()
        row.addWidget(self.model_combo, 1)
        row.addWidget(browse_run)
        row.addWidget(browse_file)
        return row

    def _average_row(self) -> QHBoxLayout:
        self.average_list = QListWidget()
        self.average_list.setMaximumHeight(56)
        self.average_list.setToolTip(
            "more runs of the same task (e.g. the folds of one recipe): each predicts the image "
            "and their probabilities are averaged with the model's (an ensemble)")
        buttons = QVBoxLayout()
        buttons.addWidget(_button("Add…", self._browse_average))
        buttons.addWidget(_button("Remove", self.remove_average))
        row = QHBoxLayout()
        row.addWidget(self.average_list, 1)
        row.addLayout(buttons)
        return row

    def _options_form(self, napari_viewer) -> QFormLayout:
        form = QFormLayout()
        form.addRow("Model", self._model_row())
        self.model_note = StatusLabel()  # what a built-in model is for (its card)
        form.addRow(self.model_note)
        self._model_changed(self.model_combo.currentText())
        form.addRow("Average with", self._average_row())
        self.image_combo = image_picker(napari_viewer)
        self.image_combo.tooltip = ("an image layer, or all the channel layers of one image "
                                    "(\"(N channels)\") for a model trained on N channels")
        self.pickers = [self.image_combo]
        form.addRow("Image", self.image_combo.native)
        self.tile_size = QSpinBox()
        self.tile_size.setRange(0, 4096)
        self.tile_size.setSingleStep(16)
        self.tile_size.setSpecialValueText("auto (training size)")
        form.addRow("Tile size", self.tile_size)
        self.overlap = QDoubleSpinBox()
        self.overlap.setRange(0.0, 0.9)
        self.overlap.setSingleStep(0.05)
        self.overlap.setValue(0.25)
        form.addRow("Overlap", self.overlap)
        self.tta = _combo(TTA_MODES, "test-time augmentation: mirror averages all flips, "
                                     "dihedral also quarter turns (twice the passes)")
        form.addRow("TTA", self.tta)
        self.device = _combo(DEVICES)
        form.addRow("Device", self.device)
        self.backend = _combo(BACKENDS, "who runs the network on the CPU: auto picks the "
                                        "fastest installed (OpenVINO, ONNX Runtime: the [cpu] "
                                        "extra)")
        form.addRow("Backend", self.backend)
        return form

    def _buttons(self) -> QHBoxLayout:
        self.predict_button = _button("Predict", self.predict)
        self.cancel_button = _button("Cancel", self.cancel)
        self.cancel_button.setEnabled(False)
        self.export_button = _button("Export…", self.export)
        self.export_button.setToolTip("write the Model field's model as a bioimage.io package "
                                      "(.zip), ONNX or TorchScript (not the average)")
        row = QHBoxLayout()
        for button in (self.predict_button, self.cancel_button, self.export_button):
            row.addWidget(button)
        return row

    def _threshold_form(self) -> QFormLayout:
        self.threshold = QSlider(Qt.Horizontal)
        self.threshold.setRange(1, 99)
        self.threshold.setValue(50)
        self.threshold.setEnabled(False)
        self.threshold_label = QLabel("0.50")
        self._threshold_timer = QTimer(self)  # coalesce slider moves on big images
        self._threshold_timer.setSingleShot(True)
        self._threshold_timer.setInterval(30)
        self._threshold_timer.timeout.connect(self._apply_threshold)
        self.threshold.valueChanged.connect(self._threshold_moved)
        row = QHBoxLayout()
        row.addWidget(self.threshold, 1)
        row.addWidget(self.threshold_label)
        form = QFormLayout()
        form.addRow("Threshold", row)
        return form

    # -- choices -----------------------------------------------------------------------------------
    def set_model(self, path) -> None:
        """Predict with a built-in model (its name), a run folder or a checkpoint file."""
        self.model_combo.setEditText(str(path))

    def _model_changed(self, text: str) -> None:
        """A built-in model: what it segments, under the field and as its tooltip."""
        name = builtin.builtin_name(text.strip())
        note = builtin_text(name) if name else ""
        self.model_note.setText(note)
        self.model_combo.setToolTip(note or "a built-in model (segments before anything is "
                                            "painted), a run folder (its best checkpoint) "
                                            "or a .pt file")

    def _browse_run(self):
        folder = QFileDialog.getExistingDirectory(self, "Run folder", self.model_combo.currentText())
        if folder:
            self.set_model(folder)

    def _browse_checkpoint(self):
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint", self.model_combo.currentText(),
                                              "Checkpoints (*.pt);;bioimage.io packages (*.zip)")
        if path:
            self.set_model(path)

    def add_average(self, path) -> None:
        """Average the model's probabilities with those of the run (or checkpoint) at `path`."""
        self.average_list.addItem(str(path))

    def remove_average(self) -> None:
        """Drop the selected run from the average (the last one when none is selected)."""
        row = self.average_list.currentRow()
        self.average_list.takeItem(row if row >= 0 else self.average_list.count() - 1)

    def _browse_average(self):
        folder = QFileDialog.getExistingDirectory(self, "Run folder to average with",
                                                  self.model_combo.currentText())
        if folder:
            self.add_average(folder)

    # -- actions -------------------------------------------------------------------------------------
    def predict(self):
        """Start predicting the chosen image (a notification explains bad choices)."""
        if self.job is not None and self.job.running:
            show_error("a prediction is running: wait for it or cancel it")
            return
        try:
            checkpoints, image_layer = self._choices()
        except UserError as exc:
            show_error(str(exc))
            return
        self.progress.setRange(0, 0)
        self.status.setText(f"predicting {image_layer.name} with " + (
            str(checkpoints[0]) if len(checkpoints) == 1
            else f"the average of {len(checkpoints)} models"))
        self.predict_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.threshold.setEnabled(False)
        self.job = PredictionJob(  # a list of one is that model (engine.load_models)
            self.viewer, checkpoints, image_layer, tile_size=self.tile_size.value() or None,
            overlap=self.overlap.value(), tta=self.tta.currentText(),
            device=self.device.currentText(), backend=self.backend.currentText(),
            on_done=self._on_done,
            on_progress=self._on_progress, on_end=self._on_end)

    def export(self, path=None):
        """Export the chosen model (to ``path``, else where a file dialog says) in a worker."""
        from napari.qt.threading import create_worker

        try:
            checkpoint = self._model_path()
        except UserError as exc:
            show_error(str(exc))
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Export model", "", ";;".join(EXPORT_FILTERS))
            if not path:
                return None
        suffix = Path(path).suffix.lower()
        if suffix not in EXPORT_FORMATS:
            show_error(f"{Path(path).name}: name the file .zip (bioimage.io), .onnx or .pt "
                       f"(TorchScript)")
            return None
        try:
            refuse_builtin_folder(Path(path).parent, "export the model to another folder")
        except UserError as exc:
            show_error(str(exc))
            return None
        layer = self.image_combo.value  # the package's test image, when one is chosen
        image = layer_data(layer) if layer is not None else None
        worker = create_worker(_export, checkpoint, EXPORT_FORMATS[suffix], path, image,
                               _start_thread=False)
        worker.returned.connect(lambda message: (show_error if message.startswith("cannot")
                                                 else show_info)(message))
        self.status.setText(f"exporting {checkpoint} to {path}")
        worker.start()
        return worker

    def _model_path(self, text=None):
        """The checkpoint of the Model field (or of `text`, a run of the average); a built-in
        model's name as it is."""
        return model_choice(self.model_combo.currentText() if text is None else text,
                            "a built-in model, a run folder or a checkpoint file (.pt)",
                            "predict with")

    def _choices(self):
        """([the model's checkpoint, those it is averaged with ...], the image layer)."""
        checkpoints = [self._model_path()] + [
            self._model_path(self.average_list.item(k).text())
            for k in range(self.average_list.count())]
        image_layer = self.image_combo.value
        if image_layer is None:
            raise UserError("choose an image layer to predict (open or add an image first)")
        return checkpoints, image_layer

    def cancel(self):
        if self.job is not None:
            self.job.cancel()

    def _on_progress(self, done, total):
        self.progress.setRange(0, total)
        self.progress.setValue(done)

    def _on_done(self, job):
        self.last_job = job
        self.status.setText(f"added '{job.labels_layer.name}' and its probabilities")
        if job.binary:
            self.threshold.blockSignals(True)
            self.threshold.setValue(int(round(job.threshold * 100)))
            self.threshold_label.setText(f"{job.threshold:.2f}")
            self.threshold.blockSignals(False)
            self.threshold.setEnabled(True)

    def _on_end(self, job):
        try:
            self.predict_button.setEnabled(True)
            self.cancel_button.setEnabled(False)
            if self.progress.maximum() == 0:
                self.progress.setRange(0, 1)
            if job.error:
                self.status.setText(f"failed: {job.error}")
            elif job.labels_layer is None:
                self.status.setText("cancelled")
        except RuntimeError:  # widget closed meanwhile
            pass

    def _threshold_moved(self, value):
        self.threshold_label.setText(f"{value / 100:.2f}")
        self._threshold_timer.start()

    def _apply_threshold(self):
        if self.last_job is not None:
            self.last_job.apply_threshold(self.threshold.value() / 100)

    def set_threshold(self, threshold: float) -> None:
        """Move the slider (and re-cut the labels at once)."""
        self.threshold.setValue(int(round(threshold * 100)))
        self._threshold_timer.stop()
        self._apply_threshold()
