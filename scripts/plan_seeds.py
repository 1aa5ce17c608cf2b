"""The auto plan at a fixed number of steps, over seeds: the checkpoints every 100 steps scored
on any_data.py's test part (pooled foreground Dice, precision and recall of the pixels).

Issue 36's comparison of a plan change at equal steps (the same network costs the same time),
full precision (the same arithmetic on every CPU), one thread per run so that two run side by
side::

    .venv/bin/python scripts/plan_seeds.py --set dagm2007_class1 --seed 0 --steps 400
    .venv/bin/python scripts/plan_seeds.py --set dagm2007_class1 --seed 0 --steps 400 \\
        --change foreground_oversample=0.5
    .venv/bin/python scripts/plan_seeds.py --set dagm2007_class1 --seed 0 --steps 400 \\
        --preset newcomer    # any_data's named preset for the set, with a newcomer's sizes
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
from napari_unet.engine.config import preset_config  # noqa: E402
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
    parser.add_argument("--preset", choices=["auto", "newcomer"], default="auto",
                        help="the plan (auto) or the named preset any_data.py compares it with")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the run folder (its last checkpoint) in DIR (new or empty)")
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
    if args.preset == "auto":
        config = plan_for_data(train_set, "cpu").config(device="cpu")
    else:
        preset, sizes = any_data.newcomer_preset(dataset)
        config = preset_config(preset, device="cpu", **sizes)
    config = config.replace(
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
        if args.keep is not None:
            shutil.copytree(Path(folder) / "run", args.keep, dirs_exist_ok=True)
        for step, checkpoint in saved:
            if args.score and step not in args.score:
                continue
            dice, precision, recall = scores(checkpoint, test_set)
            minutes = (time.monotonic() - started) / 60
            print(f"plan_seeds: set={args.set} preset={args.preset} "
                  f"change={','.join(args.change) or '-'} seed={args.seed} step={step} "
                  f"dice={dice:.3f} precision={precision:.3f} recall={recall:.3f} "
                  f"minutes={minutes:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
