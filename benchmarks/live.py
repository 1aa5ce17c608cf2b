"""Live: an annotator paints while the model trains; how good is the view it sees, and when.

The annotator is simulated from the dense truth of one 512 x 512 field (ISBI 2012: slice 0 of
the training stack; DSB 2018: four 256 x 256 images of the set side by side): the strokes of
benchmarks/sparse.py (``--strokes both``: skeletons and lines along the edges, at
``--fraction`` of the pixels) are cut into the field's BLOCK x BLOCK blocks, and one block's
strokes (one "stroke", as a user paints one area at a time, in a random order of the blocks
that hold any) are revealed every ``--every`` seconds of wall time to a running live run
(engine.train_live, from scratch or ``--init-from``, the live plan made for the field, or
``--plan batch``: train --preset auto's), which predicts the whole field
every ``--view-every`` seconds (longer where a prediction takes more than a third of the time).
Each refreshed view is scored against the dense truth (foreground Dice) with its time since
the start. Beside it the batch way at equal wall time: all the strokes given at the start, the
same recipe trained, the field predicted at the same period: the Dice that a run started with
everything painted would show at each time. Printed as

    live: dataset=isbi2012 seconds=31.2 step=40 strokes=3 dice=0.712
    batch: dataset=isbi2012 seconds=30.8 step=41 strokes=16 dice=0.745

``--png PATH`` draws the curves (matplotlib, where installed). ``--tiny`` (the test suite):
a 64 x 64 crop, a tiny network, a stroke a second, a few seconds.

    .venv/bin/python benchmarks/live.py --dataset isbi2012 dsb2018 --seconds 120 --png live.png
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
from any_data import DATA_ROOT, foreground_dice, tiny_options  # noqa: E402
from sparse import FOLDERS, strokes  # noqa: E402

from napari_unet.choices import IGNORE_CLASS  # noqa: E402
from napari_unet.engine import (  # noqa: E402
    Dataset,
    LiveControl,
    MasksUpdated,
    ViewPredicted,
    load_dataset,
    plan_for_data,
    train_live,
)

BLOCK = 128  # a revealed stroke: the strokes of one BLOCK x BLOCK block of the field
TINY_SIDE = 64


def field(name: str, root: Path, tiny: bool):
    """(image (1, Y, X), dense class mask (Y, X)) of the data set's 512 x 512 field."""
    dataset = load_dataset(root / FOLDERS[name], spatial_dims=2)
    if name == "dsb2018":  # 4 images of 256 x 256 side by side
        pick = [i for i, image in enumerate(dataset.images) if image.shape[1:] == (256, 256)][:4]
        rows = [np.concatenate([np.asarray(dataset.images[i]) for i in pick[k:k + 2]], axis=2)
                for k in (0, 2)]
        masks = [np.concatenate([np.asarray(dataset.masks[i]) for i in pick[k:k + 2]], axis=1)
                 for k in (0, 2)]
        image, mask = np.concatenate(rows, axis=1), np.concatenate(masks, axis=0)
    else:
        image, mask = np.asarray(dataset.images[0]), np.asarray(dataset.masks[0])
    if tiny:
        image, mask = image[:, :TINY_SIDE, :TINY_SIDE], mask[:TINY_SIDE, :TINY_SIDE]
    return image, (mask > 0).astype(np.uint8)


def stroke_sequence(mask, fraction: float, seed: int, block: int) -> list:
    """The annotation as the annotator reveals it: [mask of classes, IGNORE_CLASS elsewhere]
    after each stroke (a block's strokes), in a random order of the blocks."""
    drawn = strokes(mask, fraction, np.random.default_rng(seed), lines="both")
    blocks = [(y, x) for y in range(0, mask.shape[0], block) for x in range(0, mask.shape[1], block)
              if (drawn[y:y + block, x:x + block] != IGNORE_CLASS).any()]
    order = np.random.default_rng(seed + 1).permutation(len(blocks))
    shown = np.full(mask.shape, IGNORE_CLASS, np.uint8)
    sequence = []
    for k in order:
        y, x = blocks[k]
        shown[y:y + block, x:x + block] = drawn[y:y + block, x:x + block]
        sequence.append(shown.copy())
    return sequence


