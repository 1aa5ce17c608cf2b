"""Your images, not ours: ``--preset auto --minutes N`` on each shared data set, treated as unknown.

For each set: a fixed split into a train part and a test part (below; nothing is tuned on the
test part), then

- ``auto``: the plan made from the train part's fingerprint, its steps timed to fill N minutes;
- the named preset a newcomer would pick for that kind of data (``industrial`` for 2D
  pictures, ``volume3d`` for grey volumes, ``brats`` for four-channel MRI), with the patch and
  batch a newcomer shrinks it to on a CPU (256 and 8 in 2D, 64^3 and 2 in 3D), trained for the
  same N minutes;
- Otsu's threshold per test image, its polarity (object brighter or darker) chosen on the
  train part.

Each is scored on the test part by the foreground Dice, pooled over the test images (every
non-background class together, prediction against mask), and printed as

    any_data: name=dsb2018 recipe=auto dice=0.xxx otsu=0.xxx minutes=x.x steps=N

with the plan above it. ``--tiny`` (the test suite): two steps of small networks on a few
images of each set.

    .venv/bin/python benchmarks/any_data.py --minutes 10                 # every set
    .venv/bin/python benchmarks/any_data.py --sets dsb2018 ovules3d --minutes 3
    .venv/bin/python benchmarks/any_data.py --data-root /tmp/extra --sets crackforest uav75
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from skimage.filters import threshold_otsu  # noqa: E402

from napari_unet.choices import preset_options  # noqa: E402
from napari_unet.engine import (  # noqa: E402
    Dataset,
    evaluate,
    fit_to_minutes,
    load_checkpoint,
    load_dataset,
    plan_for_data,
    plan_lines,
    preset_config,
    time_limit,
    train,
)
from napari_unet.engine.runtime import resolve_amp  # noqa: E402
from napari_unet.errors import TrainingDiverged  # noqa: E402

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
# each set as a user gives it: its folder (a known layout: ISBI's two stacks, DAGM's Label/,
# images/ + masks/, NAME_image.tif + NAME_labels.tif)
SETS = ("isbi2012", "dagm2007_class1", "dsb2018", "ovules3d", "brats2021")


def split(count: int, groups: list | None = None) -> tuple[list, list]:
    """(train, test) indices: every third sample is a test sample (the last of 2 with 2);
    with `groups` (one per sample: near-duplicates share one), every third group in sorted
    order, whole, so that no test image has a near-copy in the train part."""
    if groups is not None and len(set(groups)) >= 2:
        order = sorted(set(groups))
        tested = set(order[2::3] if len(order) > 2 else order[1:])
        test = [i for i in range(count) if groups[i] in tested]
        return [i for i in range(count) if groups[i] not in tested], test
    if count == 2:
        return [0], [1]
    test = list(range(2, count, 3))
    return [i for i in range(count) if i not in test], test


def groups_of(folder: Path, names) -> list | None:
    """Each sample's group where the set's folder names them (groups.txt, `NAME GROUP` per
    line, as scripts/data writes for photos of one spot over time), else None; a name the
    file does not list is a group of its own."""
    listing = Path(folder) / "groups.txt"
    if not listing.is_file():
        return None
    named = dict(line.split(maxsplit=1) for line in listing.read_text().splitlines()
                 if line.strip())
    return [named.get(str(name), str(name)).strip() for name in names]


def parts(dataset, folder: Path) -> tuple[list, list]:
    """any_data's (train, test) indices of `dataset`, loaded from `folder` (split, with the
    folder's groups if it names them)."""
    return split(len(dataset), groups_of(folder, dataset.names))


def load(name: str, root: Path):
    return load_dataset(root / name, spatial_dims="auto")


def newcomer_preset(dataset) -> tuple[str, dict]:
    """The named preset (and a newcomer's CPU sizes) for this kind of data."""
    if dataset.spatial_dims == 2:
        return "industrial", dict(patch_size=[256, 256], batch_size=8)
    if dataset.in_channels == 4:
        return "brats", dict(patch_size=[64, 64, 64], batch_size=2)
    return "volume3d", dict(patch_size=[64, 64, 64], batch_size=2)


def foreground_dice(predictions, masks) -> float:
    """Dice of foreground (any class but 0), pooled over the images."""
    overlap = total = 0
    for labels, mask in zip(predictions, masks):
        predicted, truth = np.asarray(labels) > 0, np.asarray(mask) > 0
        overlap += int(np.logical_and(predicted, truth).sum())
        total += int(predicted.sum()) + int(truth.sum())
    return 2.0 * overlap / total if total else 1.0


def otsu_dice(train_set, test_set) -> float:
    """Otsu's threshold of each image (its channels' mean); brighter or darker objects as the
    train part says."""
    def segment(images, darker):
        out = []
        for image in images:
            grey = np.asarray(image, np.float32).mean(axis=0)
            above = grey > threshold_otsu(grey)
            out.append(~above if darker else above)
        return out

    darker = foreground_dice(segment(train_set.images, True), train_set.masks) > \
        foreground_dice(segment(train_set.images, False), train_set.masks)
    return foreground_dice(segment(test_set.images, darker), test_set.masks)


