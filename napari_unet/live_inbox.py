"""A live run's inbox: mask regions and views that another process (the Train widget) sends to
a `train --live` child, as small files in RUN/live_inbox/ (numpy only: no torch, no Qt).

Each message is one ``CLOCK-SEQUENCE-PID-KIND.npz`` file, written atomically (a temporary name
starting with ".", then renamed), read in name order (the sequence number) and removed by the
child (cli_live.MaskWatcher):

- ``send_mask(run_dir, index, values, offset=None)``: sample `index`'s new paint, raw values,
  the whole mask or only the changed region at `offset` (one start per spatial axis).
- ``send_view(run_dir, image, region=None, key=-1)``: predict `image` (its `region`: slices of
  the spatial axes, None: all) from the next refresh on; `key` comes back in each
  ViewPredicted of it (the widget: the slice index).
"""
from __future__ import annotations

import itertools
import os
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

from .runs import LIVE_INBOX

MASK, VIEW = "mask", "view"
_counter = itertools.count()
_lock = threading.Lock()


def inbox(run_dir) -> Path:
    return Path(run_dir) / LIVE_INBOX


def send_mask(run_dir, index: int, values, offset=None) -> Path:
    values = np.asarray(values)
    offset = np.zeros(values.ndim, np.int64) if offset is None else np.asarray(offset, np.int64)
    return _send(run_dir, MASK, index=np.int64(index), values=values, offset=offset)


def send_view(run_dir, image, region=None, key: int = -1) -> Path:
    image = np.asarray(image)
    bounds = np.asarray([[s.start or 0, -1 if s.stop is None else s.stop] for s in region],
                        np.int64) if region is not None else np.zeros((0, 2), np.int64)
    return _send(run_dir, VIEW, image=image, region=bounds, key=np.int64(key))


def _send(run_dir, kind, **arrays) -> Path:
    folder = inbox(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with _lock:  # in the order sent: the system's monotonic clock, then a sequence number
        path = folder / f"{time.monotonic_ns():020d}-{next(_counter):08d}-{os.getpid()}-{kind}.npz"
    scratch = folder / f".{path.name}"
    with open(scratch, "wb") as f:
        np.savez(f, **arrays)
    os.replace(scratch, path)
    return path


def read_messages(run_dir):
    """[(kind, dict of arrays)] of the messages waiting, oldest first; each is removed once
    read. A file that cannot be read is left for the next call."""
    folder = inbox(run_dir)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(p for p in folder.iterdir() if p.suffix == ".npz"
                       and not p.name.startswith(".")):
        try:
            with np.load(path) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
            continue
        kind = path.stem.rsplit("-", 1)[-1]
        path.unlink(missing_ok=True)
        out.append((kind, arrays))
    return out


def region_of(bounds) -> tuple | None:
    """The slices of a view's region as send_view stored them (None: all of it)."""
    if not len(bounds):
        return None
    return tuple(slice(int(start), None if stop < 0 else int(stop)) for start, stop in bounds)
