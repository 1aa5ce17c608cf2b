"""Weak scaling of DDP training: processes x img/s at a fixed per-process batch.

    .venv/bin/python benchmarks/scaling.py                    # CPU, gloo: 1 and 2 processes
    .venv/bin/python benchmarks/scaling.py --device cuda --nproc 1 2 4 8 --preset isbi2012

Each row is a real `napari_unet train --nproc N` run (torchrun) on synthetic data; img/s is
the mean of the last half of its Progress events (global images per second), efficiency is
img/s(N) / (N x img/s(1)).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SAMPLE = {"industrial": "dagm", "isbi2012": "em", "volume3d": "blobs3d"}
# --tiny (the test suite: 1 and 2 processes once, in seconds)
TINY = ["--steps", "2", "--batch-size", "1", "--patch-size", "32", "--base-channels", "4"]


def measure(preset, nproc, args, root: Path) -> float:
    command = [sys.executable, "-m", "napari_unet.cli", "train", "--preset", preset,
               "--sample", SAMPLE[preset], "--steps", str(args.steps), "--batch-size",
               str(args.batch_size), "--amp", args.amp, "--device", args.device,
               "--checkpoint-every", "100000", "--events", "jsonl", "--nproc", str(nproc),
               "--out", str(root / f"{preset}_{nproc}")]
    if args.patch_size:
        command += ["--patch-size", str(args.patch_size)]
    if args.base_channels:
        command += ["--base-channels", str(args.base_channels)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{preset} x{nproc} failed:\n{result.stderr[-2000:]}")
    rates = [e["img_s"] for e in map(json.loads, result.stdout.splitlines())
             if e["event"] == "Progress"]
    tail = rates[len(rates) // 2:]
    return sum(tail) / len(tail)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="industrial", choices=list(SAMPLE))
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="off")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4, help="per process")
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--tiny", action="store_true",
                        help="a check that it runs (the test suite): 2 steps of a narrow "
                             "network on small windows")
    args = parser.parse_args(argv)
    if args.tiny:  # the tiny settings win over the same options given with --tiny
        args = parser.parse_args([*(sys.argv[1:] if argv is None else argv), *TINY])
    with tempfile.TemporaryDirectory() as root:
        rows = [(n, measure(args.preset, n, args, Path(root))) for n in args.nproc]
    single = rows[0][1] / rows[0][0]
    print(f"{'processes':>9}  {'global batch':>12}  {'img/s':>8}  {'efficiency':>10}")
    for n, img_s in rows:
        print(f"{n:>9}  {n * args.batch_size:>12}  {img_s:>8.2f}  {img_s / (n * single):>10.2f}")


if __name__ == "__main__":
    main()
