"""Train widget: (image, labels) layer pairs -> a training run in a child process.

Start writes the pairs as TIF files into ``RUN/data/images`` and ``RUN/data/masks`` (the
generic layout the engine's ``load_dataset`` reads; for 2D stacks only the painted slices)
and runs ``napari_unet train --data RUN/data --out RUN ... --events jsonl`` through
:class:`~napari_unet.widgets.runner.TrainingRunner`. The widget only maps its fields onto the
CLI's options and shows the events: a progress bar (also in napari's activity dock), a live
loss and Dice curve, notifications; at the end it can predict the image into new layers.
"""
from __future__ import annotations

import datetime
import math
import shutil
from pathlib import Path

import numpy as np
from qtpy.QtCore import QPointF, QRectF, QSize, Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                            QGroupBox, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                            QListWidgetItem, QProgressBar, QPushButton, QSizePolicy, QSpinBox,
                            QVBoxLayout, QWidget)

from napari_unet.widgets import (LayerCombo, UserError, layer_data, one_line, safe_name,
                                 show_error, show_info, show_warning, spatial_shape,
                                 stop_on_window_close, with_browse_button)
from napari_unet.widgets.runner import (RunWatcher, TrainingRunner, default_runs_root,
                                        find_run_checkpoint, read_run, run_registry)

PRESET_2D = ("industrial", "isbi2012")
PRESET_3D = "volume3d"
MAX_CLASS_VALUES = 16  # more distinct label values than this are instances: one class


# -- what the widget writes for the engine -----------------------------------------------------
def looks_like_volume(shape) -> bool:
    """A 3D layer that is a volume rather than a stack of unrelated 2D images."""
    if len(shape) != 3:
        return False
    depth, height, width = shape
    return depth >= 16 and depth * 4 >= min(height, width)


def mask_classes(labels: np.ndarray) -> tuple[np.ndarray, bool]:
    """(uint8 class mask, whether instance ids were merged into one foreground class)."""
    values = np.unique(labels)
    values = values[values != 0]
    if len(values) > MAX_CLASS_VALUES or (len(values) and values.max() > 255) \
            or (len(values) and values.min() < 0):
        return (labels != 0).astype(np.uint8), True
    return labels.astype(np.uint8), False


def _unique_stem(data_dir: Path, stem: str) -> str:
    """`stem`, or `stem_2`, `stem_3`, ... so that neither images/ nor masks/ has it yet."""
    candidate, n = stem, 1
    while any((data_dir / sub / f"{candidate}{suffix}").exists()
              for sub in ("images", "masks") for suffix in (".tif", ".tiff")):
        n += 1
        candidate = f"{stem}_{n}"
    return candidate


def _already_there(data_dir: Path, stem: str, image, classes) -> bool:
    """Whether `stem` (or `stem_N`) already holds exactly this image and mask."""
    from napari_unet.io import read_image

    candidates = [stem] + [f"{stem}_{n}" for n in range(2, 1000)]
    for candidate in candidates:
        image_path = data_dir / "images" / f"{candidate}.tif"
        mask_path = data_dir / "masks" / f"{candidate}.tif"
        if not image_path.exists():
            return False
        try:
            if mask_path.exists() \
                    and np.array_equal(read_image(mask_path, mmap=False), classes) \
                    and np.array_equal(read_image(image_path, mmap=False), image):
                return True
        except Exception:  # noqa: BLE001 - an unreadable file is not the same pair
            continue
    return False


