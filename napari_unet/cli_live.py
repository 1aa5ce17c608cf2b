"""`napari_unet train --live`: a live run driven by files (engine.train_live).

The --masks files (a file, or a folder of them) are watched: a file whose modification time
or size changed, and stayed so for one more poll, is read again and sent to the run as that
sample's new mask (a file that cannot be read yet, half-written by a tool that does not write
atomically, is tried again at the next poll). `--predict PATH` is predicted every
`--predict-every` seconds (5 by default; longer where the prediction takes more than a third
of the time) into the run's latest files, RUN/predictions/NAME_labels.tif (classes) and
NAME_probabilities.tif, replaced atomically each time; each refresh prints a ViewPredicted
event (JSON with --events jsonl) with the step, the time and the path. Ctrl-C (SIGINT) or
SIGTERM stops the run as the Stop button does: the run folder is a normal one and the exit
status 0; a second one cancels at once (130). Another process (the Train widget) may also send
mask regions and views through RUN/live_inbox/ (napari_unet.live_inbox), read at each poll.
"""
from __future__ import annotations

import dataclasses
import queue
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from napari_unet import engine, live_inbox, runs
from napari_unet.cli_progress import printer
from napari_unet.errors import ConfigError, DataError
from napari_unet.io import input_files, read_image, write_tif

DEFAULT_EVERY = 5.0  # seconds between refreshed views
POLL_S = 0.5  # how often the mask files are looked at


def check_live_args(args) -> None:
    """What `train --live` (or --predict-every) asks that cannot work, one line each, before
    anything is read or written."""
    every = args.predict_every
    if not args.live:
        if every is not None:
            raise ConfigError(f"--predict-every {every:g} refreshes a live run's prediction: "
                              "add --live, or leave it out")
        return
    if every is not None and not every > 0:
        raise ConfigError(f"--predict-every {every:g}: give the seconds between refreshed "
                          "views, > 0 (e.g. 5)")
    if every is not None and not args.predict:
        raise ConfigError("--predict-every refreshes the prediction of --predict PATH: add "
                          "--predict IMAGE")
    if not (args.images and args.masks) or args.data or args.sample:
        raise ConfigError("--live watches the --masks files: give --images P --masks P "
                          "(a file each, or a folder each)")
    if args.steps is not None:
        raise ConfigError("--live trains until stopped (Ctrl-C) or --minutes: leave out "
                          "--steps")
    if args.nproc != 1 or args.nnodes is not None:
        raise ConfigError("--live trains in one process: leave out --nproc / --nnodes")
    if args.evaluate:
        raise ConfigError("--live trains on all that is painted, with no validation fold: "
                          "score it after with napari_unet evaluate")
    if args.minutes is not None and not args.minutes > 0:
        raise ConfigError(f"--minutes {args.minutes:g}: give the live run's budget in "
                          "minutes, > 0, or leave it out (it runs until stopped)")
    if args.unlabeled is None:  # painted strokes: what is not painted is unknown
        args.unlabeled = "ignore"


def cmd_train_live(args, planned_config, make_run_dir, predict_into_run) -> int:
    """Train live until stopped or --minutes; then predict --predict once more (as train)."""
    started = time.monotonic()
    run_dir = Path(args.out)
    made = not run_dir.exists()
    config, dataset = planned_config(args, started)
    view = _view(args, dataset, config)
    watcher = MaskWatcher(args.masks, dataset.names, run_dir)
    control = engine.LiveControl()
    if view is not None:
        control.set_view(view)
    show = printer(args.events)
    make_run_dir(run_dir)
    deadline = started + args.minutes * 60.0 if args.minutes else None
    events = engine.train_live(config, dataset, run_dir=run_dir, control=control,
                               every=args.predict_every or DEFAULT_EVERY,
                               resume=args.resume, deadline=deadline)
    handlers = _stop_on_signals(control)
    watcher.start(control)
    try:
        for event in events:
            for message in watcher.messages():
                show(message)
            if isinstance(event, engine.ViewPredicted) and view is not None:
                event = _write_view(control, run_dir, args.predict, event)
            show(event)
    except BaseException:
        if made and not runs.RunFolder(run_dir).last.exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        watcher.stop()
        events.close()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    if view is not None:
        predict_into_run(args, run_dir)
    return 0


