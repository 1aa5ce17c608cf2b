"""The Train widget's choices: layer pairs, what the labels mean, preset and options, the run.

Every field maps onto one option of ``napari_unet train`` (:meth:`TrainForm.cli_args`); the
training options' fields are made from the option rows that have a ``form``
(napari_unet.options), so a new option shows here by its row alone. The defaults follow the
chosen image and preset. The data rows (pickers, preset, time, more pairs) and the checks
before Start are in :mod:`.train_data`; starting, the events and the curve in :mod:`.train`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from napari_unet import engine, layouts, lazy, runs
from napari_unet._napari import looks_like_brats
from napari_unet.choices import (
    AUTO_PRESET,
    IGNORE_CLASS,
    PRESETS,
    REGION_SETS,
)
from napari_unet.errors import DataError
from napari_unet.masks import describe_classes, mask_classes
from napari_unet.options import SHOWN, option_args
from napari_unet.widgets import (
    LayerPickers,
    UserError,
    add_labels_over,
    group_box,
    one_line,
    show_error,
    show_warning,
    spatial_shape,
    with_browse_button,
)
from napari_unet.widgets.start_from import StartFrom
from napari_unet.widgets.train_data import TrainData, channel_count
from napari_unet.widgets.train_fields import (
    LENGTH_OPTIONS,
    PLANNED_SWITCHES,
    ObjectsChoice,
    TrainFor,
    Unpainted,
    allow_planned,
    field_value,
    is_planned,
    leave_to_plan,
    left_text,
    option_field,
    plannable,
    spin_box,
)

PRESET_2D = tuple(name for name, values in PRESETS.items() if values["spatial_dims"] == 2)
PRESET_3D = next(name for name, values in PRESETS.items() if values["spatial_dims"] == 3)
BRATS_PRESET = "brats"  # the default for a BraTS volume picked whole (where the preset exists)
MODEL_SIZES = (("planned", None), ("8 (tiny)", 8), ("16 (small, CPU)", 16), ("32", 32),
               ("64 (full UNet)", 64))
NONZERO = -1  # the object value spin box's "every non-zero value" (what napari colours)


def _cuda_devices() -> int:
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable CUDA is the same as none
        return 0


def _cpu_has_fast_bf16() -> bool:
    return engine.cpu_has_fast_bf16()



class TrainForm(TrainData, LayerPickers, QWidget):
    """The fields of the Train widget and the defaults that follow them."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.presets = PRESETS
        self.cuda_devices = _cuda_devices()
        self.pairs: list[tuple[str, str]] = []
        # the first box (data, preset, how long) stays in view above Start; the rest
        # scrolls below it (built first: the time fields are training options)
        labels_box, options_box = self._labels_box(), self._options_box()
        self.start_from = StartFrom(self._start_from_run, self._start_from_builtin, self)
        self.data_box = self._data_box()
        self.start_from.combo.currentTextChanged.connect(self.describe_start)
        self.preset.currentTextChanged.connect(self.describe_start)
        self.boxes = [labels_box, self._pairs_box(), options_box, self._run_box()]

    # -- builders (one group box each) -------------------------------------------------------------
    def _labels_box(self):
        self.object_value = spin_box(NONZERO, 65535, NONZERO)
        self.object_value.setSpecialValueText("every non-zero value")
        self.object_value.setToolTip("the label value of the object to learn (the CLI's "
                                     "--foreground-value); napari colours the non-zero values")
        self.invert = QCheckBox("invert (the object is the 0 / uncoloured pixels)")
        self.invert.setToolTip("for 0/255 masks whose object is 0, as ISBI's membranes")
        self.learns = QLabel("")
        self.learns.setWordWrap(True)
        show = QPushButton("Show")
        show.setToolTip("add a layer of what training will learn from the labels")
        show.clicked.connect(self.show_learned)
        self.object_value.valueChanged.connect(self.describe_labels)
        self.invert.toggled.connect(self.describe_labels)
        self.unpainted = Unpainted(self)
        self.unpainted.connect(self.describe_labels)
        self.objects = ObjectsChoice(self)
        self.objects.connect(self.describe_labels)
        row = QHBoxLayout()
        row.addWidget(self.invert, 1)
        row.addWidget(show)
        return group_box("Object", [("Value", self.object_value), row, *self.unpainted.rows,
                                    *self.objects.rows, self.learns])

    def _options_box(self):
        # a field per option row with a form (self.steps, self.lr, ...), each also an
        # attribute; model size and GPUs are no config options (a model option, processes)
        self.option_fields = {option.name: option_field(option) for option in SHOWN}
        for option in SHOWN:
            setattr(self, option.name, self.option_fields[option.name])
            if option.help:
                self.option_fields[option.name].setToolTip(option.help)
        # the fields the plan (or a named preset) fills unless the user sets them
        self.planned_fields = {o.name: self.option_fields[o.name] for o in SHOWN if plannable(o)}
        for field in self.planned_fields.values():
            allow_planned(field)
        self.train_for = TrainFor(self.minutes, self.steps, self)
        self.unpainted.offer_a_first_model(self.train_for)
        self.base_channels = QComboBox()
        for text, value in MODEL_SIZES:
            self.base_channels.addItem(text, value)
        self.gpus = spin_box(1, max(1, self.cuda_devices))
        self.gpus.setEnabled(self.cuda_devices > 1)
        self.gpus.setToolTip("more than one starts DistributedDataParallel (torchrun)")
        labelled = [(o.form.label, self.option_fields[o.name]) for o in SHOWN
                    if o.value_type is not bool and o.name not in LENGTH_OPTIONS]
        checks = [self.option_fields[o.name] for o in SHOWN if o.value_type is bool]
        self.holdout = QCheckBox("validate on 1/5 of the samples (Dice curve)")
        self.holdout.setChecked(True)
        return group_box("Training", [self.holdout, *labelled,
                                      ("Model size", self.base_channels),
                                      ("GPUs", self.gpus), *checks])

    def _run_box(self):
        self.run_folder = QLineEdit()
        self.run_folder.setPlaceholderText(f"new folder in {runs.default_runs_root()}")
        self.predict_at_end = QCheckBox("predict the image when training ends")
        self.predict_at_end.setChecked(True)
        return group_box("Run", [
            ("Run folder", with_browse_button(self.run_folder, self._browse_run_folder)),
            self.predict_at_end])

    # -- what the labels mean ---------------------------------------------------------------------
    def mask_rule(self) -> dict:
        """The foreground value, invert and unpainted choices, as :func:`mask_classes` takes
        them."""
        value = self.object_value.value()
        return {"foreground_value": None if value == NONZERO else value,
                "invert": self.invert.isChecked(), **self.unpainted.rule(),
                **self.objects.rule()}

    def describe_labels(self, *_):
        """Say what training will learn from the chosen labels (before Start)."""
        labels = self.labels_combo.value
        if labels is None:
            self.learns.setText("")
            return
        data = labels.data
        if lazy.is_lazy(data):  # its painted part: a lazily read layer is not loaded whole
            box = lazy.painted_box(data)
            data = np.asarray(data[box]) if box else np.zeros(0, np.uint8)
        else:
            data = np.asarray(data)
        text = describe_classes(data, **self.mask_rule())
        if self.mask_rule() == {"foreground_value": None, "invert": False} \
                and data.size and np.count_nonzero(data) > 0.5 * data.size:
            text += ("; most pixels are coloured: if the object is the uncoloured (0) part, "
                     "as ISBI's membranes, tick invert")
        regions = self.presets.get(self.preset.currentText(), {}).get("regions")
        if regions in REGION_SETS:  # region training: what the outputs are made of
            row = REGION_SETS[regions]
            parts = [f"{name} ({', '.join(map(str, values))})" for name, values
                     in zip(row["names"], row["regions"])]
            text += f"; the {self.preset.currentText()} preset trains {', '.join(parts)}"
        self.learns.setText(text)

    def show_learned(self):
        """A labels layer of the classes training will learn (replaced on each press)."""
        labels = self.labels_combo.value
        try:
            if labels is None:
                raise UserError("choose a labels layer first")
            classes, _ = mask_classes(np.asarray(labels.data),
                                      **{"instances": "merge", **self.mask_rule()})
        except (UserError, DataError) as exc:
            show_error(one_line(exc))
            return
        name = f"{labels.name} (learned)"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        add_labels_over(self.viewer, classes, name, labels)
        self.describe_labels()

    # -- defaults that follow the choices ---------------------------------------------------------
    def _image_changed(self, *_):
        """A new image: its labels, a preset that fits it (3D volume -> volume3d, the four
        channels of a BraTS volume -> brats; auto stays, its plan follows the data, but for
        BraTS, whose regions no plan infers), a patch size no bigger than it. Other options
        the user set stay."""
        image = self.image_combo.value
        if image is None:
            return
        self._pick_matching_labels(image)
        current = self.preset.currentText()
        wanted = PRESET_3D if layouts.looks_like_volume(spatial_shape(image)) else PRESET_2D[0]
        if wanted == PRESET_3D and BRATS_PRESET in self.presets \
                and looks_like_brats(image.name, channel_count(image)):
            wanted = BRATS_PRESET
        if current == AUTO_PRESET and wanted != BRATS_PRESET:
            wanted = AUTO_PRESET
        if current != wanted and not (wanted in PRESET_2D and current in PRESET_2D):
            self.preset.setCurrentText(wanted)  # applies the preset's defaults
        else:
            self.patch_size.setValue(min(self.patch_size.value(), self._largest_patch()))
        self.describe_start()

    def _spatial_dims(self, preset=None) -> int:
        """The preset's; under auto, the input-layout rule's for the image (as the CLI's)."""
        preset = preset or self.preset.currentText()
        image = self.image_combo.value
        if preset == AUTO_PRESET:
            return layouts.guess_spatial_dims(spatial_shape(image)) if image is not None else 2
        return self.presets.get(preset, {}).get("spatial_dims", 2)

    def _largest_patch(self) -> int:
        """The image's smallest extent (over the model's axes), in steps of 16."""
        image = self.image_combo.value
        shape = spatial_shape(image) if image is not None else ()
        dims = self._spatial_dims()
        if len(shape) < dims:
            return self.patch_size.maximum()
        return max(16, min(shape[-dims:]) // 16 * 16)

    def _preset_changed(self, preset: str):
        """The preset's defaults, made small on a CPU (no CUDA device here); under auto, the
        fields the plan fills say "planned" (the user may still set them)."""
        values = self.presets.get(preset, {})
        on_gpu = self.cuda_devices > 0
        spatial_dims = self._spatial_dims(preset)
        for field in self.planned_fields.values():
            field.setSpecialValueText(left_text(preset))
        self.base_channels.setItemText(0, left_text(preset))
        # bf16 where the hardware has it: every GPU of the field, CPUs with AVX512-BF16/AMX
        self.amp.setCurrentText("bf16" if on_gpu or _cpu_has_fast_bf16() else "off")
        if preset == AUTO_PRESET:
            for field in self.planned_fields.values():
                leave_to_plan(field)
            self.base_channels.setCurrentIndex(0)
            return
        self.lr.setValue(float(values.get("lr", 1e-4)))
        self.batch_size.setValue(int(values.get("batch_size", 4)) if on_gpu
                                 else (2 if spatial_dims == 3 else 4))
        small = 8 if spatial_dims == 3 else 16
        self.base_channels.setCurrentIndex(0 if on_gpu else self.base_channels.findData(small))
        patch = int((values.get("patch_size") or [128])[0])
        if not on_gpu:
            patch = min(patch, 64 if spatial_dims == 3 else 128)
        self.patch_size.setValue(min(patch, self._largest_patch()))

    def set_init_from(self, run_or_name) -> None:
        """Start from a built-in model (its name) or fine-tune from a run (its weights and
        its training set, with its settings)."""
        self.start_from.set(run_or_name)

    def describe_start(self, *_):
        """Say under *Start from* what the built-in model is, or why it does not fit."""
        self.start_from.describe(self._spatial_dims())

    def _start_from_builtin(self, _name: str) -> None:
        """A built-in model: the auto preset, whose plan takes the model's network, size and
        normalisation (its weights fit only those) and a fine-tuning learning rate."""
        if self.preset.currentText() != AUTO_PRESET:
            self.preset.setCurrentText(AUTO_PRESET)
        self.base_channels.setCurrentIndex(0)  # planned

    def _start_from_run(self, run_dir: Path) -> None:
        """Fine-tuning: take the source run's preset, model size and patch size."""
        config_path = run_dir / runs.CONFIG
        if not config_path.is_file():
            return
        try:
            config = engine.TrainConfig.from_yaml(config_path)
        except Exception as exc:  # noqa: BLE001 - a damaged config only loses the defaults
            show_warning(f"cannot read {config_path}: {one_line(exc)}")
            return
        if config.preset in self.presets:
            self.preset.setCurrentText(config.preset)
        index = self.base_channels.findData(config.model_options.get("base_channels"))
        if index >= 0:
            self.base_channels.setCurrentIndex(index)
        self.patch_size.setValue(int(config.patch_size[0]))

    # -- pairs ------------------------------------------------------------------------------------
    # -- the command line -------------------------------------------------------------------------
    def cli_args(self, preset, run_dir, samples, init_from=None,
                 spatial_dims=None) -> list[str]:
        """The CLI options for the current fields (the widget's only link to training): the
        fields the user set, not those left to the plan or preset; minutes or steps."""
        spatial_dims = spatial_dims or self._spatial_dims(preset)
        args = ["--preset", preset, "--data", str(run_dir / runs.DATA), "--out", str(run_dir)]
        for option in SHOWN:
            field = self.option_fields[option.name]
            if self.train_for.counts(option.name) and not is_planned(field):
                value = field_value(option, field)
                if option.name in PLANNED_SWITCHES and not value:  # off, whatever the plan
                    args += ["--set", f"{option.name}=false"]
                else:
                    args += option_args(option, value, spatial_dims)
        if self.train_for.by_steps.isChecked():
            # validation and checkpoints ten times a run, whatever its length (timed to the
            # minutes, the CLI sets them itself)
            every = max(1, self.steps.value() // 10)
            args += ["--val-every", str(every), "--checkpoint-every", str(every),
                     "--set", f"log_every={min(10, every)}"]
        if self.objects.apart():  # the written masks hold the objects' ids
            args += ["--instances", "boundary"]
        else:  # the written masks mark unpainted pixels (unknown mode) with IGNORE_CLASS
            args += ["--ignore-value", str(IGNORE_CLASS)]
        if self.base_channels.currentData() is not None:
            args += ["--base-channels", str(self.base_channels.currentData())]
        if self.gpus.value() > 1:
            args += ["--nproc", str(self.gpus.value())]
        if init_from is not None:
            args += ["--init-from", str(init_from)]
        if self.holdout.isChecked() and samples >= 2:
            args += ["--fold", "0", "--folds", str(min(5, samples))]
        return args

    # -- file dialogs -----------------------------------------------------------------------------
    def _browse_run_folder(self):
        folder = QFileDialog.getExistingDirectory(self, "Run folder (new or empty)",
                                                  str(runs.default_runs_root()))
        if folder:
            self.run_folder.setText(folder)