def write_training_pairs(data_dir, pairs, spatial_dims: int) -> dict:
    """Write (name, image array, labels array) pairs as RUN/data/images + masks TIFs.

    2D (`spatial_dims` 2): a 2D image is one sample; a (Z, Y, X) stack gives one file per
    painted slice (unpainted slices are not training data). 3D: each volume is one sample.
    Existing files are never replaced: new names are chosen; a pair already saved with the
    same pixels is not saved twice. Returns what happened, for the notice:
    ``{"written": [...], "kept": k, "total": n, "merged": [names], "duplicates": d}``.
    """
    from napari_unet.io import write_tif

    data_dir = Path(data_dir)
    (data_dir / "images").mkdir(parents=True, exist_ok=True)
    (data_dir / "masks").mkdir(parents=True, exist_ok=True)
    report = {"written": [], "kept": 0, "total": 0, "merged": [], "duplicates": 0}
    for name, image, labels in pairs:
        labels = np.asarray(labels)
        if spatial_dims == 2 and labels.ndim == 3:
            slices = [(f"{safe_name(name)}_z{z:04d}", image[z], labels[z])
                      for z in range(labels.shape[0]) if np.any(labels[z])]
            report["total"] += labels.shape[0]
        else:
            slices = [(safe_name(name), image, labels)] if np.any(labels) else []
            report["total"] += 1
        for stem, image_part, labels_part in slices:
            classes, merged = mask_classes(np.asarray(labels_part))
            if merged and name not in report["merged"]:
                report["merged"].append(name)
            image_part = np.asarray(image_part)
            if _already_there(data_dir, stem, image_part, classes):
                report["duplicates"] += 1
                continue
            stem = _unique_stem(data_dir, stem)
            write_tif(data_dir / "images" / f"{stem}.tif", image_part)
            write_tif(data_dir / "masks" / f"{stem}.tif", classes)
            report["written"].append(stem)
        report["kept"] += len(slices)
    return report


def copy_training_set(source_run, data_dir) -> int:
    """Copy another run's RUN/data/images + masks pairs (fine-tuning keeps what it learnt
    from, plus what was added with "Add to training set"). Returns the number of pairs."""
    source = Path(source_run) / "data"
    if not (source / "images").is_dir() or not (source / "masks").is_dir():
        return 0
    data_dir = Path(data_dir)
    (data_dir / "images").mkdir(parents=True, exist_ok=True)
    (data_dir / "masks").mkdir(parents=True, exist_ok=True)
    copied = 0
    for image in sorted((source / "images").glob("*.tif*")):
        mask = source / "masks" / image.name
        if not mask.is_file() or image.name.startswith("."):
            continue
        stem = _unique_stem(data_dir, image.stem)
        shutil.copy2(image, data_dir / "images" / f"{stem}{image.suffix}")
        shutil.copy2(mask, data_dir / "masks" / f"{stem}{image.suffix}")
        copied += 1
    return copied


def _pair_count(data_dir: Path) -> int:
    folder = Path(data_dir) / "images"
    return len([p for p in folder.glob("*.tif*") if not p.name.startswith(".")]) \
        if folder.is_dir() else 0


def new_run_folder() -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = default_runs_root() / stamp
    n = 1
    while folder.exists():
        n += 1
        folder = default_runs_root() / f"{stamp}-{n}"
    return folder


def _cuda_devices() -> int:
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable CUDA is the same as none
        return 0


def _cpu_has_fast_bf16() -> bool:
    from napari_unet.engine.runtime import cpu_has_fast_bf16
    return cpu_has_fast_bf16()


