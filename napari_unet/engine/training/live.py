"""A live run: training that takes new paint while it runs and shows what it has learnt.

    control = LiveControl()
    control.set_view(image)                        # what to predict (a region: region=...)
    for event in train_live(config, images, masks, run_dir=..., control=control, every=5.0):
        ...   # Started, Progress, MasksUpdated, ViewPredicted, CheckpointSaved, Message, Finished

    # from any thread, while it runs:
    control.update_mask(index, values)             # sample `index`'s mask, raw values, whole,
    control.update_mask(index, values, offset)     # ... or a region at `offset`
    control.set_view(image, region=(slice(..), slice(..)))   # predict this next
    control.stop()                                 # ends the run: a normal run folder

Masks are read by the run's mask rule (``--unlabeled ignore``: 0 is unknown, the painted
background is ``background_value``); an update is in the sampler before the next step starts
(``MasksUpdated``: how long it took), erased paint is unknown again, the optimiser and its
state go on. No paint yet (or all erased): the run waits. The classes are fixed when the run
starts (at least 2); paint of a class beyond them is left out, with a warning. A run that
starts from weights (``init_from``: a built-in model or a run; ``resume``) predicts its view at
once, painted or not, and shows it while it waits for paint.

Every `every` seconds (or 3 x what a prediction takes, if more: the view costs at most a third
of the time) the view is predicted with the current weights (``ViewPredicted``; the arrays:
``control.latest()``). The run ends on ``stop()``, on closing the generator (a checkpoint of
the last whole step, as ``train``) or at `deadline` (time.monotonic()); it then keeps its
config with the steps done, ``checkpoints/last.pt`` and the masks painted
(``data/images`` + ``data/masks``, classes, IGNORE_CLASS unknown): resume, predict, export and
"Add to training set" take it as any run.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

import numpy as np

from ...choices import IGNORE_CLASS
from ...errors import ConfigError, DataError
from ...io import write_tif
from ...masks import rule_of
from ...runs import CONFIG, DATA, LAST
from ..data.dataset import Dataset, masks_to_classes
from ..data.layout import prepare_image
from ..data.resolution import downsample_labels
from ..events import CheckpointSaved, MasksUpdated, Message, Progress, ViewPredicted
from ..prediction.predict import PredictionDone, predict_with_model, run_to_end
from .loop import _finish, _Run
from .pipeline import DeviceBatches
from .setup import as_dataset, check_objects_start
from .steps import ThroughputWindow

LIVE_STEPS = 10_000_000  # a live run's steps while it runs: it ends on stop or its budget
IDLE_S = 0.05  # how long a run with nothing painted waits for news at a time
SHARE = 3.0  # a view's period is at least SHARE x its prediction's time
VIEW_TILE = 512  # a padded network predicts the view in tiles of up to this side
IMAGES, MASKS = "images", "masks"  # RUN/data/ (the training set's folders)


# -- the handle ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LiveView:
    """What a live run predicts: an image as the data's (a 2D model: a 2D image or one slice)
    and the region of it to show (slices of its spatial axes; None: all of it)."""

    image: object
    region: tuple | None = None
    key: int = -1  # the face's name for it, carried by ViewPredicted.view


class LiveControl:
    """The thread-safe handle of a live run, for the face that drives it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._news = threading.Event()
        self._stop = threading.Event()
        self._updates: list = []
        self._view: LiveView | None = None
        self._view_version = 0  # counts set_view calls: a new view is predicted next
        self._latest = None

    def update_mask(self, index: int, values, offset=None) -> None:
        """New paint for sample `index`: its whole mask (raw values), or the region `values`
        covers from `offset` (one start per spatial axis)."""
        with self._lock:
            self._updates.append((int(index), np.array(values), offset, time.monotonic()))
        self._news.set()

    def set_view(self, image, region=None, key: int = -1) -> None:
        """Predict `image` (its `region`, a tuple of slices) from the next refresh on; `key`:
        the face's name for this view (e.g. a slice index), in each ViewPredicted of it."""
        with self._lock:
            self._view = LiveView(image, region, int(key))
            self._view_version += 1
        self._news.set()

    def stop(self) -> None:
        self._stop.set()
        self._news.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def latest(self):
        """(ViewPredicted, PredictionDone of the view's region, region) of the last refresh,
        or None before the first."""
        with self._lock:
            return self._latest

    def _take_updates(self) -> list:
        with self._lock:
            updates, self._updates = self._updates, []
            return updates

    def _current_view(self):
        with self._lock:
            return self._view, self._view_version

    def _keep(self, latest) -> None:
        with self._lock:
            self._latest = latest

    def _wait(self, seconds: float) -> None:
        self._news.wait(seconds)
        self._news.clear()


