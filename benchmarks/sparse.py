"""Paint a little, train: sparse labels simulated from dense ground truth, against dense labels
at equal time.

Annotation is simulated the way the literature does it:

- 2D (strokes): lines in every class's regions, widened to a brush of up to 5 pixels while
  they cover less than `fraction` of the image, then kept in random 16 x 16 cells of the
  image until `fraction` of its pixels are labelled; the rest is unlabelled. The lines are
  `--strokes skeleton` (the literature's: the skeleton of each object and of the background
  between them, a line through the middle of what a user sees) or `--strokes edges` (as a
  user corrects: a line EDGE_OFFSET pixels inside each region's outline, on both sides of
  every boundary; a region too thin for it keeps its skeleton) or `--strokes both` (the two
  kinds of line together, before the same subsampling).
- 3D (some slices): every k-th axial slice labelled whole, k = round(1 / fraction).

For each data set: a fixed split into a train part and a test part (every third sample a
test sample, as ``any_data.py``), one recipe (the plan made from the dense train part, so the
two runs differ in their labels only), trained for the same minutes (or, with ``--steps``, the
same steps: figures that hold on a busy machine) on the dense masks and on
the simulated annotation of each fraction, each scored on the dense masks of the test part
(pooled foreground Dice; BraTS: the whole tumour). Printed as

    sparse: dataset=isbi2012 fraction=0.03 strokes=skeleton annotated_pixels=0.0291 dice=0.xxx dense_dice=0.xxx minutes=x.x

``--tiny`` (the test suite): two steps of small networks on crops of a few images.

    .venv/bin/python benchmarks/sparse.py --dataset isbi2012 --fraction 0.03 --minutes 10
    .venv/bin/python benchmarks/sparse.py --dataset brats2021 --fraction 0.2 --minutes 10
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
from any_data import DATA_ROOT, crop, run_recipe, split, tiny_options  # noqa: E402
from scipy.ndimage import binary_dilation, binary_erosion, label  # noqa: E402
from skimage.morphology import disk, skeletonize  # noqa: E402

from napari_unet.choices import IGNORE_CLASS  # noqa: E402
from napari_unet.engine import Dataset, load_dataset, plan_for_data  # noqa: E402
from napari_unet.engine.training.calibration import with_steps  # noqa: E402

FOLDERS = {"isbi2012": "isbi2012", "dagm2007": "dagm2007_class1", "dsb2018": "dsb2018",
           "ovules3d": "ovules3d", "brats2021": "brats2021"}
CELL = 16  # strokes are kept or dropped in cells of this many pixels a side
MAX_RADIUS = 2  # the widest simulated brush: 5 pixels
EDGE_OFFSET = 2  # edge strokes run this many pixels inside a region's outline
LINES = ("skeleton", "edges", "both")


def edge_line(region: np.ndarray) -> np.ndarray:
    """A one-pixel line EDGE_OFFSET pixels inside the outline of each part of `region` (its
    skeleton where the part is too thin to hold one)."""
    inner = binary_erosion(region, disk(1), iterations=EDGE_OFFSET, border_value=1)
    line = inner & ~binary_erosion(inner, disk(1), border_value=1)
    parts, _ = label(region)
    kept = np.unique(parts[line])
    thin = (parts > 0) & ~np.isin(parts, kept)
    return line | (skeletonize(thin) if thin.any() else thin)


def strokes(mask: np.ndarray, fraction: float, rng: np.random.Generator,
            lines: str = "skeleton") -> np.ndarray:
    """A 2D class mask as a user's strokes: lines in each class's regions (`lines`: their
    skeletons or lines along their edges), in random CELL x CELL cells until `fraction` of the
    pixels; IGNORE_CLASS elsewhere."""
    mask = np.asarray(mask)
    target = int(fraction * mask.size)
    draw = {"skeleton": skeletonize, "edges": edge_line,
            "both": lambda region: skeletonize(region) | edge_line(region)}[lines]
    skeletons = {value: draw(mask == value) for value in np.unique(mask)}
    for radius in range(MAX_RADIUS + 1):  # a wider brush while the lines are too few
        out = np.full(mask.shape, IGNORE_CLASS, np.uint8)
        for value, skeleton in skeletons.items():
            line = binary_dilation(skeleton, structure=disk(radius)) if radius else skeleton
            out[line & (mask == value)] = value
        drawn = out != IGNORE_CLASS
        if drawn.sum() >= target:
            break
    if drawn.sum() <= target:
        return out
    rows, cols = np.indices(mask.shape)
    cell = (rows // CELL) * (-(-mask.shape[1] // CELL)) + cols // CELL
    counts = np.bincount(cell[drawn], minlength=int(cell.max()) + 1)
    order = rng.permutation(np.flatnonzero(counts))
    kept = order[:int(np.searchsorted(np.cumsum(counts[order]), target, side="right"))]
    out[drawn & ~np.isin(cell, kept)] = IGNORE_CLASS
    return out


def some_slices(mask: np.ndarray, fraction: float) -> np.ndarray:
    """A 3D class mask labelled on every k-th axial slice only (k = round(1 / fraction))."""
    every = max(1, round(1 / fraction))
    out = np.full(mask.shape, IGNORE_CLASS, np.uint8)
    out[::every] = np.asarray(mask)[::every]
    return out


def annotate(dataset: Dataset, fraction: float, seed: int = 0, lines: str = "skeleton") -> Dataset:
    """The data set with its masks replaced by simulated sparse annotation."""
    rng = np.random.default_rng(seed)
    if dataset.spatial_dims == 3:
        masks = [some_slices(mask, fraction) for mask in dataset.masks]
    else:
        masks = [strokes(mask, fraction, rng, lines) for mask in dataset.masks]
    return Dataset(list(dataset.images), masks, list(dataset.names), dataset.spatial_dims,
                   dataset.spacing)


def labelled_share(dataset: Dataset) -> float:
    labelled = sum(int((np.asarray(m) != IGNORE_CLASS).sum()) for m in dataset.masks)
    return labelled / sum(np.asarray(m).size for m in dataset.masks)


def bench(name: str, args) -> list[str]:
    dataset = load_dataset(args.data_root / FOLDERS[name], spatial_dims="auto")
    train_idx, test_idx = split(len(dataset))
    if args.tiny:
        train_idx, test_idx = train_idx[:2], test_idx[:1]
    train_set, test_set = dataset.subset(train_idx), dataset.subset(test_idx)
    if args.tiny:
        train_set, test_set = crop(train_set), crop(test_set)
    config = plan_for_data(train_set, "cpu").config(minutes=args.minutes, device="cpu")
    if args.tiny:
        config = config.replace(minutes=None, **tiny_options(dataset, config))
    elif args.steps:
        config = with_steps(config.replace(minutes=None), args.steps)
    print(f"\n== {name}: {len(train_set)} train / {len(test_set)} test samples, "
          f"{dataset.spatial_dims}D; {config.model}, patch {config.patch_size}, "
          f"batch {config.batch_size}", flush=True)
    dense, _, dense_steps = _train_and_score(config, train_set, test_set, args)
    print(f"  dense: dice={dense:.3f} steps={dense_steps}", flush=True)
    rows = []
    kinds = ["slices"] if dataset.spatial_dims == 3 else args.strokes
    for fraction in args.fraction:
        for lines in kinds:
            sparse_set = annotate(train_set, fraction, lines=lines)
            dice, minutes, steps = _train_and_score(config, sparse_set, test_set, args)
            row = (f"sparse: dataset={name} fraction={fraction:g} strokes={lines} "
                   f"annotated_pixels={labelled_share(sparse_set):.4f} dice={dice:.3f} "
                   f"dense_dice={dense:.3f} minutes={minutes:.1f} steps={steps}")
            print(row, flush=True)
            rows.append(row)
    return rows


def _train_and_score(config, train_set, test_set, args):
    with tempfile.TemporaryDirectory(prefix="sparse-") as folder:
        return run_recipe(config, train_set, test_set, Path(folder) / "run",
                          fit=not (args.tiny or args.steps), started=time.monotonic())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", default=["isbi2012"], choices=list(FOLDERS))
    parser.add_argument("--fraction", nargs="+", type=float, default=[0.03],
                        help="share of the pixels labelled (3D: 1/k for every k-th slice)")
    parser.add_argument("--strokes", nargs="+", default=["skeleton"], choices=LINES,
                        help="2D: where the simulated strokes run (each is a run): through the "
                             "middle of regions (skeleton), along their edges (edges) or both")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="training time of each run (calibration included)")
    parser.add_argument("--steps", type=int, default=None,
                        help="train each run this many steps instead of --minutes: equal steps, "
                             "the same figures on a busy machine (only slower)")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--tiny", action="store_true",
                        help="the test suite's mode: 2 steps of tiny networks on crops")
    args = parser.parse_args(argv)
    if not all(0 < f <= 1 for f in args.fraction):
        parser.error("--fraction is a share of the pixels: give values in (0, 1]")
    rows = []
    for name in args.dataset:
        rows += bench(name, args)
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
