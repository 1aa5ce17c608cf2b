"""Prediction of a volume spread over Dask workers (dask.distributed), block by block.

The volume is cut into blocks (their own chunks of the output); each block is a task that a
worker runs: the model is loaded once per worker process, the block's probabilities are
predicted from the whole image's tiles that reach it (``regions.predict_region``: the same
tiles, weights and order as one process, so the result equals single-process prediction to
rounding), and written with their labels into a scratch Zarr store beside the target, then
marked done. Memory per worker is that of a block and its tiles, whatever the volume's size.
A failed block is retried (``retries``); a cancelled or killed run keeps the blocks it wrote,
and ``resume`` predicts only the others. When every block is done the store is written once
more as an OME-Zarr image with its pyramid and labels group (``zarr_files.write_prediction``,
renamed into place when complete) and the scratch store is removed.

The cluster: a ``LocalCluster`` of ``workers`` single-threaded processes with a memory limit
each, or any running scheduler by address (``tcp://host:8786``; e.g. dask-jobqueue's
``SLURMCluster(...).scheduler_address``); its workers must see the same files.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import resource
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import ConfigError, OutOfMemory, OutputExistsError
from ...io import read_image
from ...zarr_files import blocks_store, write_prediction
from ..data.layout import prepare_image
from ..data.normalization import NormStats, normalize, stats_for_image
from ..events import Message, TilesDone
from ..export.loader import load_checkpoint
from . import regions
from .objects import make_objects, objects_wanted
from .predict import _spacing, _tile_size
from .sliding_window import BLENDS, _check_options
from .tiles import plan_axes

DONE = "done"


@dataclass(frozen=True)
class VolumeJob:
    """What every block task needs (small: it travels to the workers)."""

    run: str
    image: str
    store: str
    block: tuple
    tile_size: tuple
    overlap: float
    tta: str
    amp: str
    device: str
    batch_size: int
    threads: int
    stats: dict
    threshold: float | None = None  # None: the run's own


def block_regions(shape, block) -> list[tuple[slice, ...]]:
    """The blocks of a spatial `shape`, row-major."""
    starts = [range(0, n, b) for n, b in zip(shape, block)]
    return [tuple(slice(s, min(s + b, n)) for s, b, n in zip(corner, block, shape))
            for corner in itertools.product(*starts)]


def _name(region) -> str:
    return "_".join(str(part.start) for part in region)


@functools.lru_cache(maxsize=2)
def _model(run: str, threads: int):
    """The checkpoint, loaded once per worker process."""
    torch.set_num_threads(max(1, threads))
    return load_checkpoint(run)


def run_block(job: VolumeJob, region) -> str:
    """Predict one block and write it (a worker's task); returns its name."""
    import zarr

    checkpoint = _model(job.run, job.threads)
    image = prepare_image(read_image(job.image), checkpoint.model.spatial_dims,
                          checkpoint.model.in_channels)
    stats = NormStats.from_dict(job.stats)
    probs = regions.predict_region(checkpoint.model, image, region, head=checkpoint.head,
                           tile_size=job.tile_size, overlap=job.overlap,
                           batch_size=job.batch_size, tta=job.tta, amp=job.amp,
                           device=job.device, preprocess=lambda raw: normalize(raw, stats))
    store = zarr.open_group(job.store, mode="r+")
    many = probs.ndim > len(region)
    store["probabilities"][(slice(None), *region) if many else region] = probs
    threshold = checkpoint.config.threshold if job.threshold is None else job.threshold
    store["labels"][region] = checkpoint.head.labels(probs, threshold)
    (Path(job.store) / DONE / _name(region)).touch()
    return _name(region)


def _prepare(run, input_path, store: Path, block, resume, options):
    """(job, regions still to do, number of blocks, the model's label head)."""
    import zarr

    checkpoint = load_checkpoint(run)
    if checkpoint.config.resample > 1:
        raise ConfigError("this run predicts at a lower resolution (resample): predict it "
                          "without --workers")
    image = prepare_image(read_image(input_path), checkpoint.model.spatial_dims,
                          checkpoint.model.in_channels)
    spatial = tuple(image.shape[1:])
    if len(block) not in (1, len(spatial)):
        raise ConfigError(f"--block {' '.join(map(str, block))}: give one size (every axis) or "
                          f"{len(spatial)}, one per axis of the {len(spatial)}D image")
    block = tuple(block) if len(block) == len(spatial) else tuple(block) * len(spatial)
    stats = stats_for_image(image, NormStats.from_dict(checkpoint.norm_stats))
    k = checkpoint.head.blended_channels
    tile = _tile_size(checkpoint, options["tile_size"])
    plan_axes(checkpoint.model, tuple(image.shape), tile, options["overlap"])  # checks them
    if resume and store.exists():
        kept = tuple(zarr.open_group(str(store), mode="r")["labels"].chunks)
        if kept != block:
            raise ConfigError(f"the blocks kept in {store} are {'x'.join(map(str, kept))}: "
                              f"resume with --block {' '.join(map(str, kept))}")
    else:
        shutil.rmtree(store, ignore_errors=True)
        group = zarr.open_group(str(store), mode="w")
        group.create_array("probabilities", shape=((k,) if k > 1 else ()) + spatial,
                           chunks=((k,) if k > 1 else ()) + block, dtype="float32")
        group.create_array("labels", shape=spatial, chunks=block, dtype="uint8")
        (store / DONE).mkdir()
    done = {path.name for path in (store / DONE).iterdir()}
    every = block_regions(spatial, block)
    regions = [r for r in every if _name(r) not in done]
    job = VolumeJob(str(Path(run).resolve()), str(Path(input_path).resolve()), str(store),
                    block, tuple(tile), options["overlap"], options["tta"], options["amp"],
                    options["device"], options["batch_size"], options["threads"],
                    stats.to_dict(), options["threshold"])
    return job, regions, len(every), checkpoint.head


def predict_volume(run, input_path, output, *, workers: int = 2, scheduler=None,
                   block=(128,), memory_limit="2GiB", resume=False, overwrite=False,
                   retries: int = 2, tile_size=None, overlap=0.25, tta="off", amp="auto",
                   device="cpu", batch_size=4, threads=1, instances=None, threshold=None):
    """Yield TilesDone(blocks done, blocks, unit "blocks") as blocks finish; the OME-Zarr
    `output` (a ``.zarr`` path) is complete when the generator ends (module docstring).
    ``instances`` (predict.make_objects; None: the run's own): the objects are made from the
    finished store block by block with halos, in this process, and written as the labels.
    Every option is checked before the scratch store is made; a run that fails or is
    cancelled before a block is done leaves nothing (one with blocks done keeps them, for
    ``resume``)."""
    from distributed import as_completed

    output = Path(output)
    if output.suffix.lower() != ".zarr":
        raise ConfigError(f"{output}: prediction over workers writes OME-Zarr: name the "
                          f"output NAME.zarr")
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output} exists: pass --overwrite to replace it")
    check_worker_options(workers, scheduler, block, memory_limit)
    _check_options(overlap, batch_size, BLENDS[0], amp, 0.5 if threshold is None else threshold)
    store = blocks_store(output)
    options = dict(tile_size=tile_size, overlap=overlap, tta=tta, amp=amp, device=device,
                   batch_size=batch_size, threads=threads, threshold=threshold)
    resumed = resume and store.exists()
    try:
        job, regions, total, head = _prepare(run, input_path, store, block, resume, options)
        how = objects_wanted(head, instances)
        done = total - len(regions)
        yield TilesDone(done, total, BLOCKS)
        with _cluster(scheduler, workers, memory_limit) as address, _client(address) as client:
            futures = [client.submit(run_block, job, region, retries=retries, pure=False)
                       for region in regions]
            try:
                for future in as_completed(futures):
                    _result(future, None if scheduler else memory_limit, job)
                    done += 1
                    yield TilesDone(done, total, BLOCKS)
            finally:
                client.cancel(futures)
    except BaseException:
        if not resumed and not any((store / DONE).glob("*")):
            shutil.rmtree(store, ignore_errors=True)  # nothing to resume: nothing left
        raise
    if how:
        yield Message("info", f"making objects ({how})")
    _finish(store, output, input_path, overwrite, head, how)