# -- the live curve ----------------------------------------------------------------------------------
class CurveWidget(QWidget):
    """Training loss (orange, own scale) and validation Dice (cyan, 0..1) against the step,
    drawn with QPainter: cheap enough to repaint on every event."""

    LOSS = QColor(255, 165, 60)
    DICE = QColor(80, 200, 255)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.loss: list[tuple[int, float]] = []
        self.dice: list[tuple[int, float]] = []
        self.total = 0
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)

    def sizeHint(self):
        return QSize(300, 150)

    def clear(self, total: int = 0):
        self.loss, self.dice, self.total = [], [], total
        self.update()

    def add_loss(self, step: int, loss: float, repaint: bool = True):
        if math.isfinite(loss):
            self.loss.append((step, loss))
            if repaint:
                self.update()

    def add_dice(self, step: int, dice: float):
        if math.isfinite(dice):
            self.dice.append((step, dice))
            self.update()

    def paintEvent(self, event):
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        text = self.palette().color(self.foregroundRole())
        area = QRectF(self.rect()).adjusted(34, 8, -34, -20)
        painter.setPen(QPen(QColor(text.red(), text.green(), text.blue(), 90), 1))
        painter.drawRect(area)
        last_step = max([s for s, _ in self.loss] + [s for s, _ in self.dice] + [self.total, 1])
        loss_max = max([v for _, v in self.loss] + [1e-6])
        self._polyline(painter, area, self.loss, last_step, loss_max, self.LOSS, dots=False)
        self._polyline(painter, area, self.dice, last_step, 1.0, self.DICE, dots=True)
        painter.setPen(text)
        font = painter.font()
        font.setPointSizeF(max(7.0, font.pointSizeF() - 1))
        painter.setFont(font)
        painter.drawText(QPointF(area.left(), self.height() - 5), "0")
        painter.drawText(QRectF(area.right() - 80, area.bottom() + 2, 80, 16),
                         Qt.AlignRight, f"step {last_step}")
        painter.setPen(self.LOSS)
        painter.drawText(QRectF(0, area.top() - 4, 32, 16), Qt.AlignRight, f"{loss_max:.2g}")
        painter.drawText(QRectF(0, area.bottom() - 12, 32, 16), Qt.AlignRight, "0")
        legend = f"loss {self.loss[-1][1]:.3f}" if self.loss else "loss"
        painter.drawText(QPointF(area.left() + 6, area.top() + 14), legend)
        painter.setPen(self.DICE)
        painter.drawText(QRectF(area.right() + 2, area.top() - 4, 32, 16), Qt.AlignLeft, "1")
        painter.drawText(QRectF(area.right() + 2, area.bottom() - 12, 32, 16), Qt.AlignLeft, "0")
        legend = f"Dice {self.dice[-1][1]:.3f}" if self.dice else "Dice (validation)"
        painter.drawText(QPointF(area.left() + 6, area.top() + 30), legend)
        painter.end()

    @staticmethod
    def _polyline(painter, area, points, last_step, top, color, dots):
        if not points:
            return
        def to_xy(step, value):
            x = area.left() + area.width() * step / last_step
            y = area.bottom() - area.height() * min(max(value / top, 0.0), 1.0)
            return QPointF(x, y)
        stride = max(1, len(points) // int(max(area.width(), 1)))  # about one point per pixel
        shown = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
        path = QPainterPath(to_xy(*shown[0]))
        for step, value in shown[1:]:
            path.lineTo(to_xy(step, value))
        painter.setPen(QPen(color, 1.6))
        painter.drawPath(path)
        if dots:
            painter.setBrush(color)
            for step, value in shown:
                painter.drawEllipse(to_xy(step, value), 2.5, 2.5)
            painter.setBrush(Qt.NoBrush)


# -- the widget ---------------------------------------------------------------------------------------
class TrainWidget(QWidget):
    """Pick (image, labels) pairs and options, press Start; Cancel stops the child cleanly."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        from napari.layers import Image, Labels

        from napari_unet.engine import PRESETS

        self.viewer = napari_viewer
        self.presets = PRESETS
        self.cuda_devices = _cuda_devices()
        self.runner = TrainingRunner()
        self.watcher = None
        self.run_dir = None
        self.prediction = None
        self.finished_event = None
        self._progress = None
        self._first_image = None
        self.pairs: list[tuple[str, str]] = []

        # data
        self.image_combo = LayerCombo(napari_viewer, Image)
        self.labels_combo = LayerCombo(napari_viewer, Labels)
        self.image_combo.currentIndexChanged.connect(self._image_changed)
        self.pair_list = QListWidget()
        self.pair_list.setMaximumHeight(54)
        add_pair = QPushButton("Add pair")
        add_pair.clicked.connect(self.add_current_pair)
        remove_pair = QPushButton("Remove")
        remove_pair.clicked.connect(self._remove_pair)
        pair_buttons = QHBoxLayout()
        pair_buttons.addWidget(add_pair)
        pair_buttons.addWidget(remove_pair)
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        self.preset.currentTextChanged.connect(self._preset_changed)
        self.holdout = QCheckBox("validate on 1/5 of the samples (Dice curve)")
        self.holdout.setChecked(True)
        data_form = QFormLayout()
        data_form.addRow("Image", self.image_combo)
        data_form.addRow("Labels", self.labels_combo)
        data_form.addRow(pair_buttons)
        data_form.addRow(self.pair_list)
        data_form.addRow("Preset", self.preset)
        data_form.addRow(self.holdout)
        data_box = QGroupBox("Data")
        data_box.setLayout(data_form)

        # options (mapped one to one onto the CLI's)
        self.steps = QSpinBox()
        self.steps.setRange(1, 10_000_000)
        self.steps.setValue(200)
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 4096)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 1.0)
        self.lr.setSingleStep(1e-5)
        self.base_channels = QComboBox()
        for text, value in (("preset default", None), ("8 (tiny)", 8), ("16 (small, CPU)", 16),
                            ("32", 32), ("64 (full UNet)", 64)):
            self.base_channels.addItem(text, value)
        self.patch_size = QSpinBox()
        self.patch_size.setRange(16, 2048)
        self.patch_size.setSingleStep(16)
        self.amp = QComboBox()
        self.amp.addItems(["bf16", "fp16", "off"])
        self.compile = QCheckBox("torch.compile")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.gpus = QSpinBox()
        self.gpus.setRange(1, max(1, self.cuda_devices))
        self.gpus.setEnabled(self.cuda_devices > 1)
        self.gpus.setToolTip("more than one starts DistributedDataParallel (torchrun)")
        options_form = QFormLayout()
        options_form.addRow("Steps", self.steps)
        options_form.addRow("Batch size", self.batch_size)
        options_form.addRow("Learning rate", self.lr)
        options_form.addRow("Model size", self.base_channels)
        options_form.addRow("Patch size", self.patch_size)
        options_form.addRow("AMP", self.amp)
        options_form.addRow("Device", self.device)
        options_form.addRow("GPUs", self.gpus)
        options_form.addRow(self.compile)
        options_box = QGroupBox("Training")
        options_box.setLayout(options_form)

        # run
        self.run_folder = QLineEdit()
        self.run_folder.setPlaceholderText(f"new folder in {default_runs_root()}")
        run_row = with_browse_button(self.run_folder, self._browse_run_folder)
        self.init_from = QLineEdit()
        self.init_from.setPlaceholderText("optional: a run to fine-tune")
        self.init_from.editingFinished.connect(self._init_from_changed)
        init_row = with_browse_button(self.init_from, self._browse_init_from)
        self.predict_at_end = QCheckBox("predict the image when training ends")
        self.predict_at_end.setChecked(True)
        run_form = QFormLayout()
        run_form.addRow("Run folder", run_row)
        run_form.addRow("Fine-tune", init_row)
        run_form.addRow(self.predict_at_end)
        run_box = QGroupBox("Run")
        run_box.setLayout(run_form)

        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        attach_button = QPushButton("Re-attach…")
        attach_button.setToolTip("show the curves of a run folder; follow it if it still runs")
        attach_button.clicked.connect(self._browse_attach)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(attach_button)
        self.progress = QProgressBar()
        self.progress.setFormat("step %v / %m")
        self.progress.setValue(0)
        self.status = QLabel("")  # rare messages; per-step figures go into the progress bar
        self.status.setWordWrap(True)
        self.status.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self._latest_progress = None
        self._ui_timer = QTimer(self)
        self._ui_timer.setSingleShot(True)
        self._ui_timer.setInterval(200)
        self._ui_timer.timeout.connect(self._refresh_progress)
        self.curve = CurveWidget()

        layout = QVBoxLayout(self)
        for box in (data_box, options_box, run_box):
            layout.addWidget(box)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.curve)
        layout.addStretch(1)

        self.runner.started.connect(self._on_started)
        self.runner.progress.connect(self._on_progress)
        self.runner.validation.connect(self._on_validation)
        self.runner.checkpoint.connect(self._on_checkpoint)
        self.runner.message.connect(self._on_message)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.exited.connect(self._on_exited)
        stop_on_window_close(self, self.shutdown)

        self._preset_changed(self.preset.currentText())
        self._image_changed()

    # -- defaults that follow the choices ------------------------------------------------------------
    def _image_changed(self, *_):
        """A new image: its labels, a preset that fits it (3D volume -> volume3d), a patch
        size no bigger than it. Other options the user set stay."""
        image = self.image_combo.layer()
        if image is None:
            return
        self._pick_matching_labels(image)
        current = self.preset.currentText()
        wanted = PRESET_3D if looks_like_volume(spatial_shape(image)) else PRESET_2D[0]
        if current != wanted and not (wanted in PRESET_2D and current in PRESET_2D):
            self.preset.setCurrentText(wanted)  # applies the preset's defaults
        else:
            self.patch_size.setValue(min(self.patch_size.value(), self._largest_patch()))

    def _pick_matching_labels(self, image):
        from napari.layers import Labels

        current = self.labels_combo.layer()
        if current is not None and tuple(current.data.shape) == spatial_shape(image):
            return
        matches = [layer for layer in self.viewer.layers if isinstance(layer, Labels)
                   and tuple(layer.data.shape) == spatial_shape(image)]
        matches.sort(key=lambda layer: not layer.name.startswith(image.name))
        if matches:
            self.labels_combo.set_layer(matches[0])

    def _spatial_dims(self, preset=None) -> int:
        return self.presets.get(preset or self.preset.currentText(), {}).get("spatial_dims", 2)

    def _largest_patch(self) -> int:
        """The image's smallest extent (over the model's axes), in steps of 16."""
        image = self.image_combo.layer()
        shape = spatial_shape(image) if image is not None else ()
        dims = self._spatial_dims()
        if len(shape) < dims:
            return self.patch_size.maximum()
        return max(16, min(shape[-dims:]) // 16 * 16)

    def _preset_changed(self, preset: str):
        """The preset's defaults, made small on a CPU (no CUDA device here)."""
        values = self.presets.get(preset, {})
        on_gpu = self.cuda_devices > 0
        spatial_dims = self._spatial_dims(preset)
        self.lr.setValue(float(values.get("lr", 1e-4)))
        self.batch_size.setValue(int(values.get("batch_size", 4)) if on_gpu
                                 else (2 if spatial_dims == 3 else 4))
        small = 8 if spatial_dims == 3 else 16
        self.base_channels.setCurrentIndex(0 if on_gpu else self.base_channels.findData(small))
        # bf16 where the hardware has it: every GPU of the field, CPUs with AVX512-BF16/AMX
        self.amp.setCurrentText("bf16" if on_gpu or _cpu_has_fast_bf16() else "off")
        patch = int((values.get("patch_size") or [128])[0])
        if not on_gpu:
            patch = min(patch, 64 if spatial_dims == 3 else 128)
        self.patch_size.setValue(min(patch, self._largest_patch()))

    def set_init_from(self, run_dir) -> None:
        """Fine-tune from `run_dir` (its weights and its training set) with its settings."""
        self.init_from.setText(str(run_dir))
        self._init_from_changed()

    def _init_from_changed(self):
        """Fine-tuning: take the source run's preset, model size and patch size."""
        from napari_unet.engine import TrainConfig

        text = self.init_from.text().strip()
        if not text:
            return
        config_path = Path(text).expanduser() / "config.yaml"
        if not config_path.is_file():
            return
        try:
            config = TrainConfig.from_yaml(config_path)
        except Exception as exc:  # noqa: BLE001 - a damaged config only loses the defaults
            show_warning(f"cannot read {config_path}: {one_line(exc)}")
            return
        if config.preset in self.presets:
            self.preset.setCurrentText(config.preset)
        index = self.base_channels.findData(config.model_options.get("base_channels"))
        if index >= 0:
            self.base_channels.setCurrentIndex(index)
        self.patch_size.setValue(int(config.patch_size[0]))

    # -- pairs ------------------------------------------------------------------------------------------
    def add_current_pair(self):
        image, labels = self.image_combo.layer(), self.labels_combo.layer()
        if image is None or labels is None:
            show_error("choose an image layer and a labels layer to pair")
            return
        pair = (image.name, labels.name)
        if pair in self.pairs:
            return
        self.pairs.append(pair)
        self.pair_list.addItem(QListWidgetItem(f"{image.name}  ←  {labels.name}"))

    def _remove_pair(self):
        row = self.pair_list.currentRow()
        if row < 0 and self.pairs:
            row = len(self.pairs) - 1
        if row >= 0:
            self.pairs.pop(row)
            self.pair_list.takeItem(row)

    def _layer_pairs(self):
        """[(image layer, labels layer)] from the list, else from the two combo boxes."""
        from napari.layers import Image, Labels

        by_name = {layer.name: layer for layer in self.viewer.layers}
        names = self.pairs or [(self.image_combo.currentText(), self.labels_combo.currentText())]
        pairs = []
        for image_name, labels_name in names:
            image, labels = by_name.get(image_name), by_name.get(labels_name)
            if not isinstance(image, Image):
                raise UserError("choose an image layer to train on (open or add an image first)"
                                if not image_name else f"image layer '{image_name}' is gone")
            if not isinstance(labels, Labels):
                raise UserError("choose a labels layer: add one (Layers > New Labels) and paint "
                                "the objects" if not labels_name
                                else f"labels layer '{labels_name}' is gone")
            pairs.append((image, labels))
        return pairs

    # -- checks before starting ----------------------------------------------------------------------
    def _check_pairs(self, pairs, preset):
        spatial_dims = self.presets[preset].get("spatial_dims", 2)
        for image, labels in pairs:
            shape, labels_shape = spatial_shape(image), tuple(labels.data.shape)
            if shape != labels_shape:
                raise UserError(f"image '{image.name}' is {shape} but labels '{labels.name}' "
                                f"are {labels_shape}: paint labels on a layer of the image's size")
            if not np.any(np.asarray(labels.data)):
                raise UserError(f"labels '{labels.name}' are empty: paint some objects with the "
                                f"brush before training")
            if spatial_dims == 3 and len(shape) != 3:
                raise UserError(f"the {preset} preset trains on 3D volumes but '{image.name}' is "
                                f"{len(shape)}D {shape}: choose industrial or isbi2012")
            if spatial_dims == 2 and len(shape) > 3:
                raise UserError(f"'{image.name}' is {len(shape)}D {shape}: a 2D preset takes "
                                f"2D images or (Z, Y, X) stacks; split the extra axes first")
            if spatial_dims == 2 and looks_like_volume(shape):
                show_warning(f"'{image.name}' looks like a 3D volume: the {preset} preset "
                             f"trains on its slices one by one (choose volume3d for a 3D model)")
        return spatial_dims

    def _prepare_run_folder(self) -> Path:
        text = self.run_folder.text().strip()
        run_dir = Path(text).expanduser() if text else new_run_folder()
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"run folder {run_dir} is a file: choose a folder")
        if (run_dir / "config.yaml").exists() or (run_dir / "checkpoints").exists():
            raise UserError(f"{run_dir} already holds a run: choose a new folder (or fine-tune "
                            f"from it)")
        # a folder that holds only data/ (e.g. filled by "Add to training set") is fine: its
        # pairs are trained on too
        try:
            (run_dir / "data").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the run folder {run_dir} ({exc.strerror}): choose "
                            f"a writable folder") from None
        return run_dir

    def _init_from_run(self):
        text = self.init_from.text().strip()
        if not text:
            return None
        path = Path(text).expanduser()
        if not path.exists():
            raise UserError(f"fine-tune run {path} does not exist: choose a run folder")
        if find_run_checkpoint(path) is None:
            raise UserError(f"{path} has no checkpoint to fine-tune from: choose a finished run")
        return path

    # -- start / cancel ---------------------------------------------------------------------------------
    def start(self):
        """Check the choices, write the training data, start the child process."""
        if self.runner.is_running():
            show_error("a training run is already going: cancel it first")
            return
        preset = self.preset.currentText()
        try:
            pairs = self._layer_pairs()
            spatial_dims = self._check_pairs(pairs, preset)
            init_from = self._init_from_run()
            run_dir = self._prepare_run_folder()
        except UserError as exc:
            show_error(str(exc))
            return
        already = _pair_count(run_dir / "data")
        try:
            copied = copy_training_set(init_from, run_dir / "data") if init_from else 0
            report = write_training_pairs(
                run_dir / "data",
                [(image.name, layer_data(image), labels.data) for image, labels in pairs],
                spatial_dims)
        except Exception as exc:  # noqa: BLE001 - disk full, permissions: tell, keep the viewer
            show_error(f"cannot write the training data to {run_dir / 'data'}: {one_line(exc)}")
            return
        self._report_written(report, copied, spatial_dims)
        if already:
            show_info(f"{run_dir / 'data'} already held {already} training pair(s): "
                      f"they are trained on too")
        samples = _pair_count(run_dir / "data")
        args = self.cli_args(preset, run_dir, samples, init_from)
        self._first_image = pairs[0][0]
        self._begin(run_dir)
        try:
            self.runner.start(args, run_dir)
        except OSError as exc:
            self._end_ui()
            show_error(f"cannot start training: {one_line(exc)}")

    def _report_written(self, report, copied, spatial_dims):
        if spatial_dims == 2 and report["kept"] < report["total"]:
            show_info(f"training on the {report['kept']} painted slice(s) of {report['total']}; "
                      f"unpainted slices are left out")
        if report["merged"]:
            show_info(f"labels of {', '.join(report['merged'])} have many values (instances): "
                      f"trained as one foreground class")
        if copied:
            show_info(f"added {copied} training pair(s) of the fine-tuned run"
                      + (f" ({report['duplicates']} of the chosen slices were among them)"
                         if report["duplicates"] else ""))

    def cli_args(self, preset, run_dir, samples, init_from=None) -> list[str]:
        """The CLI options for the current fields (the widget's only link to training)."""
        steps = self.steps.value()
        every = max(1, steps // 10)
        spatial_dims = self.presets[preset].get("spatial_dims", 2)
        args = ["--preset", preset, "--data", str(run_dir / "data"), "--out", str(run_dir),
                "--steps", str(steps), "--batch-size", str(self.batch_size.value()),
                "--lr", repr(self.lr.value()),
                "--patch-size", *[str(self.patch_size.value())] * spatial_dims,
                "--amp", self.amp.currentText(), "--device", self.device.currentText(),
                "--val-every", str(every), "--checkpoint-every", str(every),
                "--set", f"log_every={min(10, every)}"]
        if self.base_channels.currentData() is not None:
            args += ["--base-channels", str(self.base_channels.currentData())]
        if self.compile.isChecked():
            args.append("--compile")
        if self.gpus.value() > 1:
            args += ["--nproc", str(self.gpus.value())]
        if init_from is not None:
            args += ["--init-from", str(init_from)]
        if self.holdout.isChecked() and samples >= 2:
            args += ["--fold", "0", "--folds", str(min(5, samples))]
        return args

    def _begin(self, run_dir):
        from napari.utils import cancelable_progress

        self.run_dir = run_dir
        self.finished_event = None
        self._latest_progress = None
        self.progress.setFormat("step %v / %m")
        self.curve.clear(self.steps.value())
        self.progress.setRange(0, 0)  # busy until the child reports Started
        self.status.setText(f"starting training in {run_dir}")
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._close_progress()
        self._progress = cancelable_progress(total=self.steps.value(),
                                             desc="napari UNet: training")
        run_registry().add(run_dir)

    def cancel(self):
        """Stop the run: the child saves a checkpoint (the run can be fine-tuned/resumed)."""
        if self.runner.is_running():
            self.status.setText("cancelling: saving a checkpoint…")
            self.runner.cancel()
        elif self.watcher is not None:
            self.watcher.cancel()

    def shutdown(self):
        """The viewer is closing: stop the child (checkpoint first) and any prediction."""
        if self.prediction is not None:
            self.prediction.cancel()
        if self.watcher is not None:
            self.watcher.stop()
        self.runner.stop()
        self._close_progress()

    # -- events from the child ------------------------------------------------------------------------
    def _on_started(self, event):
        self.progress.setRange(0, event.total_steps)
        self.progress.setValue(event.start_step)
        self.curve.total = event.total_steps
        validation = (f"{event.val_samples} validation" if event.val_samples
                      else "no validation (no Dice curve)")
        self.status.setText(f"training on {event.device}: {event.train_samples} training and "
                            f"{validation} samples")

    def _on_progress(self, event):
        # small models send dozens of steps a second: keep the data now, repaint a few times
        # a second (repainting per event would keep the GUI thread busy)
        self._latest_progress = event
        self.curve.add_loss(event.step, event.loss, repaint=False)
        if not self._ui_timer.isActive():
            self._ui_timer.start()

    def _refresh_progress(self):
        event = self._latest_progress
        if event is None:
            return
        self.progress.setFormat(f"step %v / %m   loss {event.loss:.4f}   "
                                f"{event.img_s:.1f} img/s")
        self.progress.setValue(event.step)
        self.curve.update()
        if self._progress is not None:
            self._progress.update(event.step - self._progress.n)
            if self._progress.is_canceled and not self.runner.cancel_requested:
                self.cancel()  # Cancel pressed in napari's activity dock

    def _on_validation(self, event):
        self.curve.add_dice(event.step, event.dice)

    def _on_checkpoint(self, event):
        self.status.setText(f"checkpoint saved at step {event.step}")

    def _on_message(self, event):
        if event.level == "warning":
            show_warning(event.text)
        else:
            self.status.setText(event.text)

    def _on_finished(self, event):
        self._ui_timer.stop()
        self._refresh_progress()
        self.finished_event = event
        dice = "" if math.isnan(event.best_dice) else f", best Dice {event.best_dice:.3f}"
        self.status.setText(f"done at step {event.step}{dice}; checkpoint {event.path}")
        self.progress.setValue(self.progress.maximum())
        run_registry().add(self.run_dir)
        image = self._first_image
        if self.predict_at_end.isChecked() and image is not None and image in self.viewer.layers:
            from napari_unet.widgets.predict import PredictionJob

            self.prediction = PredictionJob(self.viewer, event.path, image,
                                            device=self.device.currentText(),
                                            on_end=self._on_prediction_end)

    def _on_prediction_end(self, job):
        try:
            if job.labels_layer is not None:
                self.status.setText(self.status.text() + f"; added '{job.labels_layer.name}'")
        except RuntimeError:
            pass

    def _on_failed(self, message):
        show_error(f"training failed: {message}")
        self.status.setText(f"failed: {message}")

    def _on_cancelled(self, run_dir):
        checkpoint = find_run_checkpoint(run_dir) if run_dir else None
        where = f"; checkpoint {checkpoint}" if checkpoint else ""
        show_info(f"training cancelled{where}")
        self.status.setText(f"cancelled{where}")

    def _on_exited(self, code):
        self._end_ui()

    def _end_ui(self):
        if self._ui_timer.isActive():
            self._ui_timer.stop()
            self._refresh_progress()
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        self._close_progress()

    def _close_progress(self):
        if self._progress is not None:
            progress, self._progress = self._progress, None
            try:
                progress.close()
            except (KeyError, RuntimeError):
                pass

    # -- re-attach ----------------------------------------------------------------------------------------
    def attach(self, run_dir) -> None:
        """Show a run folder's curves; follow the run if its child still trains."""
        try:
            record = read_run(run_dir)
        except (FileNotFoundError, OSError) as exc:
            show_error(one_line(exc))
            return
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        self.run_dir = record.run_dir
        total = record.total_steps or record.last_step
        self.curve.clear(total)
        self.curve.loss, self.curve.dice = list(record.loss), list(record.dice)
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(record.last_step)
        run_registry().add(record.run_dir)
        if record.pid is not None:
            self.watcher = RunWatcher(record.run_dir, record.pid, record.metrics_offset,
                                      parent=self)
            self.watcher.points.connect(self._on_watched_points)
            self.watcher.ended.connect(self._on_watched_end)
            self.cancel_button.setEnabled(True)
            self.status.setText(f"following the running training in {record.run_dir} "
                                f"(pid {record.pid})")
        else:
            checkpoint = record.checkpoint or "none yet"
            self.status.setText(f"run {record.run_dir}: step {record.last_step}, "
                                f"checkpoint {checkpoint}")
        self.curve.update()

    def _on_watched_points(self, loss, dice):
        self.curve.loss += loss
        self.curve.dice += dice
        if self.curve.loss:
            self.progress.setValue(self.curve.loss[-1][0])
        self.curve.update()

    def _on_watched_end(self, checkpoint):
        self.cancel_button.setEnabled(self.runner.is_running())
        self.status.setText(f"the run ended; checkpoint {checkpoint or 'none'}")
        self.watcher = None

    # -- file dialogs -------------------------------------------------------------------------------------
    def _browse_run_folder(self):
        folder = QFileDialog.getExistingDirectory(self, "Run folder (new or empty)",
                                                  str(default_runs_root()))
        if folder:
            self.run_folder.setText(folder)

    def _browse_init_from(self):
        folder = QFileDialog.getExistingDirectory(self, "Run to fine-tune", str(default_runs_root()))
        if folder:
            self.set_init_from(folder)

    def _browse_attach(self):
        folder = QFileDialog.getExistingDirectory(self, "Run folder to re-attach",
                                                  str(default_runs_root()))
        if folder:
            self.attach(folder)
