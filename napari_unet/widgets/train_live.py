"""The Train widget's Live: a ``napari_unet train --live`` child that learns while the user paints.

Live writes the chosen image and the labels as they are into a scratch folder and starts the
child on them (``--images IMG --masks MASK --live``, unpainted pixels unknown, the widget's
other options as Start gives them) with ``--predict VIEW --predict-every S``, VIEW being the
slice in view. Then:

- paint (the labels layer's paint / data events) is debounced (``DEBOUNCE_MS``); the slice in
  view is compared with what was last sent and only the changed box travels, by
  :func:`napari_unet.live_inbox.send_mask` (erased paint too);
- moving to another slice sends that slice as the view (:func:`~napari_unet.live_inbox.send_view`,
  the slice index as its key); zoomed in on a large image, only the visible field of view
  (the image layer's ``corner_pixels``, rounded out to ``FIELD_STEP``) is predicted: panning or
  zooming sends the new field (debounced as paint);
- each ViewPredicted event reads RUN/predictions/VIEW_{probabilities,labels}.tif into ONE
  probability layer and ONE labels layer, updated in place (the user's layer is never written),
  on the slice and in the box the event says it predicted (not where the user is now);
- Stop is the runner's cancel (SIGINT): the child ends normally and leaves a normal run folder;
- the image or labels layer deleted (or reshaped) during the run: a warning, and the run stops.

:class:`LiveButtons` (a mixin of the Train widget) holds the button and the refresh period;
:class:`LiveSession` one run's layers, paint and views.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QDoubleSpinBox, QPushButton

from napari_unet import lazy, live_inbox, runs
from napari_unet.io import read_image, write_tif
from napari_unet.widgets import ChannelGroup, UserError, one_line, show_error, show_warning
from napari_unet.widgets.start_from import NO_START

DEBOUNCE_MS = 1000  # paint is sent this long after the first stroke event not sent yet
STOP_WAIT_MS = 10_000  # Stop waits this long at most for the child to take the last paint
VIEW_NAME = "live_view.tif"
FIELD_SHARE = 0.75  # a visible field of view under this share of the plane: only it is predicted
FIELD_STEP = 32  # the field's box is rounded out to multiples of this (small pans send nothing)
# options of Start's command line a live run does not take (option -> it has a value)
LEFT_OUT = {"--data": True, "--steps": True, "--val-every": True, "--checkpoint-every": True,
            "--fold": True, "--folds": True, "--ignore-value": True, "--instances": True,
            "--nproc": True}


def live_args(args) -> list[str]:
    """Start's command line without what a live run refuses or sets itself."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in LEFT_OUT:
            skip = LEFT_OUT[arg]
        else:
            out.append(arg)
    return out