def play(config, image, truth, sequence, args, reveal_every: float) -> list:
    """One live run: the strokes of `sequence` revealed every `reveal_every` seconds (all at
    once when it is 0); [(seconds, step, strokes shown, dice)] of each refreshed view."""
    control = LiveControl()
    control.set_view(image)
    rows, shown, started = [], 0, time.monotonic()
    with tempfile.TemporaryDirectory(prefix="live-") as folder:
        events = train_live(config, [image], [np.full(truth.shape, IGNORE_CLASS, np.uint8)],
                            run_dir=Path(folder) / "run", control=control,
                            every=args.view_every)
        try:
            for event in events:
                elapsed = time.monotonic() - started
                due = len(sequence) if not reveal_every else \
                    min(len(sequence), 1 + int(elapsed // reveal_every))
                if due > shown:
                    shown = due
                    control.update_mask(0, sequence[shown - 1])
                if isinstance(event, MasksUpdated) and args.verbose:
                    print(f"  stroke in the sampler {event.seconds:.2f} s after it came",
                          flush=True)
                if isinstance(event, ViewPredicted):
                    _, done, _ = control.latest()
                    rows.append((event.time, event.step, shown,
                                 foreground_dice([done.labels], [truth])))
                    if elapsed >= args.seconds and (args.tiny or shown == len(sequence)):
                        control.stop()
        finally:
            events.close()
    return rows


def bench(name: str, args) -> list[str]:
    image, truth = field(name, args.data_root, args.tiny)
    block = TINY_SIDE // 2 if args.tiny else BLOCK
    sequence = stroke_sequence(truth, args.fraction, args.seed, block)
    dense = Dataset([image], [truth], [name], 2)
    config = plan_for_data(dense, "cpu", init_from=args.init_from,
                           live=args.plan == "live").config(device="cpu", unlabeled="background",
                                                            ignore_value=IGNORE_CLASS)
    if args.base_channels:  # trying another width of the plan's network
        config = config.replace(model_options={**config.model_options,
                                               "base_channels": args.base_channels})
    if args.tiny:
        config = config.replace(**{**tiny_options(dense, config), "steps": 1})
    print(f"\n== {name}: field {truth.shape}, {len(sequence)} strokes "
          f"({(sequence[-1] != IGNORE_CLASS).mean():.4f} of the pixels), one every "
          f"{args.every:g} s; the {args.plan} plan: {config.model} "
          f"{config.model_options.get('base_channels')} wide, patch {config.patch_size}, "
          f"batch {config.batch_size}, lr {config.lr:g}, from {config.init_from or 'nothing'}",
          flush=True)
    lines = []
    for mode, reveal in (("live", args.every), ("batch", 0.0)):
        for seconds, step, shown, dice in play(config, image, truth, sequence, args, reveal):
            line = (f"{mode}: dataset={name} seconds={seconds:.1f} step={step} "
                    f"strokes={shown} dice={dice:.3f}")
            print(line, flush=True)
            lines.append(line)
    return lines


def draw(lines: list[str], path: Path) -> None:
    """The Dice curves, one panel per data set: matplotlib where installed, else Pillow."""
    curves: dict = {}
    for line in lines:
        mode, rest = line.split(": ", 1)
        fields = dict(item.split("=") for item in rest.split())
        curves.setdefault(fields["dataset"], {}).setdefault(mode, []).append(
            (float(fields["seconds"]), float(fields["dice"])))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _draw_with_pillow(curves, path)
        return
    figure, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for axis, (name, modes) in zip(axes[0], curves.items()):
        for mode, points in modes.items():
            axis.plot(*zip(*points), marker=".", label=mode)
        axis.set(title=name, xlabel="seconds since the start", ylabel="foreground Dice",
                 ylim=(0, 1))
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}", file=sys.stderr)


def _draw_with_pillow(curves: dict, path: Path) -> None:
    from PIL import Image, ImageDraw

    width, height, margin = 420, 300, 40
    image = Image.new("RGB", (width * len(curves), height), "white")
    pen = ImageDraw.Draw(image)
    colours = {"live": (31, 119, 180), "batch": (255, 127, 14)}
    end = max(t for modes in curves.values() for points in modes.values() for t, _ in points)
    for k, (name, modes) in enumerate(curves.items()):
        left, right, top, bottom = k * width + margin, (k + 1) * width - 10, 25, height - margin
        pen.rectangle([left, top, right, bottom], outline="black")
        for tick in (0.25, 0.5, 0.75):
            y = bottom - tick * (bottom - top)
            pen.line([left, y, right, y], fill=(220, 220, 220))
            pen.text((left - 30, y - 6), f"{tick:.2f}", fill="black")
        pen.text((left, 5), f"{name}: foreground Dice over seconds (0-{end:.0f} s)",
                 fill="black")
        for row, (mode, points) in enumerate(modes.items()):
            xy = [(left + t / end * (right - left), bottom - d * (bottom - top))
                  for t, d in points]
            pen.line(xy, fill=colours.get(mode, "black"), width=2) if len(xy) > 1 else None
            for x, y in xy:
                pen.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colours.get(mode, "black"))
            pen.text((left + 8, top + 6 + 14 * row), mode, fill=colours.get(mode, "black"))
    image.save(path)
    print(f"wrote {path}", file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", default=["isbi2012", "dsb2018"],
                        choices=["isbi2012", "dsb2018"])
    parser.add_argument("--seconds", type=float, default=120.0,
                        help="each run's wall time (it goes on until every stroke is shown)")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between strokes")
    parser.add_argument("--view-every", type=float, default=5.0,
                        help="seconds between refreshed views")
    parser.add_argument("--fraction", type=float, default=0.03,
                        help="share of the field's pixels in all the strokes")
    parser.add_argument("--plan", choices=["live", "batch"], default="live",
                        help="the recipe: the live plan (train --live's) or the batch plan "
                             "(train --preset auto's)")
    parser.add_argument("--init-from", default="none",
                        help="start from this built-in model or run (default: from nothing)")
    parser.add_argument("--base-channels", type=int, default=None,
                        help="the network's width instead of the plan's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--png", type=Path, default=None, help="draw the curves here")
    parser.add_argument("--verbose", action="store_true", help="say when strokes arrive")
    parser.add_argument("--tiny", action="store_true",
                        help="the test suite's mode: a 64 x 64 crop, a tiny network, seconds")
    args = parser.parse_args(argv)
    if args.tiny:
        args.seconds, args.every, args.view_every = min(args.seconds, 3.0), 1.0, 0.5
    if not (args.seconds > 0 and args.every > 0 and args.view_every > 0
            and 0 < args.fraction <= 1):
        parser.error("--seconds, --every and --view-every are > 0; --fraction in (0, 1]")
    lines = []
    for name in args.dataset:
        lines += bench(name, args)
    print("\n" + "\n".join(lines))
    if args.png:
        draw(lines, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