# -- the run -------------------------------------------------------------------------------------
def live_config(config):
    """A live run's config: steps until stopped, a constant learning rate (the data change
    under it: no schedule fits), no validation fold (it trains on all that is painted)."""
    if config.fold is not None:
        raise ConfigError(f"a live run trains on every painted image: leave out --fold "
                          f"{config.fold}")
    return replace(config, steps=LIVE_STEPS, lr_schedule="constant", minutes=None)


def live_dataset(images, masks, config) -> Dataset:
    """The data as a Dataset whose masks the run may change (copies); masks with no paint
    yet are fine."""
    dataset = as_dataset(images, masks, config, checked=False)
    return Dataset(list(dataset.images), [np.array(mask, np.uint8) for mask in dataset.masks],
                   list(dataset.names), dataset.spatial_dims, dataset.spacing,
                   notes=list(dataset.notes))


def train_live(config, images=None, masks=None, *, run_dir, control: LiveControl,
               every: float = 5.0, resume: bool = False, init_from=None,
               deadline: float | None = None):
    """A live run; a generator of events (see the module docstring)."""
    if not every > 0:
        raise ConfigError(f"a live run's view period is {every} s: give seconds > 0")
    config = live_config(config)
    start = init_from if init_from is not None else config.init_from
    check_objects_start(config, start, resume)
    run = _Run(config, live_dataset(images, masks, config), None, None, None, run_dir, resume,
               live=True)
    if run.dist.enabled:
        raise ConfigError("a live run trains in one process: leave out --nproc")
    run.build_training(resume, start)
    run.batches = None
    state = _LiveState(run, control, every, deadline, trained=bool(resume or start))
    yield run.started()
    for note in filter(None, [run.amp_note, run.head_note, *run.notes]):
        yield Message("warning" if note != run.head_note else "info", note)
    try:  # no SIGINT handler of its own: a face stops it with control.stop() (the CLI on
        yield from state.steps()  # SIGINT), so that a step is never cut
    except (GeneratorExit, KeyboardInterrupt):
        if run.losses.pending_are_finite():
            state.keep_run()
        raise
    finally:
        if run.batches is not None:
            run.batches.close()
    state.keep_run(save=False)
    yield from _finish(run)