class LiveSession(QObject):
    """One live run of a Train widget: the files it starts from, paint out, views back."""

    def __init__(self, widget, image, labels, run_dir: Path):
        super().__init__(widget)
        self.widget, self.viewer = widget, widget.viewer
        self.image, self.labels, self.run_dir = image, labels, Path(run_dir)
        data = np.asarray(image.data)
        if data.ndim not in (2, 3) or image.rgb:
            raise UserError(f"Live trains on a grey 2D image or a stack of 2D slices; "
                            f"'{image.name}' is {data.shape}: use Start")
        self.stack = data.ndim == 3
        self.sent = np.array(labels.data, copy=True)  # the paint the child has
        self.shape = self.sent.shape
        self.scratch = Path(tempfile.mkdtemp(prefix="napari_unet_live_"))
        try:
            for folder in ("images", "masks"):
                (self.scratch / folder).mkdir()
            self.image_path = write_tif(self.scratch / "images" / "live.tif", data)
            self.mask_path = write_tif(self.scratch / "masks" / "live.tif", self.sent)
            self.view_path = self.scratch / VIEW_NAME
            self.slice = self.first_slice = self.current_slice()
            self.region = None  # the field sent: all of the slice (--predict's view)
            write_tif(self.view_path, self._view_image(self.slice))
        except BaseException:
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise
        self.probabilities_layer = self.labels_layer = None
        self.refreshes = 0  # views shown
        self.ended = False
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(DEBOUNCE_MS)
        self.timer.timeout.connect(self.flush)
        self.stop_timer = QTimer(self)
        self.stop_timer.setSingleShot(True)
        self.stop_timer.setInterval(STOP_WAIT_MS)
        self.stop_timer.timeout.connect(self._interrupt)
        self._connections = [(labels.events.paint, self._changed),
                             (labels.events.data, self._changed),
                             (self.viewer.dims.events.current_step, self._changed),
                             (self._camera().events.center, self._changed),
                             (self._camera().events.zoom, self._changed),
                             (self.viewer.layers.events.removed, self._removed)]
        for emitter, slot in self._connections:
            emitter.connect(slot)
        if self.current_region() is not None:  # zoomed in already: that field, soon
            self.timer.start()

    def args(self, every: float) -> list[str]:
        rule = self.widget.mask_rule()
        args = ["--images", str(self.image_path), "--masks", str(self.mask_path), "--live",
                "--predict", str(self.view_path), "--predict-every", f"{every:g}",
                "--unlabeled", "ignore",
                "--background-value", str(self.widget.unpainted.background.value())]
        if rule.get("foreground_value") is not None:
            args += ["--foreground-value", str(rule["foreground_value"])]
        return args

    # -- the slice in view ------------------------------------------------------------------
    def current_slice(self) -> int:
        if not self.stack:
            return 0
        step = self.viewer.dims.current_step
        return int(np.clip(step[len(step) - 3] if len(step) >= 3 else 0, 0, self.shape[0] - 1))

    def _camera(self):
        """The viewer's camera (napari >= 0.9: viewer.scene.camera; before: viewer.camera)."""
        scene = getattr(self.viewer, "scene", None)
        return getattr(scene, "camera", None) or self.viewer.camera

    def current_region(self):
        """The visible field of view of the image plane, ((y0, y1), (x0, x1)) rounded out to
        FIELD_STEP, or None when it shows most of the plane (FIELD_SHARE) or is not known."""
        plane = self.shape[-2:]
        corners = np.asarray(getattr(self.image, "corner_pixels", np.zeros((2, 0))))
        if corners.shape[-1] < 2:
            return None
        low, high = corners[0, -2:], corners[1, -2:] + 1  # corner_pixels: inclusive
        box = tuple((max(0, int(lo) // FIELD_STEP * FIELD_STEP),
                     min(size, -(-int(hi) // FIELD_STEP) * FIELD_STEP))
                    for lo, hi, size in zip(low, high, plane))
        area = np.prod([hi - lo for lo, hi in box])
        if any(hi <= lo for lo, hi in box) or area >= FIELD_SHARE * np.prod(plane):
            return None
        return box

    def _view_image(self, index):
        data = self.image.data
        return np.asarray(data[index] if self.stack else data)

    # -- paint and views out ----------------------------------------------------------------
    def _changed(self, *_):
        if not self.ended and not self.timer.isActive():
            self.timer.start()  # a second after the first change: a user who keeps
            # painting still has the paint in the run every second

    def flush(self) -> bool:
        """Send the changed box of the slice in view, and the view if it moved (whether
        paint was sent). A labels layer reshaped stops the run."""
        if self.ended:
            return False
        sent = False
        try:
            data = self.labels.data
            if tuple(data.shape) != self.shape:
                self.stop(f"labels '{self.labels.name}' changed shape to {tuple(data.shape)}: "
                          f"the live run stopped")
                return False
            index = self.current_slice()
            if index != self.slice:  # paint on the slice left before it was sent
                sent = self._send_paint(self.slice, np.asarray(data[self.slice]))
            sent = self._send_paint(index, np.asarray(data[index] if self.stack else data)) \
                or sent
            region = self.current_region()
            if index != self.slice or region != self.region:
                self.slice, self.region = index, region
                live_inbox.send_view(
                    self.run_dir, self._view_image(index),
                    None if region is None else tuple(slice(lo, hi) for lo, hi in region),
                    key=index)
        except OSError as exc:  # disk full, the run folder gone: say so, the viewer lives
            self.stop(f"cannot send the paint to the live run: {one_line(exc)}")
        return sent

    def _send_paint(self, index, now):
        before = self.sent[index] if self.stack else self.sent
        changed = np.nonzero(now != before)
        if not changed[0].size:
            return False
        low = [int(axis.min()) for axis in changed]
        box = tuple(slice(lo, int(axis.max()) + 1) for lo, axis in zip(low, changed))
        region = np.array(now[box], copy=True)
        live_inbox.send_mask(self.run_dir, index if self.stack else 0, region, low)
        before[box] = region
        return True

    # -- views back -------------------------------------------------------------------------
    def show_view(self, event):
        """A ViewPredicted event: the latest files into the two live layers."""
        if self.ended:
            return
        labels_path, probabilities_path = runs.prediction_paths(self.run_dir, self.view_path)
        try:
            probabilities = np.asarray(read_image(probabilities_path, mmap=False))
            labels = np.asarray(read_image(labels_path, mmap=False))
        except Exception as exc:  # noqa: BLE001 - a file gone: the next refresh
            show_warning(f"cannot read the live view: {one_line(exc)}")
            return
        if probabilities.ndim == labels.ndim + 1:  # (classes, ...): all but background
            probabilities = 1.0 - probabilities[0]
        # the slice and box this view is of (the user may have moved since)
        index = event.view if event.view >= 0 else self.first_slice
        bounds = tuple(event.region)
        box = tuple(slice(bounds[k], bounds[k + 1]) for k in range(0, len(bounds), 2)) \
            if bounds else tuple(slice(0, size) for size in self.shape[-2:])
        if labels.shape != tuple(b.stop - b.start for b in box) or not \
                0 <= index < (self.shape[0] if self.stack else 1):
            return  # the files are of a later view already: its own event shows them
        self.probabilities_layer = self._put(self.probabilities_layer, probabilities, index, box,
                                             f"{self.image.name} live probabilities", "image")
        self.labels_layer = self._put(self.labels_layer, labels.astype(np.uint8), index, box,
                                      f"{self.image.name} live prediction", "labels")
        self.refreshes += 1
        self.widget.status.setText(f"live: view {self.refreshes} at step {event.step} "
                                   f"({event.time:.0f} s), next in {event.period:.0f} s")

    def _put(self, layer, plane, index, box, name, kind):
        shape = self.shape
        if layer is not None and layer in self.viewer.layers and layer.data.shape == shape:
            data = np.array(layer.data, copy=True)
        else:
            data = np.zeros(shape, plane.dtype)
            layer = None
        data[((index,) if self.stack else ()) + box] = plane
        if layer is None:  # once (again only if the user deleted it)
            meta = {"name": name, "scale": self.image.scale, "translate": self.image.translate}
            if kind == "image":
                layer = self.viewer.add_image(data, colormap="magma", opacity=0.5,
                                              contrast_limits=(0.0, 1.0), **meta)
            else:
                layer = self.viewer.add_labels(data, opacity=0.4, **meta)
            layers = self.viewer.layers  # under the user's labels: the strokes stay in view
            with contextlib.suppress(ValueError):
                layers.move(layers.index(layer), layers.index(self.labels))
            layers.selection.active = self.labels  # the brush stays on
        else:
            layer.data = data
        return layer

    # -- the end --------------------------------------------------------------------------
    def _removed(self, event):
        if event.value is self.labels or event.value is self.image:
            self.stop(f"layer '{event.value.name}' was deleted: the live run stopped "
                      f"(its run folder is kept)")

    def stop(self, warning: str | None = None):
        """Send the paint not sent yet and, once the child has it (its next MasksUpdated, at
        most STOP_WAIT_MS), SIGINT the child (a normal end). Again: SIGINT now."""
        sent = False
        if not self.ended and warning is None:
            self.timer.stop()
            sent = self.flush()
        self.ended = True
        self.timer.stop()
        if warning:
            show_warning(warning)
        if sent:  # the run saves the paint it has: let it take the last strokes first
            self.widget.runner.masks_updated.connect(self._interrupt)
            self.stop_timer.start()
        else:
            self._interrupt()

    def _interrupt(self, *_):
        self.stop_timer.stop()
        with contextlib.suppress(TypeError, RuntimeError):
            self.widget.runner.masks_updated.disconnect(self._interrupt)
        self.widget.runner.cancel()

    def close(self):
        """The child ended: let go of the layers' events and the scratch files."""
        self.ended = True
        self.timer.stop()
        self.stop_timer.stop()
        with contextlib.suppress(TypeError, RuntimeError):
            self.widget.runner.masks_updated.disconnect(self._interrupt)
        for emitter, slot in self._connections:
            with contextlib.suppress(Exception):
                emitter.disconnect(slot)
        shutil.rmtree(self.scratch, ignore_errors=True)


class LiveButtons:
    """The Train widget's Live button and refresh period (a mixin of TrainWidget: its runner,
    its fields, ``_begin`` and ``_end_ui``)."""

    def _live_controls(self):
        self.live_button = QPushButton("Live")
        self.live_button.setToolTip("train while you paint: the view is predicted every few "
                                    "seconds; press again (Stop) to end")
        self.live_button.clicked.connect(self.toggle_live)
        self.live_every = QDoubleSpinBox()
        self.live_every.setRange(1.0, 600.0)
        self.live_every.setValue(5.0)
        self.live_every.setSuffix(" s")
        self.live_every.setToolTip("Live: seconds between refreshed views (longer where a "
                                   "prediction takes more than a third of the time)")

    def toggle_live(self):
        """Live: start a live run on the chosen image and labels; pressed again: Stop."""
        if self.live is not None:
            self.status.setText("stopping the live run: saving it…")
            self.live.stop()
            return
        if self.runner.is_running():
            show_error("a training run is already going: cancel it first")
            return
        preset = self.preset.currentText()
        try:
            pairs = self._layer_pairs()
            if len(pairs) != 1 or isinstance(pairs[0][0], ChannelGroup):
                raise UserError("Live trains on one image layer and its labels: choose one "
                                "pair (the list of pairs is for Start)")
            spatial_dims = self._check_pairs(pairs, preset, empty_ok=True)
            if spatial_dims != 2:
                raise UserError("Live trains a 2D model (slice by slice): choose a 2D preset")
            init_from = self.start_from.init_from(preset, spatial_dims)
            if init_from in (None, NO_START) and not lazy.any_nonzero(pairs[0][1].data):
                raise UserError(f"labels '{pairs[0][1].name}' are empty: paint some objects "
                                f"with the brush, or choose a model in Start from (its view "
                                f"shows at once)")
            run_dir = self._prepare_run_folder()
            image, labels = pairs[0]
            session = LiveSession(self, image, labels, run_dir)
        except UserError as exc:
            show_error(str(exc))
            return
        except OSError as exc:
            show_error(f"cannot write the live run's files: {one_line(exc)}")
            return
        args = live_args(self.cli_args(preset, run_dir, 1, init_from, spatial_dims))
        args += session.args(self.live_every.value())
        self.live = session
        self._first_image = image
        self._begin(run_dir)
        self.live_button.setText("Stop")
        self.live_button.setEnabled(True)
        self.status.setText(f"live: starting in {run_dir}; paint, the view refreshes every "
                            f"{self.live_every.value():g} s")
        try:
            self.runner.start(args, run_dir)
        except OSError as exc:
            self._end_ui()
            show_error(f"cannot start training: {one_line(exc)}")

    def _on_view_predicted(self, event):
        if self.live is not None:
            try:
                self.live.show_view(event)
            except Exception as exc:  # noqa: BLE001 - a layer gone mid-update: the viewer lives
                show_warning(f"cannot show the live view: {one_line(exc)}")
