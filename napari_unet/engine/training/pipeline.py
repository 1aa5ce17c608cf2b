"""Training batches on their way to the device.

The host does only what must happen on the host: it cuts each step's windows from the (often
memory-mapped) images in their stored dtype (uint8, int16, ...; masks as uint8) into pinned
memory, one or two steps ahead of the device, in a background thread. The training thread
starts the copy of step k+1 (``non_blocking``, on a side CUDA stream) while step k runs, then
normalises and augments on the device. Random draws stay on a CPU generator per (seed, step),
so a run is the same on CPU whether or not the work moved, resumes exactly, and N processes
equal one process with N times the batch.

On a CPU, windows of images held in memory are cut in the training thread when the step asks
for them (cut_ahead): there is no copy to overlap, the CPU's cores run the step, and a thread
made each step wait for the GIL while it cut the next batch. Images read from disk (memory
maps, lazy arrays) keep the thread on a CPU too, so that the reads overlap the step.

Why a thread and not a ``DataLoader`` with worker processes: one thread cutting windows is
already more than twice what an H100 consumes (benchmarks/pipeline.py), numpy copies release
the GIL, and a thread shares the memory maps, starts in no time, needs no pickling, costs no
extra process per DDP rank and stops cleanly with the run (cancel, SIGINT, an error, the end).
"""
from __future__ import annotations

import contextlib
import queue
import threading

import numpy as np
import torch

from ..data.normalization import NormStats, normalize_tensor
from ..data.patches import PatchSampler

THREAD_NAME = "napari-unet-batches"
_END = object()


def transfer_dtype(dtypes) -> np.dtype:
    """The dtype windows travel in: the images' own where torch has it, else the nearest."""
    dtype = np.result_type(*dtypes)
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if dtype == np.float64:
        return np.dtype(np.float32)
    if dtype in (np.uint32, np.uint64):
        return np.dtype(np.int64)
    return dtype


def cut_batch(sampler: PatchSampler, step: int, pin: bool = False, out=None):
    """(images (B, C, *input) in their stored dtype, masks (B, *output) uint8) of a step,
    cut straight into (pinned) tensors: the whole of the host's work for a batch. `out`, a
    former batch (x, y) that nothing uses any more, is filled instead of new memory: fresh
    pages cost more than the copy (a 128^3 x 4 volume: 15 ms of page faults, 3 ms of copy)."""
    dtype = torch.from_numpy(np.zeros(0, transfer_dtype(im.dtype for im in sampler.images))).dtype
    x_shape = (sampler.batch_size, sampler.images[0].shape[0], *sampler.input_size)
    y_shape = (sampler.batch_size, *sampler.output_size)
    if out is not None and out[0].shape == x_shape and out[0].dtype == dtype:
        x, y = out
    else:
        x = torch.empty(x_shape, dtype=dtype, pin_memory=pin)
        y = torch.empty(y_shape, dtype=torch.uint8, pin_memory=pin)
    x_host, y_host = x.numpy(), y.numpy()
    with sampler.lock:  # a live run's mask update waits for the batch, and the batch for it
        for i, (index, start) in enumerate(sampler.plan(step)):
            sampler.read_window(index, start, x_host[i], y_host[i])
    return x, y