BLOCKS = "blocks"  # the unit of the progress events (TilesDone.unit)


def check_worker_options(workers, scheduler, block, memory_limit) -> None:
    """One line for each option of the workers that cannot work, before anything is made."""
    if scheduler is None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"--workers {workers}: give a number of worker processes >= 1")
    if any(int(size) < 1 for size in block) or not block:
        raise ConfigError(f"--block {' '.join(map(str, block))}: give block sizes of 1 voxel "
                          f"or more (e.g. --block 128)")
    if scheduler is None:
        parse_memory_limit(memory_limit)
    elif "://" not in str(scheduler) and ":" not in str(scheduler):
        raise ConfigError(f"--scheduler {scheduler}: give the scheduler's address with its "
                          f"port, e.g. tcp://host:8786")


def parse_memory_limit(memory_limit):
    """The bytes of a worker's --memory-limit ("2GiB", "500MB", a number of bytes), or
    "auto" (Dask's share of the machine); one line for anything else."""
    from dask.utils import parse_bytes

    if str(memory_limit).strip().lower() == "auto":
        return "auto"
    try:
        size = parse_bytes(memory_limit)
    except (ValueError, TypeError):
        size = None
    if size is None or size <= 0:
        raise ConfigError(f"--memory-limit {memory_limit}: give a size per worker such as "
                          f"2GiB or 500MB (or auto: a share of this machine's memory)")
    return size