def _view(args, dataset, config):
    """--predict's image, checked against the training images (channels, dimensions)."""
    if not args.predict:
        return None
    try:
        input_files(args.predict)
        image = read_image(args.predict)
        engine.view_image(image, config.spatial_dims, dataset.in_channels)
    except DataError as exc:
        raise DataError(f"--predict {args.predict}: {str(exc).splitlines()[0]}") from None
    return image


def _write_view(control, run_dir, source, event):
    """The view's labels and probabilities into RUN/predictions (replaced atomically); the
    event with the probabilities' path."""
    _, done, _ = control.latest()
    labels, probabilities = runs.prediction_paths(run_dir, source)
    labels.parent.mkdir(parents=True, exist_ok=True)
    write_tif(probabilities, done.probabilities, overwrite=True)
    write_tif(labels, done.labels, overwrite=True)
    return dataclasses.replace(event, path=str(probabilities))


def _stop_on_signals(control) -> dict:
    """SIGINT / SIGTERM: the first stops the run (a normal end), a second cancels it."""
    def stop(signum, frame):
        if control.stopped:
            raise KeyboardInterrupt
        print("napari_unet: stopping the live run (again to cancel at once)", file=sys.stderr)
        control.stop()

    return {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}


class MaskWatcher:
    """Polls the mask files and sends each changed one to a live run (a background thread).
    ``messages()``: the warnings meanwhile (a file that does not fit its samples), as
    engine Message events."""

    def __init__(self, masks, names, run_dir=None):
        self.run_dir = run_dir  # its live_inbox: what another process sends (live_inbox.py)
        masks = Path(masks)
        # mask file -> [sample index]: one, or a stack's slices; folders pair by name
        self.samples = {} if masks.is_dir() else {masks: list(range(len(names)))}
        for path in sorted(p for p in masks.iterdir() if p.is_file()) if masks.is_dir() else []:
            stem = path.name.split(".")[0]
            indices = [i for i, name in enumerate(names)
                       if name in (stem, path.stem) or name.startswith(f"{stem}[")]
            if indices:
                self.samples[path] = indices
        self.seen = {path: _signature(path) for path in self.samples}  # what was read
        self.pending: dict = {}  # path -> signature seen changed once (debounce)
        self._messages = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = None

    def start(self, control) -> None:
        self._thread = threading.Thread(target=self._run, args=(control,), daemon=True,
                                        name="napari-unet-mask-watcher")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def messages(self) -> list:
        out = []
        while not self._messages.empty():
            out.append(self._messages.get())
        return out

    def _run(self, control):
        while not self._stop.wait(POLL_S):
            self.poll(control)

    def poll(self, control) -> None:
        """Send every file changed and then unchanged for one poll (keep trying one that
        cannot be read yet), and what came in the run's inbox."""
        if self.run_dir is not None:
            for kind, message in live_inbox.read_messages(self.run_dir):
                if kind == live_inbox.VIEW:
                    control.set_view(message["image"], live_inbox.region_of(message["region"]),
                                     int(message.get("key", -1)))
                else:
                    control.update_mask(int(message["index"]), message["values"],
                                        tuple(int(o) for o in message["offset"]))
        for path, indices in self.samples.items():
            signature = _signature(path)
            if signature == self.seen[path] or signature is None:
                self.pending.pop(path, None)
                continue
            if self.pending.get(path) != signature:  # changed: read once it holds still
                self.pending[path] = signature
                continue
            try:
                mask = read_image(path, mmap=False)
            except Exception:  # noqa: BLE001 - half-written by its tool: the next poll
                continue
            self._send(control, path, indices, mask)
            self.seen[path] = signature
            self.pending.pop(path, None)

    def _send(self, control, path, indices, mask):
        if len(indices) > 1 and (mask.ndim < 3 or mask.shape[0] != len(indices)):
            self._warn(f"{path.name}: a mask of shape {mask.shape} for a stack of "
                       f"{len(indices)} images: left out")
            return
        for k, index in enumerate(indices):
            control.update_mask(index, mask[k] if len(indices) > 1 else mask)

    def _warn(self, text):
        self._messages.put(engine.Message("warning", text))


def _signature(path):
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
