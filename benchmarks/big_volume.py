"""Volumes bigger than a machine: a synthetic OME-Zarr volume predicted block by block on 1
and on 2 Dask workers (issue 24), each worker's peak memory measured.

The volume (uint8, `--gib` GiB, bright blobs on noise) is written chunk by chunk as OME-Zarr;
the model is a small 3D U-Net with seeded weights (what is measured is the machinery, not
accuracy). Each run starts a LocalCluster of single-threaded worker processes with
`--memory-limit` each, predicts with ``engine.predict_volume`` and asks every worker for its
peak resident memory (``getrusage``). Printed as

    big_volume: gib=.. workers=.. peak_rss_gib_per_worker=.. seconds=.. speedup=..

(``--one-process``: first a row of ``workers=0``, the same prediction in this process without
Dask, single-threaded: what blocks and their halos cost.)

    .venv/bin/python benchmarks/big_volume.py --gib 1 --memory-limit 2GiB
    .venv/bin/python benchmarks/big_volume.py --tiny      (the test suite)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# this folder's sparse.py would stand in for the `sparse` package that dask looks for
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from napari_unet.engine import predict_file, predict_volume, preset_config  # noqa: E402
from napari_unet.engine.checkpoint import save_checkpoint  # noqa: E402
from napari_unet.engine.prediction.workers import peak_memory_gib  # noqa: E402
from napari_unet.engine.training.setup import make_model  # noqa: E402


def make_volume(path: Path, gib: float, chunk: int = 64) -> tuple:
    """A uint8 OME-Zarr volume of about `gib` GiB (Z a quarter of Y and X), chunk by chunk."""
    import zarr
    from ome_zarr.writer import write_multiscales_metadata

    side = max(chunk, int(round((gib * 2 ** 30 * 4) ** (1 / 3) / chunk)) * chunk)
    shape = (max(chunk // 2, side // 4), side, side)
    group = zarr.open_group(str(path), mode="w")
    array = group.create_array("s0", shape=shape, chunks=(chunk,) * 3, dtype="uint8")
    rng = np.random.default_rng(0)
    grid = np.indices((chunk,) * 3).astype(np.float32)
    blob = ((((grid - chunk / 2) ** 2).sum(0) < (chunk / 4) ** 2) * 150).astype(np.uint8)
    for z in range(0, shape[0], chunk):
        for y in range(0, shape[1], chunk):
            for x in range(0, shape[2], chunk):
                block = rng.integers(0, 60, (chunk,) * 3, dtype=np.uint8) + blob
                part = block[:shape[0] - z, :shape[1] - y, :shape[2] - x]
                array[z:z + chunk, y:y + chunk, x:x + chunk] = part
    write_multiscales_metadata(group, [{"path": "s0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, 1.0, 1.0]}]}], axes="zyx")
    return shape


def make_run(folder: Path) -> Path:
    config = preset_config("volume3d", patch_size=[48], amp="off", device="cpu",
                           model_options={"base_channels": 4, "max_channels": 16})
    torch.manual_seed(0)
    model = make_model(config, 1, 2)
    save_checkpoint(folder / "run" / "checkpoints" / "best.pt", model=model, config=config,
                    norm_stats=dict(mode="zscore", low=[], high=[], mean=[60.0], std=[50.0]),
                    step=1, best_dice=0.5, data_info={"num_classes": 2, "in_channels": 1})
    return folder / "run"


def predict(run, volume, output, workers, args) -> tuple[float, float]:
    """(seconds, the largest worker's peak RSS in GiB) of one prediction."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      memory_limit=args.memory_limit, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        started = time.monotonic()
        for _ in predict_volume(run, volume, output, scheduler=cluster.scheduler_address,
                                block=(args.block,), tile_size=[48], device="cpu"):
            pass
        seconds = time.monotonic() - started
        peaks = client.run(peak_memory_gib)
    return seconds, max(peaks.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the uint8 volume")
    parser.add_argument("--memory-limit", default="2GiB", help="per worker")
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--one-process", action="store_true",
                        help="also predict in this process without Dask (one thread)")
    parser.add_argument("--tiny", action="store_true", help="the test suite's mode")
    args = parser.parse_args(argv)
    if args.tiny:
        args.gib, args.block, args.memory_limit, args.one_process = 0.0005, 32, "2GiB", True
    rows = []
    with tempfile.TemporaryDirectory(prefix="big_volume-") as folder:
        folder = Path(folder)
        shape = make_volume(folder / "volume.zarr", args.gib, chunk=32 if args.tiny else 64)
        gib = float(np.prod(shape)) / 2 ** 30
        print(f"volume {shape} uint8 = {gib:.3f} GiB; memory limit {args.memory_limit} per "
              f"worker", flush=True)
        run = make_run(folder)
        one = None
        if args.one_process:  # what blocks and halos cost: the same prediction without Dask
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as one single-threaded worker
            started = time.monotonic()
            for _ in predict_file(run, folder / "volume.zarr", folder / "out0.zarr",
                                  tile_size=[48], device="cpu", amp="off", backend="torch"):
                pass
            torch.set_num_threads(threads)
            rows.append(f"big_volume: gib={gib:.3f} workers=0 "  # 0: one process, no Dask
                        f"seconds={time.monotonic() - started:.1f}")
            print(rows[-1], flush=True)
        for workers in (1, 2):
            seconds, peak = predict(run, folder / "volume.zarr", folder / f"out{workers}.zarr",
                                    workers, args)
            one = one or seconds
            rows.append(f"big_volume: gib={gib:.3f} workers={workers} "
                        f"peak_rss_gib_per_worker={peak:.2f} seconds={seconds:.1f} "
                        f"speedup={one / seconds:.2f}")
            print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