def train_fitted(config, train_set, folder: Path, fit: bool, started: float):
    """Train `config` (its steps fitted to its minutes where `fit`, stopped by the time guard):
    (checkpoint, minutes, steps done)."""
    deadline = None
    if fit:
        config, _ = fit_to_minutes(config, train_set, started)
        deadline = time_limit(config, started)
    done = config.steps
    for event in train(config, train_set, run_dir=folder, deadline=deadline):
        done = getattr(event, "step", done) if type(event).__name__ == "Finished" else done
        if type(event).__name__ == "Message":  # steps re-fitted, the threshold fitted, ...
            print(f"  {event.level}: {event.text}", flush=True)
    return load_checkpoint(folder), (time.monotonic() - started) / 60, done


def run_recipe(config, train_set, test_set, folder: Path, fit: bool, started: float):
    """Train `config` (train_fitted), score on `test_set`: (dice, minutes, steps)."""
    checkpoint, minutes, done = train_fitted(config, train_set, folder, fit, started)
    metrics = evaluate(checkpoint, test_set, amp=config.amp, device="cpu", per_image=True,
                       keep_labels=True)
    labels = [image["labels"] for image in metrics["images"]]
    return foreground_dice(labels, test_set.masks), minutes, done


# tiny networks start from nothing: a built-in start the plan proposes has another shape
TINY = dict(steps=2, patch_size=None, batch_size=2, amp="off", device="cpu",
            val_every=1000, checkpoint_every=1000, init_from=None)


def tiny_options(dataset, config=None) -> dict:
    """The suite's tiny network from nothing; a plan that tuned a model of objects by their
    area (`config.instances` foreground) learns the 2-class foreground instead."""
    small = [32, 32] if dataset.spatial_dims == 2 else [16, 16, 16]
    model = {"base_channels": 4, "depth": 3, "padding": "same", "norm": "batch",
             "dropout": 0.0} if dataset.spatial_dims == 2 else \
        {"base_channels": 4, "max_channels": 8, "depth": 3}
    merged = {"instances": "merge"} if getattr(config, "instances", None) == "foreground" else {}
    return dict(TINY, patch_size=small, model_options=model, **merged)


def crop(dataset, side: int = 48):
    """The first `side` pixels of every axis (the suite's tiny mode)."""
    window = (slice(0, side),) * dataset.spatial_dims
    return Dataset([np.asarray(image[(slice(None), *window)]) for image in dataset.images],
                   [np.asarray(mask[window]) for mask in dataset.masks], dataset.names,
                   dataset.spatial_dims, dataset.spacing)


def bench_set(name: str, args) -> list[str]:
    dataset = load(name, args.data_root)
    train_idx, test_idx = parts(dataset, args.data_root / name)
    if args.tiny:
        train_idx, test_idx = train_idx[:2], test_idx[:1]
    train_set, test_set = dataset.subset(train_idx), dataset.subset(test_idx)
    if args.tiny:
        train_set, test_set = crop(train_set), crop(test_set)
    print(f"\n== {name}: {len(train_set)} train / {len(test_set)} test samples, "
          f"{dataset.spatial_dims}D, {dataset.in_channels} channel(s)", flush=True)
    otsu = otsu_dice(train_set, test_set)
    rows = []
    plan = plan_for_data(train_set, "cpu")
    preset, sizes = newcomer_preset(dataset)
    recipes = [("auto", plan.config(minutes=args.minutes, device="cpu")),
               (preset, preset_config(preset, minutes=args.minutes, device="cpu", **sizes))]
    for recipe, config in recipes:
        if args.tiny:
            options = tiny_options(dataset, config)
            if recipe != "auto":
                narrow = {"base_channels": 4} if dataset.spatial_dims == 2 else \
                    {"base_channels": 4, "max_channels": 8, "depth": 3}
                options["model_options"] = dict(preset_options(preset)["model_options"],
                                                **narrow)
            config = config.replace(minutes=None, **options)
        if recipe == "auto":
            print("\n".join(f"  {line}" for line in plan_lines(config)), flush=True)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="any-data-") as folder:
            try:
                dice, minutes, steps = run_recipe(config, train_set, test_set,
                                                  Path(folder) / "run", fit=not args.tiny,
                                                  started=started)
                ended = f"steps={steps}"
            except TrainingDiverged as exc:  # a row of its own: a diverging plan is a finding
                dice, minutes = float("nan"), (time.monotonic() - started) / 60
                ended = f"diverged ({exc})".split(":")[0] + ")"
        amp = resolve_amp(torch.device(config.device), config.amp)[0]  # auto: bf16 if native
        row = (f"any_data: name={name} recipe={recipe} dice={dice:.3f} otsu={otsu:.3f} "
               f"minutes={minutes:.1f} {ended} amp={amp}")
        print(row, flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS),
                        help=f"folders under --data-root (default: {' '.join(SETS)}); fetched "
                             "sets too, e.g. scripts/data/crackforest.py --out DIR/crackforest, "
                             "then --data-root DIR --sets crackforest")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="training time of each recipe (calibration included)")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--tiny", action="store_true",
                        help="the test suite's mode: 2 steps of tiny networks, few images")
    args = parser.parse_args(argv)
    missing = [name for name in args.sets if not (args.data_root / name).is_dir()]
    if missing:
        parser.error(f"no folder {args.data_root / missing[0]}: give set folders under "
                     f"--data-root (now {args.data_root})")
    rows = []
    for name in args.sets:
        rows += bench_set(name, args)
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
