"""The auto plan at a fixed number of steps, over seeds: the checkpoints every 100 steps scored
on any_data.py's test part (pooled foreground Dice, precision and recall of the pixels).

Issue 36's comparison of a plan change at equal steps (the same network costs the same time),
full precision (the same arithmetic on every CPU), one thread per run so that two run side by
side::

    .venv/bin/python scripts/plan_seeds.py --set dagm2007_class1 --seed 0 --steps 400
    .venv/bin/python scripts/plan_seeds.py --set dagm2007_class1 --seed 0 --steps 400 \\
        --change foreground_oversample=0.5
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import any_data  # noqa: E402

from napari_unet.engine import evaluate, load_checkpoint, plan_for_data, train  # noqa: E402
from napari_unet.engine.events import CheckpointSaved  # noqa: E402


def scores(checkpoint, test_set) -> tuple[float, float, float]:
    """(Dice, precision, recall) of the foreground pixels, pooled over the test part."""
    metrics = evaluate(load_checkpoint(checkpoint), test_set, amp="off", device="cpu",
                       per_image=True, keep_labels=True)
    predicted = np.concatenate([(image["labels"] > 0).ravel() for image in metrics["images"]])
    truth = np.concatenate([(np.asarray(mask) > 0).ravel() for mask in test_set.masks])
    overlap = int((predicted & truth).sum())
    return (2 * overlap / max(int(predicted.sum() + truth.sum()), 1),
            overlap / max(int(predicted.sum()), 1), overlap / max(int(truth.sum()), 1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="dagm2007_class1")
    parser.add_argument("--data-root", type=Path, default=any_data.DATA_ROOT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--change", action="append", default=[], metavar="KEY=VALUE",
                        help="a plan value changed (YAML value), e.g. foreground_oversample=0.5")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--score", type=int, nargs="+", metavar="STEP",
                        help="score only these steps' checkpoints (default: every 100 steps)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = any_data.load(args.set, args.data_root)
    train_idx, test_idx = any_data.parts(dataset, args.data_root / args.set)
    train_set, test_set = dataset.subset(train_idx), dataset.subset(test_idx)
    changes = {key: yaml.safe_load(value) for key, value in
               (change.split("=", 1) for change in args.change)}
    config = plan_for_data(train_set, "cpu").config(device="cpu").replace(
        steps=args.steps, minutes=None, checkpoint_every=100, val_every=10**9, seed=args.seed,
        amp="off", **changes)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        saved = []
        for event in train(config, train_set, run_dir=Path(folder) / "run"):
            if isinstance(event, CheckpointSaved):  # last.pt is overwritten: keep a copy
                copy = Path(folder) / f"step{event.step}.pt"
                shutil.copy(event.path, copy)
                saved.append((event.step, copy))
        saved.append((args.steps, Path(folder) / "run"))
        for step, checkpoint in saved:
            if args.score and step not in args.score:
                continue
            dice, precision, recall = scores(checkpoint, test_set)
            print(f"plan_seeds: set={args.set} change={','.join(args.change) or '-'} "
                  f"seed={args.seed} step={step} dice={dice:.3f} precision={precision:.3f} "
                  f"recall={recall:.3f} minutes={(time.monotonic() - started) / 60:.1f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
