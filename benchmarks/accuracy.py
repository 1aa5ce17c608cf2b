"""Accuracy on the real data sets (ISBI 2012, DAGM 2007 Class 1, BraTS 2013 and 2021), cross-validated.

One command per data set; the last line is a ``key=value`` summary that scripts parse:

    .venv/bin/python benchmarks/accuracy.py --dataset isbi2012 --budget cpu --fold 0
    .venv/bin/python benchmarks/accuracy.py --dataset dagm2007 --budget reference   # all folds, GPU
    .venv/bin/python benchmarks/accuracy.py --dataset brats2013 --budget cpu --fold 0 \
        --extra-eval more/pat0007_image.tif more/pat0007_labels.tif
    .venv/bin/python benchmarks/accuracy.py --dataset brats2021 --budget cpu --fold 0

- ``--budget reference`` trains with the presets as they are (the reference schedule, for a GPU).
- ``--budget cpu`` picks a smaller recipe that fits a 2-core CPU in minutes (25 for isbi2012,
  15 for dagm2007, 30 for brats2013 and brats2021, per fold, everything included): padded networks, bf16
  where the CPU computes it natively (else full precision, printed in the config line),
  smaller patches, Adam with warm-up and a cosine schedule. The number of steps is set by
  timing a few training steps first (``calibration``), so the run fits the budget on the
  machine at hand, and a wall-clock guard stops training early if it would not.

Training goes through the engine's ``train()`` generator with the fold's split (config
``fold``/``folds``); the final checkpoint is then scored on the validation part with tiled
prediction (overlap 0.5; in 2D TTA over the 4 mirror flips). The validation part
is never used to choose anything:
``--checkpoint best`` (the best validation Dice seen during training) is there for comparison
but picks the model on the very data it is scored on, which flatters it.

- isbi2012: ``membrane_dice`` (hard, class 1 = membrane = file value 0), ``mean_dice`` (hard,
  both classes), ``soft_dice`` (the reference's soft two-class Dice with a squared
  denominator, per image then averaged: metrics.soft_dice_reference), ``pixel_error``.
- dagm2007: ``per_image_dice`` (the reference metric: per-image Dice at threshold 0.5, an
  empty prediction on an empty mask = 1.0, averaged) and ``defect_dice`` (the same, averaged
  over the defective images alone).
- brats2013, brats2021: ``wt_dice``, ``tc_dice``, ``et_dice`` (whole tumour 1-4, core 1/3/4,
  enhancing 4), per volume, averaged (each case's own line is printed too). Four folds over the
  cases (2021: seven cases, validation parts of 2, 2, 2 and 1). The CPU recipe is the field's:
  the ``brats`` preset (per-case z-score, the three regions as sigmoid outputs) trained and
  predicted at half resolution (``resample=2``), mirror TTA.
- always ``minutes`` (wall time of the whole command).

``--extra-eval IMAGES MASKS`` (repeatable) scores the trained model(s) on other labelled data in
the data set's own format and prints ``extra: key=value ...``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from napari_unet import runs  # noqa: E402
from napari_unet.choices import REGION_SETS  # noqa: E402
from napari_unet.engine import (  # noqa: E402
    Progress,
    Validation,
    evaluate,
    load_checkpoint,
    load_dataset,
    load_models,
    preset_config,
    train,
)
from napari_unet.engine.data.dataset import (  # noqa: E402
    Dataset,
    dagm_pairs,
    dataset_from_pairs,
    split_folds,
)
from napari_unet.engine.labels import region_values  # noqa: E402
from napari_unet.engine.metrics import region_dice  # noqa: E402
from napari_unet.engine.prediction.predict import keep_largest_object  # noqa: E402
from napari_unet.engine.runtime import amp_reason, resolve_amp, resolve_device  # noqa: E402
from napari_unet.engine.training.calibration import seconds_per_step  # noqa: E402

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
FOLDERS = {"isbi2012": "isbi2012", "dagm2007": "dagm2007_class1", "brats2013": "brats2013",
           "brats2021": "brats2021"}
PRESETS = {"isbi2012": "isbi2012", "dagm2007": "industrial", "brats2013": "brats",
           "brats2021": "brats"}
BRATS = ("brats2013", "brats2021")
FOLDS = {"isbi2012": 5, "dagm2007": 5, "brats2013": 4, "brats2021": 4}
CPU_MINUTES = {"isbi2012": 25, "dagm2007": 15, "brats2013": 30, "brats2021": 30}
# the run's own labels, then postprocessed: whole-tumour parts around a core kept, the largest
BRATS_KEYS = tuple(f"{region}{post}_dice" for post in ("", "_cored", "_largest")
                   for region in ("wt", "tc", "et"))
KEYS = {"isbi2012": ("membrane_dice", "mean_dice", "soft_dice", "pixel_error"),
        "dagm2007": ("per_image_dice", "defect_dice"),
        "brats2013": BRATS_KEYS, "brats2021": BRATS_KEYS}

# The CPU recipes (chosen for a 2-core machine; the steps come from the calibration).
# Minutes of each budget kept back for calibration, validation and the final evaluation.
CPU_RESERVE_MINUTES = {"isbi2012": 2.0, "dagm2007": 2.0, "brats2013": 4.0, "brats2021": 4.0}
CPU_RECIPES = {
    # Padded UNet, 5 levels (16-32-64-128-256, 1.9 M parameters), batch norm so that a high
    # Adam lr trains fast; 256x256 crops; the reference's flips, crop-resize and brightness
    # plus all four rotations; 1 - Dice + CE as the reference. (The U-Net paper's elastic
    # deformation, elastic=0.5 with 8 px on 3x3 control points, did not help in this budget:
    # mean Dice 0.8847 against 0.887-0.890 without; benchmarks/RESULTS.md.)
    "isbi2012": dict(
        model_options={"padding": "same", "base_channels": 16, "depth": 5, "norm": "batch",
                       "dropout": 0.0},
        patch_size=[256, 256], batch_size=4, optimizer="adam", lr=2e-3, weight_decay=1e-5,
        lr_schedule="cosine", warmup_steps=50, loss="dice_ce", amp="auto",
        hflip=0.5, vflip=0.5, rot90=[0, 1, 2, 3], crop_resize=[0.8, 1.0], brightness=0.2,
        val_tile_size=[512, 512], val_overlap=0.25,
    ),
    # TinyUNet at half width (16-16-32-64, bottleneck 128), 256x256 crops with half of them
    # centred on a defect; 2-class softmax with 1 - Dice (defect) + CE: it finds the defects
    # in the first few hundred steps, where the reference's adaptive BCE -> Dice loss spends
    # them on background (fold 0 on a shared CPU: validation Dice 0.0 at step 158, 0.25 at
    # 316); Adam + cosine.
    "dagm2007": dict(
        model_options={"base_channels": 16}, patch_size=[256, 256], batch_size=8,
        optimizer="adam", lr=1e-3, weight_decay=1e-5, lr_schedule="cosine", warmup_steps=30,
        loss="dice_ce_foreground", amp="auto", foreground_oversample=0.5,
        hflip=0.5, vflip=0.5, rot90=[0, 1, 2, 3], brightness=0.0,
        val_tile_size=[512, 512], val_overlap=0.25,
    ),
    # 3D-UNet (No New-Net blocks) at half width, 5 levels 16-32-64-128-128, 64^3 crops,
    # half of them centred on tumour; Dice (foreground) + CE; Adam + cosine; flips on every
    # axis, brightness and a per-modality contrast change (three training cases only: the
    # held-out case differs in contrast, e.g. pat0005's FLAIR tumour is at most half as bright).
    "brats2013": dict(
        model_options={"base_channels": 16, "max_channels": 128, "depth": 5},
        patch_size=[64, 64, 64], batch_size=2, optimizer="adam", lr=1e-3, weight_decay=0.0,
        lr_schedule="cosine", warmup_steps=30, loss="dice_ce_foreground", amp="auto",
        foreground_oversample=0.5, flip_all_axes=True, brightness=0.1, contrast=0.25,
        val_overlap=0.25,
    ),
}
# BraTS 2021 (four modalities, raw intensities): what the field does, scaled to a CPU. Each
# case z-scored per channel inside the brain; the three BraTS regions as overlapping sigmoid
# outputs; training and prediction at half resolution (2 mm), so a 64^3 patch sees 128 mm,
# most of a brain, and the probabilities are interpolated back to 1 mm before scoring.
# BraTS 2013 (two modalities, z-scored already) runs the same recipe: its label 3 belongs to
# the tumour core, and the dim case the softmax recipe above lost (pat0005) is the test of it.
CPU_RECIPES["brats2021"] = dict(
    CPU_RECIPES["brats2013"], normalization="zscore_case", regions="brats", resample=2,
    loss="dice_ce", foreground_oversample=0.5, patch_size=[64, 64, 64], val_tile_size=None,
    gamma=0.3, low_resolution=0.25)  # chosen on fold 1 (issue 25), as in the brats preset
CPU_RECIPES["brats2013"] = CPU_RECIPES["brats2021"]
# Final evaluation: tile size, overlap and TTA per data set (CPU budget).
CPU_EVAL = {"isbi2012": dict(tile_size=[512, 512], overlap=0.5, tta="mirror"),
            "dagm2007": dict(tile_size=[512, 512], overlap=0.5, tta="mirror"),
            "brats2013": dict(tile_size=[64, 64, 64], overlap=0.5, tta="mirror"),
            "brats2021": dict(tile_size=[64, 64, 64], overlap=0.5, tta="mirror")}
REFERENCE_EVAL = {"isbi2012": dict(overlap=0.5, tta="mirror"),
                  "dagm2007": dict(overlap=0.5, tta="mirror"),
                  "brats2013": dict(overlap=0.5, tta="mirror"),
                  "brats2021": dict(overlap=0.5, tta="mirror")}
STEP_OVERHEAD = 1.03  # validation passes during training, on top of the timed steps
# --tiny (the test suite: every path once, in seconds): the first samples, 2 steps of a narrow
# network on small windows, no calibration, prediction without TTA
TINY_SAMPLES, TINY_STEPS = 10, 2
TINY_PATCH = {"isbi2012": [64, 64], "dagm2007": [64, 64], "brats2013": [32, 32, 32],
              "brats2021": [32, 32, 32]}
TINY_TILE = {"isbi2012": [512, 512], "dagm2007": [512, 512], "brats2013": [64, 64, 64],
             "brats2021": [64, 64, 64]}  # few tiles: a tiny network is quick on big ones


# ------------------------------------------------------------------------------ data
def load(dataset_name: str, data_root: Path) -> Dataset:
    return load_dataset(data_root / FOLDERS[dataset_name])


def load_extra(dataset_name: str, images: Path, masks: Path) -> Dataset:
    """Other labelled data in the data set's own format: a file or a folder each."""
    if dataset_name == "isbi2012":  # membrane is the file's 0
        return load_dataset(images=images, masks=masks, foreground_value=0, spatial_dims=2)
    if dataset_name in BRATS:
        if images == masks and images.is_dir():  # a folder in the BraTS layout
            return load_dataset(images)
        return load_dataset(images=images, masks=masks, spatial_dims=3)
    # DAGM: NNNN.PNG with Label/NNNN_label.PNG (or same-name masks); no mask file = no defect
    pairs = dagm_pairs(images, masks) if images.is_dir() and masks.is_dir() else [(images, masks)]
    return dataset_from_pairs(pairs, spatial_dims=2)


