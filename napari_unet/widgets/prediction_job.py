"""One prediction of an Image layer in napari's ``thread_worker``, its result as layers.

The engine's ``predict`` generator runs in the worker thread: its TilesDone events drive a
progress bar (and napari's activity dock), Cancel is ``worker.quit()``, and the final
PredictionDone comes back as a probability Image layer and an editable Labels layer placed
exactly over the image (a model of objects: the objects, one colour each). The Predict and Train widgets both use it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_unet import engine, lazy
from napari_unet.engine.events import Failed, Message, TilesDone
from napari_unet.errors import NapariUnetError
from napari_unet.widgets import (
    ChannelGroup,
    axes_of,
    channel_groups,
    layer_data,
    one_line,
    show_error,
    show_info,
    show_warning,
)


@dataclass(frozen=True)
class ModelLoaded:
    """The worker's first event: what the checkpoint's model gives (to show its result)."""

    head: engine.LabelHead  # what the outputs mean (classes or regions)
    threshold: float
    in_channels: int = 1


def _predict_events(checkpoint_path, image, options):
    """The worker's generator (runs in napari's worker thread; torch is imported there).
    `checkpoint_path`: one model's, or a list of several (an ensemble: their average).

    One stream of typed events: ModelLoaded, the engine's TilesDone / Message /
    PredictionDone, and Failed for a mistake the user can fix (one line, no traceback).
    Anything else is raised, and napari shows it with its traceback. ``options["axes"]``
    tells the engine what the layer's axes are (a channel group's (C, Z, Y, X) is a stack of
    C-channel slices under a 2D model: napari_unet.layouts).
    """
    events = None
    try:
        checkpoint = engine.load_models(checkpoint_path)
        yield ModelLoaded(checkpoint.head, float(checkpoint.config.threshold),
                          int(checkpoint.model.in_channels))
        if lazy.is_lazy(image):  # read tile by tile: the results go to scratch files too
            options = {**options, **{
                key: lazy.scratch_array(shape, dtype, key) for key, (shape, dtype)
                in engine.output_shapes(checkpoint, image, options.get("axes")).items()}}
        events = engine.predict(checkpoint, image, **options)
        yield from events
    except NapariUnetError as exc:
        yield Failed(one_line(exc))
    finally:
        if events is not None:
            events.close()  # also when the worker is quit: the engine stops between tiles


class PredictionJob:
    """One prediction in a thread_worker; adds its result layers over `image_layer`.

    `checkpoint`: a checkpoint or run, or a list of several whose probabilities are averaged
    (engine.load_models: an ensemble of one task's models).
    `on_done(job)` is called with ``job.labels_layer`` / ``job.probability_layers`` set;
    `on_progress(done, total)` per batch of tiles; `on_end(job)` always, last.
    """

    def __init__(self, viewer, checkpoint, image_layer, *, tile_size=None, overlap=0.25,
                 tta="off", device="auto", backend="auto", on_done=None, on_progress=None,
                 on_end=None):
        from napari.qt.threading import create_worker
        from napari.utils import progress

        self.viewer = viewer
        self.image_layer = image_layer
        self.checkpoint = checkpoint  # one path, or a list of several
        self.head = None  # the model's label head, from the worker's first event
        self.in_channels = None
        self.threshold = 0.5
        self.probabilities = None
        self.labels_layer = None
        self.probability_layers = []
        self.error = None
        self.cancelled = False
        self._ended = False
        self._on_done, self._on_progress, self._on_end = on_done, on_progress, on_end
        options = {"overlap": overlap, "tta": tta, "device": device, "backend": backend,
                   "axes": axes_of(image_layer),  # the layer's scale: the voxel size
                   "spacing": tuple(float(s) for s in image_layer.scale[-3:])
                   if len(image_layer.scale) >= 3 else None}
        if tile_size:
            options["tile_size"] = [int(tile_size)]
        self._progress = progress(total=0, desc=f"napari UNet: predicting {image_layer.name}")
        image = layer_data(image_layer)
        self.lazy = lazy.is_lazy(image)  # results in scratch files, not copied into memory
        models = [str(c) for c in checkpoint] if isinstance(checkpoint, (list, tuple)) \
            else str(checkpoint)
        self.worker = create_worker(_predict_events, models, image, options,
                                    _start_thread=False)
        self.worker.yielded.connect(self._on_yielded)
        self.worker.errored.connect(self._on_errored)
        self.worker.finished.connect(self._on_finished)
        self.worker.start()

    @property
    def running(self) -> bool:
        """Until the worker's last signal has been handled here (results are in)."""
        return not self._ended

    def cancel(self) -> None:
        if self.running:
            self.cancelled = True
            self.worker.quit()

    def _on_yielded(self, event):
        if isinstance(event, ModelLoaded):
            self.head, self.threshold = event.head, event.threshold
            self.in_channels = event.in_channels
        elif isinstance(event, Failed):
            self.error = event.error + self._channel_hint()
            show_error(f"prediction failed: {self.error}")
        elif isinstance(event, TilesDone):
            if self._progress.total != event.total:
                self._progress.total = event.total
            self._progress.update(event.done - self._progress.n)
            if self._on_progress:
                self._on_progress(event.done, event.total)
        elif isinstance(event, engine.PredictionDone):
            if not self.cancelled:  # a result that arrives after Cancel (or the viewer's
                self._add_layers(event)  # closing) adds nothing: layers to a closing viewer raised
        elif isinstance(event, Message):  # e.g. out of memory: retrying with fewer tiles
            (show_warning if event.level == "warning" else show_info)(event.text)

    def _channel_hint(self) -> str:
        """For a model of several input channels given one channel layer: which channel group
        to pick instead (the one this layer belongs to, else any of the right size)."""
        if not self.in_channels or self.in_channels < 2 \
                or isinstance(self.image_layer, ChannelGroup):
            return ""
        try:
            groups = [g for g in channel_groups(self.viewer) if len(g.layers) == self.in_channels]
        except RuntimeError:  # the viewer is closing
            return ""
        groups.sort(key=lambda group: self.image_layer not in group.layers)
        if not groups:
            return (f"; the model takes {self.in_channels} channels: open the image as one "
                    f"multi-channel file")
        return f"; choose '{groups[0].label}' as the image"

    def _add_layers(self, done):
        image = self.image_layer
        placement = {"scale": image.scale, "translate": image.translate}
        name = image.name
        probabilities = np.asarray(done.probabilities)
        self.probabilities = probabilities
        head = self.head
        if head is not None and head.regions:  # overlapping sigmoids, no background channel
            planes = [(probabilities[k], f"{name} probability {region}")
                      for k, region in enumerate(head.names)]
        elif head is not None and head.objects:  # background / interior / boundary
            planes = [(probabilities[k], f"{name} probability {head.names[k]}")
                      for k in range(1, probabilities.shape[0])]
        elif head is not None and head.blended_channels > 1:
            channels = range(1, probabilities.shape[0])  # class 0 is background
            planes = [(probabilities[k], f"{name} probability class {k}") for k in channels]
        else:
            planes = [(probabilities, f"{name} probabilities")]
        for data, layer_name in planes:
            self.probability_layers.append(self.viewer.add_image(
                data, name=layer_name, colormap="magma", contrast_limits=(0.0, 1.0),
                blending="additive", opacity=0.6, visible=False,
                metadata={"threshold": self.threshold}, **placement))
        if done.objects is not None:  # one colour per object, ids the user can edit
            objects = done.objects if self.lazy else np.array(done.objects, dtype=np.uint32)
            self.labels_layer = self.viewer.add_labels(objects, name=f"{name} objects",
                                                       opacity=0.6, **placement)
        else:  # a copy the user can paint on (of a lazy image: its own scratch file)
            labels = done.labels if self.lazy else np.array(done.labels, dtype=np.uint8)
            self.labels_layer = self.viewer.add_labels(labels, name=f"{name} prediction",
                                                       opacity=0.5, **placement)
        if self._on_done:
            self._on_done(self)

    @property
    def binary(self) -> bool:
        """Whether a threshold cuts the labels: binary and region models (not softmax)."""
        return self.probabilities is not None and (self.head is None or self.head.thresholded)

    def apply_threshold(self, threshold: float) -> None:
        """Re-cut the labels from the probabilities (binary models; region models: every
        region at the threshold, labels in the run's convention)."""
        if not self.binary or self.labels_layer is None:
            return
        self.threshold = threshold
        head = self.head or engine.LabelHead.for_outputs(1)
        if self.lazy:  # slab by slab into the scratch labels, never the whole volume at once
            labels = self.labels_layer.data
            lazy.map_slabs(lambda part: head.labels(part, threshold), self.probabilities,
                           labels, lead=self.probabilities.ndim - labels.ndim)
            self.labels_layer.refresh()
        else:
            self.labels_layer.data = head.labels(self.probabilities, threshold)

    def _on_errored(self, exc):
        self.error = one_line(exc)  # napari itself notifies, with the traceback

    def _on_finished(self):
        self._ended = True
        self._progress.close()
        if self.cancelled and self.labels_layer is None:
            show_info(f"prediction of {self.image_layer.name} cancelled")
        if self._on_end:
            self._on_end(self)