class HostBatches:
    """Cuts the batches of `steps` in a background thread, at most `depth` ahead.

    ``get()`` returns the next step's batch; an exception raised while cutting is raised
    there, unchanged. ``recycle(x, y)`` hands back a batch nothing uses any more, whose memory
    a later batch then reuses. ``close()`` stops and joins the thread (a context manager)."""

    def __init__(self, sampler: PatchSampler, steps, pin: bool = False, depth: int = 2):
        self._queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._free = queue.SimpleQueue()  # batches handed back for reuse
        self._thread = threading.Thread(target=self._run, args=(sampler, steps, pin),
                                         name=THREAD_NAME, daemon=True)
        self._thread.start()

    def _run(self, sampler, steps, pin):
        try:
            for step in steps:
                try:
                    out = self._free.get_nowait()
                except queue.Empty:
                    out = None
                if not self._put((step, *cut_batch(sampler, step, pin, out))):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread
            self._put(exc)
            return
        self._put(_END)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self):
        """(step, x, y) of the next step."""
        while True:
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the batch thread ended without a batch") from None
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def recycle(self, x, y):
        self._free.put((x, y))

    def close(self):
        self._stop.set()
        while True:  # free a producer blocked on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def cut_ahead(sampler: PatchSampler, device: torch.device) -> bool:
    """Whether the batches are cut ahead in a thread: for a GPU (the copies overlap the
    step) and for images read from disk (memory maps, lazy arrays: the reads overlap the
    step). Not for a CPU's in-memory images: nothing to overlap, and the thread's hand-over
    of the GIL cost each step more than cutting (issue 35: 0.45-0.65 ms against 0.15 ms for
    the 64x64 batch of 2 of benchmarks/pipeline.py's overhead row)."""
    return device.type != "cpu" or not all(type(image) is np.ndarray
                                           for image in sampler.images)


class InlineBatches:
    """HostBatches' interface without a thread: ``get()`` cuts the next step's batch then
    and there, into the memory of the batch handed back by ``recycle``."""

    def __init__(self, sampler: PatchSampler, steps, pin: bool = False):
        self._sampler, self._steps, self._pin = sampler, iter(list(steps)), pin
        self._free = None

    def get(self):
        """(step, x, y) of the next step; StopIteration after the last."""
        step = next(self._steps)
        out, self._free = self._free, None
        return (step, *cut_batch(self._sampler, step, self._pin, out))

    def recycle(self, x, y):
        self._free = (x, y)

    def close(self):
        self._steps = iter(())


class DeviceBatches:
    """The batches of `steps` on `device`, each copy started one step ahead.

    ``next()`` returns the raw (x, y) of the next step on the device; ``start_next()``, called
    once a step's work is queued, starts copying the following batch on a side CUDA stream, so
    that the copy overlaps the step that runs (on a CPU there is nothing to copy)."""

    def __init__(self, sampler: PatchSampler, steps, device: torch.device, depth: int = 2):
        self.device = device
        cuda = device.type == "cuda"
        self.host = HostBatches(sampler, steps, pin=cuda, depth=depth) \
            if cut_ahead(sampler, device) else InlineBatches(sampler, steps)
        self._stream = torch.cuda.Stream(device) if cuda else None
        self._ahead = None
        self._used = None  # on a CPU: the batch handed out last, reused once the next is asked

    def _start_copy(self):
        step, x, y = self.host.get()
        if self._stream is None:
            return step, x, y
        with torch.cuda.stream(self._stream):
            return (step, x.to(self.device, non_blocking=True),
                    y.to(self.device, non_blocking=True))

    def next(self):
        """(step, x, y): the next step's raw batch on the device (for a CUDA device, ready
        for work queued on the current stream from now on)."""
        if self._used is not None:  # CPU work is synchronous: that step is over
            self.host.recycle(*self._used)
            self._used = None
        step, x, y = self._ahead if self._ahead is not None else self._start_copy()
        self._ahead = None
        if self._stream is None:
            self._used = (x, y)
        else:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._stream)
            x.record_stream(current)  # allocated on the side stream, used on this one
            y.record_stream(current)
        return step, x, y

    def start_next(self):
        """Start copying the next step's batch (call it once the current step is queued)."""
        if self._stream is not None and self._ahead is None:
            with contextlib.suppress(StopIteration):
                self._ahead = self._start_copy()

    def close(self):
        self.host.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def prepare(x, y, norm: NormStats, augment, generator: torch.Generator, offset: int,
            global_batch: int, mem_format):
    """Normalise and augment a raw batch where it is (the training device): (x float32 in
    `mem_format`, y int64). The draws come from `generator` on the CPU."""
    x = normalize_tensor(x, norm, channel_dim=1)
    x, y = augment(x, y, generator, offset=offset, global_batch=global_batch)
    return x.contiguous(memory_format=mem_format), y.long()
