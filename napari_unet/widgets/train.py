"""Train widget: (image, labels) layer pairs -> a training run in a child process.

Start writes the pairs as TIF files into ``RUN/data/images`` and ``RUN/data/masks`` (the
generic layout the engine's ``load_dataset`` reads; for 2D stacks only the painted slices;
masks as classes by the rule the CLI uses, :func:`napari_unet.training_set.mask_classes`)
and runs ``napari_unet train --data RUN/data --out RUN ... --events jsonl`` through
:class:`~napari_unet.widgets.runner.TrainingRunner`. The fields are in :mod:`.train_form`;
this module starts, cancels and shows the events: a progress bar (also in napari's activity
dock), a live loss and Dice curve, notifications; at the end it can predict the image.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QProgressBar,
    QPushButton,
)

from napari_unet import runs
from napari_unet.choices import AUTO_PRESET
from napari_unet.training_set import (
    CONTEXT,
    copy_training_set,
    pair_count,
    write_training_pairs,
)
from napari_unet.widgets import (
    ChannelGroup,
    StatusLabel,
    UserError,
    check_painted,
    fixed_column,
    one_line,
    scrolling_layout,
    show_error,
    show_info,
    show_warning,
    stop_on_window_close,
    training_array,
)
from napari_unet.widgets.curve import CurveWidget
from napari_unet.widgets.prediction_job import PredictionJob
from napari_unet.widgets.runner import RunWatcher, TrainingRunner, run_registry
from napari_unet.widgets.train_fields import PlanView, minutes_text, remaining_seconds
from napari_unet.widgets.train_form import TrainForm
from napari_unet.widgets.train_live import LiveButtons


def present(image, viewer) -> bool:
    """Whether the layer (every layer of the group) is still in the viewer."""
    return image.present_in(viewer) if isinstance(image, ChannelGroup) \
        else image in viewer.layers


class TrainWidget(LiveButtons, TrainForm):
    """Pick (image, labels) pairs and options, press Start; Cancel stops the child cleanly."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.runner = TrainingRunner()
        # the run shown, its watcher (re-attached runs), its prediction and last events
        self.run_dir = self.watcher = self.prediction = self.finished_event = None
        self._progress = self._first_image = self._latest_progress = None
        self._timing = None  # (monotonic time, step) of the run's first Progress event
        self.live = None  # the LiveSession while a live run goes
        self._arrived = 0.0  # when the latest Progress event came
        self._ui_timer = QTimer(self)
        self._ui_timer.setSingleShot(True)
        self._ui_timer.setInterval(200)
        self._ui_timer.timeout.connect(self._refresh_progress)

        # what a newcomer needs stays in view (data, preset, time, Start, progress; the curve
        # once a run is shown); the plan and the other options scroll below it
        controls = self._controls()
        self.essentials = fixed_column(self.data_box, controls, self.progress, self.status,
                                       self.curve)
        self.curve.setVisible(False)
        layout = scrolling_layout(self, fixed=self.essentials)
        layout.addWidget(self.plan_view)
        for box in self.boxes:
            layout.addWidget(box)
        layout.addStretch(1)
        self._connect_runner()
        self._idle_progress()
        stop_on_window_close(self, self.shutdown)
        self._preset_changed(self.preset.currentText())
        self._image_changed()
        self.describe_labels()

    def _controls(self):
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self._live_controls()
        attach_button = QPushButton("Re-attach…")
        attach_button.setToolTip("show the curves of a run folder; follow it if it still runs")
        attach_button.clicked.connect(self._browse_attach)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.live_button, self.live_every,
                       self.cancel_button, attach_button):
            buttons.addWidget(button)
        self.progress = QProgressBar()
        self.progress.setFormat("step %v / %m")
        self.steps.valueChanged.connect(self._idle_progress)
        self.train_for.by_steps.toggled.connect(self._idle_progress)
        self.status = StatusLabel()  # rare messages; per-step figures go into the progress bar
        self.curve = CurveWidget()
        self.plan_view = PlanView()
        self.preset.currentTextChanged.connect(self._clear_plan)
        return buttons

    def _clear_plan(self, preset):
        if not self.runner.is_running():
            self.plan_view.clear(preset)

    def _idle_progress(self, *_):
        """Before the first run: the steps to go, or, timed to minutes, not known yet."""
        if self.run_dir is None and not self.runner.is_running():  # nothing shown yet
            by_steps = self.train_for.by_steps.isChecked()
            self.progress.setRange(0, self.steps.value() if by_steps else 1)
            self.progress.setValue(0)
            self.progress.setFormat("step %v / %m" if by_steps else "steps: timed at the start")

    def _connect_runner(self):
        for name in ("planned", "started", "progress", "validation", "checkpoint", "message",
                     "finished", "failed", "cancelled", "exited", "view_predicted"):
            getattr(self.runner, name).connect(getattr(self, f"_on_{name}"))

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
            check_painted([labels.data for _, labels in pairs], self.mask_rule())
            init_from = self.start_from.init_from(preset, spatial_dims)
            run_dir = self._prepare_run_folder()
        except UserError as exc:
            show_error(str(exc))
            return
        data_dir = run_dir / runs.DATA
        already = pair_count(data_dir)
        try:
            # a run's training set is trained on too (a built-in model's name is no Path)
            copied = copy_training_set(init_from, data_dir) if isinstance(init_from, Path) else 0
            report = write_training_pairs(
                data_dir, [(image.name, training_array(image, spatial_dims), labels.data)
                           for image, labels in pairs],
                spatial_dims, **self.mask_rule())
        except Exception as exc:  # noqa: BLE001 - disk full, permissions: tell, keep the viewer
            show_error(f"cannot write the training data to {data_dir}: {one_line(exc)}")
            return
        self._report_written(report, copied, spatial_dims)
        if already:
            show_info(f"{data_dir} already held {already} training pair(s): "
                      f"they are trained on too")
        samples = pair_count(data_dir)
        args = self.cli_args(preset, run_dir, samples, init_from, spatial_dims)
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
        if report["cropped"]:
            show_info(f"saved the painted part (with {CONTEXT} pixels around) of "
                      f"{', '.join(report['cropped'])}: a lazily read image is not copied whole")
        if report["merged"]:
            show_info(f"labels of {', '.join(report['merged'])} have many values (instances): "
                      f"trained as one foreground class")
        if copied:
            show_info(f"added {copied} training pair(s) of the fine-tuned run"
                      + (f" ({report['duplicates']} of the chosen slices were among them)"
                         if report["duplicates"] else ""))

    def _begin(self, run_dir):
        from napari.utils import cancelable_progress

        self.run_dir = run_dir
        self.finished_event = None
        self._latest_progress = None
        self._timing = None
        by_steps = self.train_for.by_steps.isChecked()
        total = self.steps.value() if by_steps else 0  # timed runs: known at Started
        self.progress.setFormat("step %v / %m")
        self.curve.clear(total or 1)
        self.curve.setVisible(True)
        self.progress.setRange(0, 0)  # busy until the child reports Started
        self.plan_view.clear(self.preset.currentText())
        planning = "planning from the data, " if self.preset.currentText() == AUTO_PRESET else ""
        timing = "" if by_steps else "timing the first steps, "
        self.status.setText(f"{planning}{timing}starting training in {run_dir}")
        self.start_button.setEnabled(False)
        self.live_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._close_progress()
        self._progress = cancelable_progress(total=total,
                                             desc="napari UNet: training")
        run_registry().add(run_dir)

    def cancel(self):
        """Stop the run: the child saves a checkpoint (the run can be fine-tuned/resumed)."""
        if self.live is not None:  # a live run's Stop: it ends normally
            self.toggle_live()
        elif self.runner.is_running():
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
    def _on_planned(self, event):
        self.plan_view.show_plan(event)
        if event.seconds_per_step:
            self.train_for.seconds_per_step = event.seconds_per_step

    def _on_started(self, event):
        if self.live is not None:  # no end known: the curve's axis follows the steps
            event = dataclasses.replace(event, total_steps=0)
        self._set_total(event.total_steps)
        self.progress.setValue(event.start_step)
        validation = (f"{event.val_samples} validation" if event.val_samples
                      else "no validation (no Dice curve)")
        self.status.setText(f"training on {event.device}: {event.train_samples} training and "
                            f"{validation} samples")

    def _set_total(self, total):
        """The last step on the bar, the curve and napari's activity dock: at the start, and
        again where a run fitted to minutes re-fits its steps (Progress.total changes)."""
        if self._progress is not None:
            with contextlib.suppress(AttributeError, RuntimeError):
                self._progress.total = total
        self.progress.setRange(0, total)
        self.curve.total = total

    def _on_progress(self, event):
        # small models send dozens of steps a second: keep the data now, repaint a few times
        # a second (repainting per event would keep the GUI thread busy)
        self._latest_progress = event
        self._arrived = time.monotonic()
        if self._timing is None:
            self._timing = (self._arrived, event.step)
        self.curve.add_loss(event.step, event.loss, repaint=False)
        if not self._ui_timer.isActive():
            self._ui_timer.start()

    def _refresh_progress(self):
        event = self._latest_progress
        if event is None:
            return
        if self.live is not None:  # no end known: a full bar, the step and the loss
            self.progress.setRange(0, max(1, event.step))
            self.progress.setFormat(f"live: step %v   loss {event.loss:.4f}   "
                                    f"{event.img_s:.1f} img/s")
        else:
            if event.total != self.progress.maximum():  # the steps were re-fitted
                self._set_total(event.total)
            self.progress.setFormat(f"step %v / %m   loss {event.loss:.4f}   "
                                    f"{event.img_s:.1f} img/s{self._time_left(event)}")
        self.progress.setValue(event.step)
        self.curve.update()
        progress = self._progress  # (its update may run the end's events, which drop it)
        if progress is not None:
            progress.update(event.step - progress.n)
            if progress.is_canceled and not self.runner.cancel_requested:
                self.cancel()  # Cancel pressed in napari's activity dock

    def _time_left(self, event) -> str:
        """"   ~N min left", from the time between the first step reported and this one
        (validations included); "" before two steps."""
        since, first = self._timing
        left = remaining_seconds(event, first, self._arrived - since)
        if left is None:
            return ""
        self.train_for.seconds_per_step = (self._arrived - since) / (event.step - first)
        return f"   ~{minutes_text(left)} left" if event.step < event.total else ""

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
        if self.live is not None:  # its view is shown; the run predicts as any run
            return
        if self.predict_at_end.isChecked() and image is not None and present(image, self.viewer):
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
        checkpoint = runs.find_checkpoint(run_dir, required=False) if run_dir else None
        where = f"; checkpoint {checkpoint}" if checkpoint else ""
        show_info(f"training cancelled{where}")
        self.status.setText(f"cancelled{where}")

    def _on_exited(self, code):
        self._end_ui()
        self.train_for.describe()  # an estimate in steps from this run's speed

    def _end_ui(self):
        if self._ui_timer.isActive():
            self._ui_timer.stop()
            self._refresh_progress()
        if self.live is not None:
            self.live.close()
            self.live = None
        self.live_button.setText("Live")
        self.start_button.setEnabled(True)
        self.live_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        self._close_progress()

    def _close_progress(self):
        if self._progress is not None:
            progress, self._progress = self._progress, None
            with contextlib.suppress(KeyError, RuntimeError):
                progress.close()

    # -- re-attach ----------------------------------------------------------------------------------------
    def attach(self, run_dir) -> None:
        """Show a run folder's curves; follow the run if its child still trains."""
        try:
            record = runs.read_run(run_dir)
        except (FileNotFoundError, OSError) as exc:
            show_error(one_line(exc))
            return
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        self.run_dir = record.run_dir
        total = record.total_steps or record.last_step
        self.curve.clear(total)
        self.curve.setVisible(True)
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
            step = self.curve.loss[-1][0]
            if step > self.progress.maximum():  # a run fitted to minutes re-fitted its steps
                self._set_total(max(step, runs.configured_steps(self.run_dir) or 0))
            self.progress.setValue(step)
        self.curve.update()

    def _on_watched_end(self, checkpoint):
        self.cancel_button.setEnabled(self.runner.is_running())
        self.status.setText(f"the run ended; checkpoint {checkpoint or 'none'}")
        self.watcher = None

    def _browse_attach(self):
        folder = QFileDialog.getExistingDirectory(self, "Run folder to re-attach",
                                                  str(runs.default_runs_root()))
        if folder:
            self.attach(folder)
