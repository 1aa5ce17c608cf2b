"""Built-in models: zero-shot on data held out of their training, and fine-tuned from strokes.

Zero-shot, for each shipped model and the shared set held out of its training (nuclei: the
120 images of dsb2018, none of which it saw; membranes: isbi2012 slices 20-23; nuclei3d:
ovules3d 1136), predicted as a user would (`predict --model NAME`: objects, the measured
scale), foreground Dice pooled over the images and AP@0.5 = TP / (TP + FP + FN) per image,
averaged; seconds per image on this machine. A 1024 x 1024 row times one large image (a DSB
image four times enlarged: nuclei of 60-80 px) with objects.

Fine-tuned: dsb2018 split as any_data.py (every third image a test image), the train part
annotated with strokes (benchmarks/sparse.py: `--fraction` of the pixels), trained for
`--minutes` (or `--steps`) from `nuclei` and from nothing (the same plan otherwise), scored
on the test part. From `nuclei` the strokes tune its model of objects (`--instances
foreground`, as the plan chooses) and the objects are its watershed's; from nothing they are
the connected components of the 2-class foreground.

    builtin: model=nuclei data=dsb2018 dice=0.xxx ap50=0.xxx seconds=0.xx
    builtin: model=nuclei+strokes data=dsb2018 fraction=0.024 minutes=2 dice=.. ap50=..
    builtin: model=scratch+strokes ...

    .venv/bin/python benchmarks/builtin.py                      # zero-shot rows
    .venv/bin/python benchmarks/builtin.py --fine-tune --minutes 2 --fraction 0.024
    .venv/bin/python benchmarks/builtin.py --fine-tune --steps 150 --no-zero-shot  # busy machine
``--tiny`` (the test suite): two images, two steps.
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
import tifffile  # noqa: E402
from any_data import DATA_ROOT, crop, split, tiny_options, train_fitted  # noqa: E402
from sparse import annotate, labelled_share  # noqa: E402

from napari_unet import builtin  # noqa: E402
from napari_unet.engine import load_checkpoint, load_dataset, plan_for_data, predict  # noqa: E402
from napari_unet.engine.instance_metrics import matching  # noqa: E402
from napari_unet.engine.prediction.predict import run_to_end  # noqa: E402
from napari_unet.engine.training.calibration import with_steps  # noqa: E402
from napari_unet.io import read_image  # noqa: E402


def held_out(name: str, root: Path, tiny: bool):
    """[(image, instance or class mask)] of the shared data held out of model `name`."""
    if name == "nuclei":
        folder = root / "dsb2018"
        pairs = [(read_image(p), tifffile.imread(folder / "instances" / f"{p.stem}.tif"))
                 for p in sorted((folder / "images").glob("*.png"))]
    elif name == "membranes":
        volume = tifffile.imread(root / "isbi2012" / "train-volume.tif")[20:24]
        labels = tifffile.imread(root / "isbi2012" / "train-labels.tif")[20:24]
        pairs = [(v, (m == 0).astype(np.uint8)) for v, m in zip(volume, labels)]
    else:
        folder = root / "ovules3d"
        pairs = [(tifffile.imread(folder / "1136_mini_image.tif"),
                  tifffile.imread(folder / "1136_mini_instances.tif"))]
    return pairs[:2] if tiny else pairs


def score(model, pairs, objects: bool, **options) -> tuple[float, float | None, float]:
    """(pooled foreground Dice, mean AP@0.5 or None, seconds per image)."""
    overlap = total = 0
    aps, started = [], time.perf_counter()
    for image, truth in pairs:
        done = run_to_end(predict(model, image, device="cpu",
                                  instances="auto" if objects else "off", **options))
        found = np.asarray(done.objects if objects else done.labels)
        inside, true = found > 0, np.asarray(truth) > 0
        overlap += int((inside & true).sum())
        total += int(inside.sum() + true.sum())
        if objects:
            m = matching(truth, found)
            aps.append(m.tp[0] / max(m.tp[0] + m.fp[0] + m.fn[0], 1))
    seconds = (time.perf_counter() - started) / len(pairs)
    return 2 * overlap / max(total, 1), (float(np.mean(aps)) if aps else None), seconds


def row(model, data, dice, ap50, seconds, extra="") -> str:
    ap = f" ap50={ap50:.3f}" if ap50 is not None else ""
    return f"builtin: model={model} data={data}{extra} dice={dice:.3f}{ap} seconds={seconds:.3g}"


def zero_shot(args) -> list[str]:
    rows = []
    data = {"nuclei": "dsb2018", "membranes": "isbi2012[20:24]", "nuclei3d": "ovules3d/1136"}
    for name in builtin.names():
        objects = name != "membranes"  # membranes: the foreground is the membranes
        rows.append(row(name, data.get(name, "?"),
                        *score(name, held_out(name, args.data_root, args.tiny), objects)))
        print(rows[-1], flush=True)
    if "nuclei" in builtin.names():
        image, truth = held_out("nuclei", args.data_root, True)[0]
        factor = 2 if args.tiny else 4
        big = [(np.kron(image, np.ones((factor, factor), image.dtype)),
                np.kron(truth, np.ones((factor, factor), truth.dtype)))]
        rows.append(row("nuclei", f"dsb2018x{factor} ({big[0][0].shape[0]}^2)",
                        *score("nuclei", big, True)))
        print(rows[-1], flush=True)
    return rows


def fine_tune(args) -> list[str]:
    dataset = load_dataset(args.data_root / "dsb2018", spatial_dims=2)
    train_idx, test_idx = split(len(dataset))
    train_idx, test_idx = (train_idx[:2], test_idx[:1]) if args.tiny else (train_idx, test_idx)
    train_set, test_set = dataset.subset(train_idx), dataset.subset(test_idx)
    if args.tiny:
        train_set, test_set = crop(train_set, 64), crop(test_set, 64)
    strokes = annotate(train_set, args.fraction, lines="both")
    instances = [tifffile.imread(args.data_root / "dsb2018" / "instances" / f"{n}.tif")
                 for n in test_set.names]
    if args.tiny:
        instances = [i[:64, :64] for i in instances]
    pairs = list(zip([np.asarray(i) for i in test_set.images], instances))
    rows = []
    for start in ("nuclei", "none"):
        config = plan_for_data(train_set, "cpu", init_from=start).config(
            minutes=args.minutes, device="cpu")
        if args.tiny:
            small = tiny_options(dataset)
            if start == "nuclei":  # its network and weights, not the tiny ones
                small = {k: v for k, v in small.items() if k not in ("model_options",
                                                                     "init_from")}
            config = config.replace(**{**small, "minutes": None, "patch_size": [64, 64]})
        elif args.steps:  # the same steps for both starts, however busy the machine
            config = with_steps(config.replace(minutes=None), args.steps)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="builtin-") as folder:
            run = Path(folder) / "run"
            _, minutes, steps = train_fitted(config, strokes, run,
                                             not (args.tiny or args.steps), started)
            dice, ap50, seconds = score(load_checkpoint(run), pairs, True, diameter="off")
        label = "nuclei+strokes" if start == "nuclei" else "scratch+strokes"
        rows.append(row(label, "dsb2018", dice, ap50, seconds,
                        f" fraction={labelled_share(strokes):.3f} minutes={minutes:.1f} "
                        f"steps={steps}"))
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fine-tune", action="store_true",
                        help="also fine-tune from nuclei and from nothing on strokes")
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=None,
                        help="fine-tune this many steps instead of --minutes (a busy machine)")
    parser.add_argument("--zero-shot", action=argparse.BooleanOptionalAction, default=True,
                        help="the zero-shot rows (--no-zero-shot: the fine-tune rows alone)")
    parser.add_argument("--fraction", type=float, default=0.024,
                        help="share of the train part's pixels painted as strokes")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--tiny", action="store_true", help="the test suite's mode")
    args = parser.parse_args(argv)
    rows = zero_shot(args) if args.zero_shot else []
    if args.fine_tune:
        rows += fine_tune(args)
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