class _LiveState:
    """Where a live run stands: its masks' paint, its view's refreshes, its clock."""

    def __init__(self, run: _Run, control: LiveControl, every: float, deadline,
                 trained: bool = False):
        self.run, self.control, self.every, self.deadline = run, control, every, deadline
        self.started = time.monotonic()
        # weights that know something (a built-in model, a run): their view at once, paint
        # or not; from nothing: after the first period's steps
        self.trained = trained
        self.next_view = self.started + (0.0 if trained else every)
        self.period, self.last_began, self.last_took, self.seen_view = every, 0.0, 0.0, 0
        self.seen_step = -1  # the step of the last view: no new view of the same weights
        self.classes = max(2, run.dataset.num_classes)
        self.warned: set = set()  # samples warned about paint beyond the classes
        self.notes: list = []  # warnings of the updates being applied
        self.labelled = sum(run.sampler.labelled_pixels(i) for i in range(len(run.sampler.masks)))

    # -- the steps
    def steps(self):
        run, control = self.run, self.control
        window, step, waiting = ThroughputWindow(), run.start_step, False
        while not control.stopped:
            yield from self.apply_updates()
            if self.deadline is not None and time.monotonic() > self.deadline:
                yield Message("warning", f"the time is up: the live run ends at step {run.done}")
                return
            if not self.labelled:
                if not waiting:
                    yield Message("info", "nothing is painted: the live run waits for paint")
                waiting = True
                view = self.refresh() if self.trained else None  # the start's view
                if view is not None:
                    yield view
                control._wait(IDLE_S)
                continue
            waiting = False
            if self.trained and self.seen_step < 0:  # the start's view before any step
                view = self.refresh()
                if view is not None:
                    yield view
                    continue  # stopped meanwhile, or paint came: as at every turn
            if run.batches is None:
                run.batches = DeviceBatches(run.sampler, range(step, LIVE_STEPS), run.device)
            yield from self.one_step(step, window)
            step += 1
            yield from self.apply_updates()  # paint that came during the step: before a view
            view = self.refresh()
            if view is not None:
                yield view

    def one_step(self, step, window):
        run, config = self.run, self.run.config
        run.step(step)
        done = run.done
        saving = done % config.checkpoint_every == 0
        stopping = False
        if saving or time.monotonic() >= self.next_view or run.losses.due(
                done, run.start_step, LIVE_STEPS):
            stopping = run.losses.read(run.dist, run.cancel.requested)
        img_s = window.add(config.batch_size)
        lr = run.optimizer.param_groups[0]["lr"]
        yield Progress(step=done, total=0, loss=run.losses.last, lr=lr, img_s=img_s)
        if done % config.log_every == 0:
            run.folder.log_progress(done, run.losses.last, lr, img_s)
        if stopping or run.cancel.stop_now:
            raise KeyboardInterrupt
        if saving:
            path = run.save(LAST, done)
            if path:
                yield CheckpointSaved(str(path), done)

    # -- the masks
    def apply_updates(self):
        updates = self.control._take_updates()
        if not updates:
            return
        changed, rule = set(), rule_of(self.run.config)
        for index, values, offset, _ in updates:
            try:
                self.apply(index, masks_to_classes(values, **rule), offset)
                changed.add(index)
            except DataError as exc:
                yield Message("warning", f"a mask update was left out: {exc}")
        if changed:
            self.labelled = sum(self.run.sampler.labelled_pixels(i)
                                for i in range(len(self.run.sampler.masks)))
            for note in self.notes:
                yield Message("warning", note)
            self.notes = []
            yield MasksUpdated(step=self.run.done, samples=tuple(sorted(changed)),
                               labelled=self.labelled,
                               seconds=time.monotonic() - min(u[3] for u in updates))

    def apply(self, index, classes, offset):
        """Sample `index`'s mask (class indices) whole or from `offset`, in the training set
        and in the sampler's windows."""
        run = self.run
        if not 0 <= index < len(run.train_set.masks):
            raise DataError(f"sample {index} does not exist (the run has "
                            f"{len(run.train_set.masks)}): send the index of a training image")
        classes = classes.astype(np.uint8)
        beyond = (classes >= self.classes) & (classes != IGNORE_CLASS)
        if beyond.any():
            highest = int(classes[beyond].max())
            classes[beyond] = IGNORE_CLASS
            if index not in self.warned:
                self.warned.add(index)
                self.notes.append(
                    f"sample {index}: paint of class {highest} is "
                    f"left out: the live run learns the {self.classes} classes it started with "
                    f"(stop, then start a new run with them painted)")
        mask = run.train_set.masks[index]
        start = (0,) * mask.ndim if offset is None else tuple(int(o) for o in offset)
        if classes.shape != mask.shape and offset is None:
            raise DataError(f"a whole mask of shape {classes.shape} for sample {index} of "
                            f"shape {mask.shape}: send the whole mask or a region and its offset")
        if len(start) != mask.ndim or any(o < 0 or o + s > m for o, s, m in
                                          zip(start, classes.shape, mask.shape)):
            raise DataError(f"a region of shape {classes.shape} at {start} leaves sample "
                            f"{index}'s mask {mask.shape}: send a region inside it")
        mask[tuple(slice(o, o + s) for o, s in zip(start, classes.shape))] = classes
        if run.config.resample > 1:  # the windows are cut at the lower resolution: all of it
            run.sampler.update_mask(index, downsample_labels(mask, run.config.resample,
                                                             run.config.regions))
        else:
            run.sampler.update_mask(index, classes, start)

    # -- the view
    def refresh(self):
        """ViewPredicted when a view is due (its period is up, or a new view came and the
        last prediction's share allows it), else None."""
        view, version = self.control._current_view()
        if view is None or (version == self.seen_view and self.run.done == self.seen_step):
            return None  # no view, or this view of these weights is shown
        due = self.next_view
        if version != self.seen_view and self.last_took:  # a new view: next, once the
            # last prediction's share of the time is over
            due = min(due, self.last_began + SHARE * self.last_took)
        began = time.monotonic()
        if began < due:
            return None
        self.seen_view, self.seen_step = version, self.run.done
        done, bounds = self.predict(view)
        took = time.monotonic() - began
        self.period = max(self.every, SHARE * took)
        self.next_view, self.last_began, self.last_took = began + self.period, began, took
        event = ViewPredicted(step=self.run.done, time=time.monotonic() - self.started,
                              seconds=took, period=self.period, labelled=self.labelled,
                              view=view.key, region=bounds)
        self.control._keep((event, done, view.region))
        return event

    def predict(self, view: LiveView):
        """(the view's region predicted with the weights as they are (EMA's, if any), with
        some context around it; the region's bounds, flat: start, stop of each axis, or ()
        for the whole image)."""
        run, config = self.run, self.run.config
        image = view_image(view.image, config.spatial_dims, run.dataset.in_channels)
        crop, inner = _with_context(image.shape[1:], view.region, run.input_size)
        model = run.model if run.ema is None else run.ema.module
        tile = config.val_tile_size or list(run.input_size)
        if not config.val_tile_size and tuple(run.input_size) == tuple(run.output_size):
            # a padded network takes any multiple of its size: the crop in one tile (up to
            # VIEW_TILE a side), not many training windows that overlap
            multiple = getattr(model, "size_multiple", 16)
            tile = [max(t, min(VIEW_TILE, -(-(c.stop - c.start) // multiple) * multiple))
                    for t, c in zip(tile, crop)]
        try:
            done = run_to_end(predict_with_model(
                model, image[(slice(None),) + crop], run.norm, head=run.head,
                tile_size=tile,
                overlap=config.val_overlap, batch_size=max(1, config.batch_size),
                amp=config.amp, device=run.device, threshold=config.threshold,
                resample=config.resample,
                channels_last=config.channels_last and model.spatial_dims == 2))
        finally:
            model.train()
        bounds = () if view.region is None else tuple(
            int(v) for c, i in zip(crop, inner) for v in (c.start + i.start, c.start + i.stop))
        return PredictionDone(np.asarray(done.probabilities)[(Ellipsis,) + inner],
                              np.asarray(done.labels)[inner]), bounds

    # -- the end
    def keep_run(self, save: bool = True) -> None:
        """The run as a finished one: its config with the steps done, the masks painted and
        (`save`) the last checkpoint (else _finish writes it)."""
        run = self.run
        # the rule of the masks kept in data/masks (classes, IGNORE_CLASS unknown), as the
        # Train widget's training sets: --resume --data RUN/data reads them as they are
        run.config = replace(run.config, steps=max(1, run.done), unlabeled="background",
                             ignore_value=IGNORE_CLASS, foreground_value=None)
        if not run.dist.is_main:
            return
        (run.folder.path / CONFIG).write_text(run.config.to_yaml())
        data = run.folder.path / DATA
        (data / IMAGES).mkdir(parents=True, exist_ok=True)
        (data / MASKS).mkdir(parents=True, exist_ok=True)
        for name, image, mask in zip(run.train_set.names, run.train_set.images,
                                     run.train_set.masks):
            stem = _safe(name)
            if not (data / IMAGES / f"{stem}.tif").exists():
                write_tif(data / IMAGES / f"{stem}.tif", np.asarray(image)[0]
                          if image.shape[0] == 1 else np.asarray(image))
            write_tif(data / MASKS / f"{stem}.tif", mask, overwrite=True)
        if save and run.done > run.start_step:
            run.save(LAST, run.done)


def view_image(image, spatial_dims: int, in_channels: int):
    """The channel-first view of what a live run predicts, or a one-line DataError: an image
    as the training images (a 2D model: one 2D image, not a stack)."""
    prepared = prepare_image(image, spatial_dims, in_channels)
    if prepared.ndim != spatial_dims + 1:
        raise DataError(f"a live view of shape {tuple(np.shape(image))} is a stack: a "
                        f"{spatial_dims}D model's view is one {spatial_dims}D image (give one "
                        "slice)")
    return prepared


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "sample"


def _with_context(shape, region, input_size):
    """(the crop to predict: the region and up to a quarter window around it, the region
    within that crop), as tuples of slices."""
    region = region or tuple(slice(None) for _ in shape)
    if len(region) != len(shape):
        raise DataError(f"a view region of {len(region)} axes for an image of {len(shape)}: "
                        "give one slice per spatial axis")
    crop, inner = [], []
    for axis, (size, window) in enumerate(zip(shape, input_size)):
        start, stop, _ = region[axis].indices(size)
        if stop <= start:
            raise DataError(f"the view region {region[axis]} of axis {axis} is empty "
                            f"(size {size}): give a region inside the image")
        margin = int(window) // 4
        low, high = max(0, start - margin), min(size, stop + margin)
        crop.append(slice(low, high))
        inner.append(slice(start - low, stop - low))
    return tuple(crop), tuple(inner)

