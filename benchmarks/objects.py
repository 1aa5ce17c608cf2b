"""Objects, not only pixels: instance segmentation from the U-Nets, scored the way the field
scores it (issue 23).

For each data set, a fixed split into a train part and a test part, one recipe planned from
the train part (``--preset auto``'s plan, no tuning on the test part), trained for the same
minutes per arm, scored on the test part's objects:

- dsb2018 (2D nuclei, 120 images; every third image a test image, as ``any_data.py``):
  ``boundary`` (``--instances boundary``: background / interior / boundary classes and a
  seeded watershed) against ``semantic`` (the product's default for these masks: one merged
  foreground class, objects = its connected components). AP at IoU 0.5 and its mean over
  0.5-0.95 (per image, then averaged, as the Data Science Bowl scored), merges and splits.
- ovules3d (3D nuclei, anisotropic): the same two arms, trained on 1135, scored on 1136.
- isbi2012 (EM; slices 2, 5, 8, ... are the test part): one membrane model, its neurons made
  two ways: ``membranes`` (a watershed of the membrane probability from the cells' seeds) and
  ``components`` (connected components of the predicted cell interior). The foreground-
  restricted Rand score (1 - scikit-image's adapted Rand error over the true cells) and the
  information scores (VI split / merge).

Printed as

    objects: dataset=dsb2018 arm=boundary ap50=0.xxx mean_ap=0.xxx rand=0.xxx merges=n splits=n minutes=x.x steps=n

``--tiny`` (the test suite): two steps of small networks on crops of a few images.

    .venv/bin/python benchmarks/objects.py --dataset dsb2018 ovules3d isbi2012 --minutes 10
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from any_data import DATA_ROOT, split, tiny_options, train_fitted  # noqa: E402

from napari_unet.engine import Dataset, evaluate, load_dataset, plan_for_data  # noqa: E402
from napari_unet.engine.data.dataset import dataset_from_pairs  # noqa: E402
from napari_unet.engine.instance_metrics import connected_objects, rand_scores  # noqa: E402

DATASETS = ("dsb2018", "ovules3d", "isbi2012")


def load(name: str, root: Path, objects: bool) -> Dataset:
    """The data set, its masks as one class (objects False) or as background / interior /
    boundary (objects True); instance ids kept for the scores."""
    rule = {"instances": "boundary"} if objects else {}
    if name == "dsb2018":
        return load_dataset(images=root / name / "images", masks=root / name / "instances",
                            **rule)
    if name == "ovules3d":
        pairs = [(path, path.with_name(path.name.replace("_image", "_instances")))
                 for path in sorted((root / name).glob("*_image.tif"))]
        return dataset_from_pairs(pairs, spatial_dims=3, **rule)
    return load_dataset(root / name, spatial_dims=2)


def crop(dataset: Dataset, side: int = 48) -> Dataset:
    """The first `side` pixels of every axis, instance ids included (the suite's tiny mode)."""
    window = (slice(0, side),) * dataset.spatial_dims
    objects = [np.asarray(ids[window]) for ids in dataset.objects] if dataset.objects else None
    return Dataset([np.asarray(image[(slice(None), *window)]) for image in dataset.images],
                   [np.asarray(mask[window]) for mask in dataset.masks], dataset.names,
                   dataset.spatial_dims, dataset.spacing, objects)


def parts(dataset: Dataset, tiny: bool):
    train_idx, test_idx = split(len(dataset))
    if tiny:
        train_idx, test_idx = train_idx[:2], test_idx[:1]
    train_set, test_set = dataset.subset(train_idx), dataset.subset(test_idx)
    return (crop(train_set), crop(test_set)) if tiny else (train_set, test_set)


def train_run(train_set, args, folder: Path, **options):
    """Train the plan of `train_set` for the minutes: (checkpoint, minutes, steps)."""
    started = time.monotonic()
    config = plan_for_data(train_set, "cpu").config(minutes=args.minutes, device="cpu",
                                                    **options)
    if args.tiny:
        config = config.replace(minutes=None, **tiny_options(train_set, config))
    return train_fitted(config, train_set, folder, fit=not args.tiny, started=started)


def row(name, arm, scores, minutes, steps) -> str:
    return (f"objects: dataset={name} arm={arm} ap50={scores['ap50']:.3f} "
            f"mean_ap={scores['mean_ap']:.3f} rand={scores['rand_score']:.3f} "
            f"merges={scores['merges']} splits={scores['splits']} "
            f"true={scores['true_objects']} predicted={scores['predicted_objects']} "
            f"minutes={minutes:.1f} steps={steps}")


def bench_nuclei(name: str, args) -> list[str]:
    rows = []
    for arm, objects in (("boundary", True), ("semantic", False)):
        if arm not in args.arms:
            continue
        train_set, test_set = parts(load(name, args.data_root, objects), args.tiny)
        if not rows:
            print(f"\n== {name}: {len(train_set)} train / {len(test_set)} test samples, "
                  f"{train_set.spatial_dims}D, spacing {train_set.spacing}", flush=True)
        with tempfile.TemporaryDirectory(prefix="objects-") as folder:
            options = {"instances": "boundary"} if objects else {}
            checkpoint, minutes, steps = train_run(train_set, args, Path(folder) / "run",
                                                   **options)
            metrics = evaluate(checkpoint, test_set, amp=checkpoint.config.amp, device="cpu",
                               instances="auto")
        rows.append(row(name, arm, metrics["objects"], minutes, steps))
        print(rows[-1], flush=True)
    return rows


def bench_em(args) -> list[str]:
    train_set, test_set = parts(load("isbi2012", args.data_root, False), args.tiny)
    print(f"\n== isbi2012: {len(train_set)} train / {len(test_set)} test slices", flush=True)
    with tempfile.TemporaryDirectory(prefix="objects-") as folder:
        checkpoint, minutes, steps = train_run(train_set, args, Path(folder) / "run")
        metrics = evaluate(checkpoint, test_set, amp=checkpoint.config.amp, device="cpu",
                           instances="membranes", keep_labels=True)
    rows = [row("isbi2012", "membranes", metrics["objects"], minutes, steps)]
    # the baseline: connected components of the predicted cell interior (not membrane)
    scores = [rand_scores(connected_objects(np.asarray(mask) == 0),
                          connected_objects(np.asarray(image["labels"]) == 0))
              for mask, image in zip(test_set.masks, metrics["images"])]
    rand = {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}
    rows.append(f"objects: dataset=isbi2012 arm=components rand={rand['rand_score']:.3f} "
                f"vi_split={rand['vi_split']:.3f} vi_merge={rand['vi_merge']:.3f} "
                f"minutes={minutes:.1f} steps={steps}")
    print(rows[0].replace("objects:", "objects:") + f" vi_split="
          f"{metrics['objects']['vi_split']:.3f} vi_merge={metrics['objects']['vi_merge']:.3f}")
    print(rows[1], flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="training time of each run (calibration included)")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--arms", nargs="+", default=["boundary", "semantic"],
                        choices=["boundary", "semantic"], help="the nuclei arms to run")
    parser.add_argument("--tiny", action="store_true",
                        help="the test suite's mode: 2 steps of tiny networks on crops")
    args = parser.parse_args(argv)
    rows = []
    for name in args.dataset:
        rows += bench_em(args) if name == "isbi2012" else bench_nuclei(name, args)
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