# ------------------------------------------------------------------------------ configs
def tiny_config(dataset_name: str, config):
    """The recipe at a size that runs in seconds (--tiny)."""
    options = dict(config.model_options or {}, base_channels=4)
    if "max_channels" in options:
        options["max_channels"] = 16
    return config.replace(patch_size=TINY_PATCH[dataset_name], batch_size=1,
                          model_options=options, val_tile_size=TINY_TILE[dataset_name],
                          val_every=config.steps)


def precision(config) -> str:
    """The precision the recipe runs in on this machine (auto: bf16 only where the CPU or GPU
    computes it natively), printed with its reason."""
    device = resolve_device(config.device)
    amp, _ = resolve_amp(device, config.amp)
    if config.amp == "auto":
        print(f"precision: {amp} ({amp_reason(device, amp)})", flush=True)
    return amp


def make_config(dataset_name: str, budget: str, fold: int, steps=None, extra=None):
    """The fold's config: the preset, the budget's recipe, then `extra` (``--set``)."""
    preset = PRESETS[dataset_name]
    overrides = dict(fold=fold, folds=FOLDS[dataset_name], split_seed=0, seed=0)
    if dataset_name == "isbi2012":
        overrides["foreground_value"] = 0
    if budget == "cpu":
        overrides.update(CPU_RECIPES[dataset_name])
        overrides["device"] = "cpu"
        if steps is not None:
            overrides["steps"] = steps
            overrides["val_every"] = max(1, steps // (3 if dataset_name in BRATS else 5))
            overrides["checkpoint_every"] = overrides["val_every"]
            overrides["log_every"] = max(1, steps // 200)
    return preset_config(preset, **{**overrides, **(extra or {})})


def parse_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--set``: the value read as JSON (numbers, lists, true), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: write KEY=VALUE, e.g. gamma=0.3")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


# ------------------------------------------------------------------------------ training
def train_fold(config, dataset: Dataset, run_dir: Path, deadline: float | None,
               which: str = "last"):
    """Run the engine's train() to its end (or to the deadline); return the curve and the path
    of the `which` ("last" or "best") checkpoint."""
    curve = {"step": [], "loss": [], "val_step": [], "val_dice": []}
    # the Dataset as it is: its masks are class indices already (ISBI: membrane = 1)
    events = train(config, dataset, run_dir=run_dir)
    last_print, stopped_early = 0.0, False
    try:
        for event in events:
            if isinstance(event, Progress):
                curve["step"].append(event.step)
                curve["loss"].append(event.loss)
                now = time.monotonic()
                if now - last_print > 60 or event.step == event.total:
                    print(f"  step {event.step}/{event.total} loss={event.loss:.4f} "
                          f"lr={event.lr:.2e} img/s={event.img_s:.1f}", flush=True)
                    last_print = now
                if deadline is not None and now > deadline:
                    print(f"  wall-clock guard: stopping at step {event.step} of {event.total}",
                          flush=True)
                    stopped_early = True
                    break
            elif isinstance(event, Validation):
                curve["val_step"].append(event.step)
                curve["val_dice"].append(event.dice)
                print(f"  validation step {event.step}: dice={event.dice:.4f}"
                      f"{' (best)' if event.best else ''}", flush=True)
    finally:
        events.close()
    path = runs.find_checkpoint(run_dir, prefer=runs.BEST if which == "best" else runs.LAST)
    return curve, path, stopped_early


# ------------------------------------------------------------------------------ evaluation
def evaluate_model(dataset_name: str, checkpoint, data: Dataset, eval_options: dict) -> dict:
    """The data set's metrics of a checkpoint on labelled data, by the engine's ``evaluate``
    (the one the CLI runs), plus the per-image predictions (for the overlay)."""
    options = dict(amp="auto" if checkpoint.config.amp != "off" else "off", device="cpu"
                   if not torch.cuda.is_available() else "auto", batch_size=4, **eval_options)
    if dataset_name == "dagm2007":  # the reference metric: per-image Dice at threshold 0.5
        options["threshold"] = 0.5
    metrics = evaluate(checkpoint, data, per_image=True, keep_labels=True, **options)
    images = metrics["images"]
    predictions = [image["labels"] for image in images]
    if dataset_name == "isbi2012":
        return dict(membrane_dice=metrics["dice_per_class"][1], mean_dice=metrics["mean_dice"],
                    soft_dice=metrics["soft_dice"], pixel_error=metrics["pixel_error"]), \
            predictions
    if dataset_name == "dagm2007":
        defective = [image["dice"] for image in images if image["foreground"]]
        return dict(per_image_dice=metrics["per_image_dice"],
                    defect_dice=float(np.mean(defective)) if defective else float("nan")), \
            predictions
    brats = REGION_SETS["brats"]  # the BraTS evaluation regions, whatever the model trained
    core = region_values(brats["regions"])[1:]  # the labels of the core (1 and 4)
    regions = {f"{key}{post}": [] for post in ("", "_cored", "_largest") for key in brats["keys"]}
    for image, mask in zip(images, data.masks):
        case = {}
        for post, values in (("", ()), ("_cored", core), ("_largest", None)):
            labels = np.array(image["labels"])
            if values is not None:  # postprocessing, scored beside the run's own labels
                keep_largest_object(labels, values)
            case.update({f"{k}{post}": v for k, v in zip(brats["keys"], region_dice(
                labels, np.asarray(mask), brats["regions"]))})
        for region, value in case.items():
            regions[region].append(value)
        print(f"  case={image['name']} " + format_pairs({f"{k}_dice": v for k, v in case.items()}),
              flush=True)
    return {f"{k}_dice": float(np.mean(v)) for k, v in regions.items()}, predictions


def score_runs(name: str, args) -> int:
    """--score: the runs' final checkpoints (several: their ensemble) on the --extra-eval data,
    with the budget's evaluation settings."""
    models = load_models([runs.find_checkpoint(run, runs.LAST) if Path(run).is_dir() else run
                          for run in args.score])
    eval_options = dict(CPU_EVAL[name] if args.budget == "cpu" else REFERENCE_EVAL[name])
    if args.tiny:
        eval_options.update(tile_size=TINY_TILE[name], tta=False)
    for images, masks in args.extra_eval:
        data = load_extra(name, Path(images), Path(masks))
        result, _ = evaluate_model(name, models, data, eval_options)
        print(f"extra: runs={','.join(map(str, args.score))} images={images} masks={masks} "
              f"samples={len(data)} {format_pairs(result)}", flush=True)
    return 0


def format_pairs(values: dict) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in values.items())


# ------------------------------------------------------------------------------ pictures
def _font(size: int):
    from PIL import ImageFont
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def _panel(draw, box, xs_list, ys_list, colors, labels, title, y_range=None, x_max=None):
    left, top, right, bottom = box
    font, small = _font(15), _font(12)
    draw.rectangle(box, outline="black")
    draw.text((left, top - 22), title, fill="black", font=font)
    finite = [y for ys in ys_list for y in ys if math.isfinite(y)]
    lo, hi = y_range or (min(finite, default=0.0), max(finite, default=1.0))
    hi = hi if hi > lo else lo + 1.0
    x_max = x_max or max((max(xs) for xs in xs_list if len(xs)), default=1)
    for i in range(5):
        value = lo + (hi - lo) * i / 4
        y = bottom - (bottom - top) * i / 4
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.line([(left, y), (right, y)], fill=(225, 225, 225))
        draw.text((left - 48, y - 7), f"{value:.3g}", fill="black", font=small)
    for i in range(5):
        value = x_max * i / 4
        x = left + (right - left) * i / 4
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        draw.text((x - 12, bottom + 6), f"{int(value)}", fill="black", font=small)
    draw.text(((left + right) // 2 - 15, bottom + 22), "step", fill="black", font=small)
    for n, (xs, ys, color, label) in enumerate(zip(xs_list, ys_list, colors, labels)):
        points = [(left + (right - left) * x / x_max,
                   bottom - (bottom - top) * (min(max(y, lo), hi) - lo) / (hi - lo))
                  for x, y in zip(xs, ys) if math.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for px, py in points if len(points) < 40 else []:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        draw.line([(right - 150, top + 14 + 18 * n), (right - 125, top + 14 + 18 * n)],
                  fill=color, width=3)
        draw.text((right - 120, top + 6 + 18 * n), label, fill="black", font=small)


def save_curve(path: Path, curve: dict, title: str, val_label: str):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (1100, 420), "white")
    draw = ImageDraw.Draw(image)
    draw.text((20, 8), title, fill="black", font=_font(15))
    steps, loss = np.asarray(curve["step"], float), np.asarray(curve["loss"], float)
    smooth, value = [], None
    for x in loss:  # exponential moving average over ~2 % of the run
        alpha = 2.0 / (max(10, len(loss) // 50) + 1)
        value = x if value is None else value + alpha * (x - value)
        smooth.append(value)
    x_max = float(steps.max()) if steps.size else 1.0
    _panel(draw, (80, 70, 520, 360), [steps, steps], [loss, smooth],
           [(190, 190, 230), (30, 60, 200)], ["loss", "loss (EMA)"], "training loss",
           y_range=(0.0, float(np.nanpercentile(loss, 99)) if loss.size else 1.0), x_max=x_max)
    dice = curve["val_dice"]
    if dice:
        lo = max(0.0, min(dice, default=0.0) - 0.05)
        _panel(draw, (630, 70, 1070, 360), [curve["val_step"]], [dice], [(200, 40, 40)],
               [val_label], "validation Dice (during training)", y_range=(lo, 1.0),
               x_max=x_max)
    else:
        draw.text((630, 200), "no validation part (trained on every sample)", fill="black",
                  font=_font(15))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def save_overlay(path: Path, image: np.ndarray, truth: np.ndarray, pred: np.ndarray, title: str):
    """Grey image; green = both, red = truth only (missed), blue = prediction only (extra)."""
    from PIL import Image, ImageDraw

    grey = image.astype(np.float64)
    lo, hi = np.percentile(grey, [0.5, 99.5])
    grey = np.clip((grey - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat((grey * 255)[..., None], 3, axis=2)
    truth, pred = truth > 0, pred > 0
    for region, color in ((truth & pred, (0, 220, 0)), (truth & ~pred, (255, 30, 30)),
                          (~truth & pred, (40, 120, 255))):
        rgb[region] = 0.45 * rgb[region] + 0.55 * np.asarray(color)
    side = np.repeat((grey * 255)[..., None], 3, axis=2)
    zoom = max(1, math.ceil(480 / side.shape[1]))  # small slices (BraTS) are enlarged
    side, rgb = (np.repeat(np.repeat(a, zoom, axis=0), zoom, axis=1) for a in (side, rgb))
    both = np.concatenate([side, np.full((side.shape[0], 8, 3), 255.0), rgb], axis=1)
    canvas = Image.new("RGB", (both.shape[1], both.shape[0] + 56), "white")
    canvas.paste(Image.fromarray(both.astype(np.uint8)), (0, 56))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), title, fill="black", font=_font(15))
    draw.text((6, 28), "left: image; right: green = prediction and truth, red = missed "
                       "(truth only), blue = extra (prediction only)", fill="black", font=_font(12))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def overlay_for(dataset_name: str, data: Dataset, predictions: list):
    """(image 2D, truth 2D, prediction 2D, which) of one validation sample worth showing."""
    if dataset_name in BRATS:
        index = 0
        truth3 = np.asarray(data.masks[index]) > 0
        z = int(np.argmax(truth3.sum(axis=(1, 2))))
        return (np.asarray(data.images[index][0, z]), truth3[z], predictions[index][z] > 0,
                f"{data.names[index]} axial slice {z}, FLAIR, whole tumour")
    index = 0
    if dataset_name == "dagm2007":
        index = next((i for i, m in enumerate(data.masks) if np.any(m)), 0)
    return (np.asarray(data.images[index][0]), np.asarray(data.masks[index]),
            predictions[index], data.names[index])


# ------------------------------------------------------------------------------ main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=list(FOLDERS))
    parser.add_argument("--budget", default="cpu", choices=["cpu", "reference"])
    parser.add_argument("--fold", type=int, default=None, help="run one fold (all when absent)")
    parser.add_argument("--extra-eval", nargs=2, action="append", default=[],
                        metavar=("IMAGES", "MASKS"), help="other labelled data to score")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: a temp dir)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="override the CPU budget per fold (minutes, everything included)")
    parser.add_argument("--steps", type=int, default=None,
                        help="CPU budget: use this many steps instead of the calibrated count "
                             "(when other jobs share the cores, the calibration overestimates)")
    parser.add_argument("--checkpoint", default="last", choices=["last", "best"],
                        help="score the final model (default) or the one with the best "
                             "validation Dice during training (chosen on the scored data)")
    parser.add_argument("--figures", type=Path, default=None,
                        help="write a learning curve and an overlay PNG per fold here")
    parser.add_argument("--channels", type=int, nargs="+", default=None, metavar="C",
                        help="train on these image channels only (e.g. BraTS 2021's FLAIR and "
                             "T1c, 0 2, the two modalities of BraTS 2013)")
    parser.add_argument("--train-all", action="store_true",
                        help="train on every sample (no validation part) and score the "
                             "--extra-eval data only: a check on data from elsewhere")
    parser.add_argument("--set", type=parse_setting, action="append", default=[],
                        metavar="KEY=VALUE", help="change one option of the recipe (repeatable), "
                        "e.g. --set gamma=0.3: what a recipe change is measured with")
    parser.add_argument("--score", nargs="+", type=Path, default=None, metavar="RUN",
                        help="train nothing: score these runs' final checkpoints on the "
                             "--extra-eval data (several: their ensemble, as predict --run A "
                             "--run B)")
    parser.add_argument("--tiny", action="store_true",
                        help=f"a check that every path runs (the test suite): the first "
                             f"{TINY_SAMPLES} samples, fold 0, {TINY_STEPS} steps of a narrow "
                             "network, no calibration, no TTA")
    args = parser.parse_args(argv)
    if args.tiny:
        args.fold, args.steps, args.budget = 0 if args.fold is None else args.fold, \
            TINY_STEPS, "cpu"

    started = time.monotonic()
    name = args.dataset
    if args.score:
        if not args.extra_eval:
            parser.error("--score scores --extra-eval data: give some")
        return score_runs(name, args)
    folds = FOLDS[name]
    if args.fold is not None and not 0 <= args.fold < folds:
        parser.error(f"--fold must be in 0..{folds - 1} for {name}")
    fold_list = [args.fold] if args.fold is not None else list(range(folds))
    if args.train_all:
        if not args.extra_eval:
            parser.error("--train-all scores --extra-eval data only: give some")
        fold_list = [None]
    dataset = load(name, args.data_root)
    if args.tiny:
        dataset = dataset.subset(range(min(TINY_SAMPLES, len(dataset))))
    if args.channels:
        if max(args.channels) >= dataset.in_channels or min(args.channels) < 0:
            parser.error(f"--channels: {name} has channels 0..{dataset.in_channels - 1}")
        dataset = Dataset([image[args.channels] for image in dataset.images], dataset.masks,
                          dataset.names, dataset.spatial_dims)
    extras = [(Path(i), Path(m), load_extra(name, Path(i), Path(m))) for i, m in args.extra_eval]
    out_root = args.out or Path(tempfile.mkdtemp(prefix=f"accuracy_{name}_"))
    torch.manual_seed(0)
    print(f"dataset={name} samples={len(dataset)} budget={args.budget} folds={fold_list} "
          f"torch={torch.__version__} threads={torch.get_num_threads()} out={out_root}",
          flush=True)

    per_fold, extra_results = [], []
    for fold in fold_list:
        fold_start = time.monotonic()
        deadline = None
        config = make_config(name, args.budget, fold, extra=dict(args.set))
        eval_options = dict(CPU_EVAL[name] if args.budget == "cpu" else REFERENCE_EVAL[name])
        if args.tiny:
            config = tiny_config(name, make_config(name, args.budget, fold, steps=args.steps,
                                                    extra=dict(args.set)))
            eval_options.update(tile_size=TINY_TILE[name], tta=False)
        elif args.budget == "cpu":
            minutes = args.minutes or CPU_MINUTES[name]
            seconds = seconds_per_step(config, dataset, seconds=20.0)
            train_seconds = (minutes - CPU_RESERVE_MINUTES[name]) * 60 - (time.monotonic()
                                                                           - fold_start)
            steps = max(50, int(train_seconds / (seconds * STEP_OVERHEAD)))
            if args.steps:
                print(f"calibration suggests {steps} steps; --steps {args.steps} given", flush=True)
                steps = args.steps
            config = make_config(name, args.budget, fold, steps=steps, extra=dict(args.set))
            deadline = fold_start + (minutes - CPU_RESERVE_MINUTES[name] * 0.6) * 60
            print(f"calibration: {seconds:.3f} s/step -> {steps} steps in "
                  f"{train_seconds / 60:.1f} min of training", flush=True)
        print(f"fold {fold}: config " + format_pairs(dict(
            model=config.model, model_options=str(config.model_options).replace(" ", ""),
            patch=config.patch_size, batch=config.batch_size, steps=config.steps,
            optimizer=config.optimizer, lr=config.lr, schedule=config.lr_schedule,
            warmup=config.warmup_steps, loss=config.loss, amp=precision(config),
            foreground_oversample=config.foreground_oversample, regions=config.regions, ema=config.ema,
            normalization=config.normalization, resample=config.resample)).replace(", ", ","), flush=True)
        print(f"fold {fold}: evaluation " + format_pairs(eval_options).replace(", ", ","),
              flush=True)
        run_dir = out_root / (f"fold{fold}" if fold is not None else "all")
        curve, path, stopped = train_fold(config, dataset, run_dir, deadline, args.checkpoint)
        checkpoint = load_checkpoint(path)
        for images, masks, data in extras:
            result, _ = evaluate_model(name, checkpoint, data, eval_options)
            extra_results.append(result)
            print(f"extra: fold={fold} images={images} masks={masks} samples={len(data)} "
                  f"{format_pairs(result)}", flush=True)
        if fold is None:
            if args.figures is not None:
                save_curve(args.figures / f"accuracy_{name}_all_curve.png", curve,
                           f"{name}, every sample, budget {args.budget}: {config.model} "
                           f"{format_pairs(config.model_options)}, {config.steps} steps", "")
            continue
        _, val_idx = split_folds(len(dataset), fold, folds, 0)
        val = dataset.subset(val_idx)
        metrics, predictions = evaluate_model(name, checkpoint, val, eval_options)
        fold_minutes = (time.monotonic() - fold_start) / 60
        print(f"fold={fold} checkpoint={args.checkpoint} step={checkpoint.step} val={','.join(val.names)} "
              f"{format_pairs(metrics)} minutes={fold_minutes:.1f}"
              f"{' stopped_early=1' if stopped else ''}", flush=True)
        per_fold.append(metrics)
        if args.figures is not None:
            tag = f"accuracy_{name}_fold{fold}"
            save_curve(args.figures / f"{tag}_curve.png", curve,
                       f"{name}, fold {fold}, budget {args.budget}: {config.model} "
                       f"{format_pairs(config.model_options)}, {config.steps} steps",
                       "mean Dice of WT, TC, ET" if config.regions else "foreground Dice")
            image2d, truth2d, pred2d, which = overlay_for(name, val, predictions)
            save_overlay(args.figures / f"{tag}_overlay.png", image2d, truth2d, pred2d,
                         f"{name} fold {fold}, validation {which}: " + format_pairs(metrics))

    mean = {k: float(np.mean([m[k] for m in per_fold])) for k in KEYS[name]} if per_fold else {}
    if extra_results:
        extra_mean = {k: float(np.mean([m[k] for m in extra_results])) for k in KEYS[name]}
        print("extra: " + format_pairs(extra_mean), flush=True)
    print(f"dataset={name} budget={args.budget} folds={','.join(map(str, fold_list))} "
          f"{format_pairs(mean)} minutes={(time.monotonic() - started) / 60:.1f}", flush=True)


if __name__ == "__main__":
    main()