@contextlib.contextmanager
def _client(address):
    """A dask Client of the scheduler at `address`; one line when it cannot be reached."""
    from distributed import Client

    try:
        client = Client(address)
    except (OSError, ValueError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {address} "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
                          f"check the address and that the scheduler runs") from None
    with client:
        yield client


@contextlib.contextmanager
def _cluster(scheduler, workers: int, memory_limit):
    """The scheduler's address: `scheduler`'s, else a LocalCluster's of single-threaded worker
    processes held to `memory_limit` by being restarted above it (the block is retried
    elsewhere). Dask's pausing and spilling are for data it manages: a worker paused over a
    model's memory (torch's, unmanaged) would wait forever, so they are off while it runs
    (the nanny hands its config to the workers it starts and restarts)."""
    if scheduler:
        yield scheduler
        return
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.worker.memory.target": False,
                          "distributed.worker.memory.spill": False,
                          "distributed.worker.memory.pause": False}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, memory_limit=memory_limit,
                         processes=True, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def _result(future, memory_limit, job: VolumeJob) -> None:
    """A block's result; a block that failed after its retries raises here. Workers that die
    on a block (killed by their nanny, almost always over their memory limit) are one line."""
    from distributed.scheduler import KilledWorker

    try:
        future.result()
    except KilledWorker:
        limit = f"their limit of {memory_limit}" if memory_limit else "their memory limit"
        raise OutOfMemory(
            f"the workers died predicting a block of {'x'.join(map(str, job.block))} with "
            f"tiles of {'x'.join(map(str, job.tile_size))} and batches of {job.batch_size} "
            f"(most often over {limit}): raise --memory-limit, or lower --tile-size / "
            f"--batch-size") from None


def _finish(store: Path, output: Path, input_path, overwrite, head, how=None) -> None:
    """The store as the OME-Zarr `output` (write_prediction removes the store then)."""
    import zarr

    group = zarr.open_group(str(store), mode="r+")
    labels = group["labels"]
    if how:  # objects from the whole store, block by block (objects crossing blocks: one id)
        objects = group.require_array("objects", shape=labels.shape, chunks=labels.chunks,
                                      dtype="uint32")
        labels = make_objects(group["probabilities"], labels, head, how,
                              _spacing(input_path, labels.ndim), out=objects)
    write_prediction(output, group["probabilities"], labels,
                     spacing=_spacing(input_path, labels.ndim),
                     overwrite=overwrite, chunk=max(16, min(labels.chunks)))


def peak_memory_gib() -> float:
    """This process's peak resident memory in GiB (Linux: ``ru_maxrss`` is in KiB); a worker
    runs it for the benchmark (``client.run``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
