"""The CLI end to end on tiny data: train -> evaluate -> predict, events, exit statuses."""
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import process_support
import pytest
import tifffile
import torch
from process_support import cli, ignoring_sigint, read_events_until, start_cli, wait_for_exit

from napari_unet import engine
from napari_unet.cli import build_parser, main
from napari_unet.engine import load_checkpoint
from napari_unet.engine.checkpoint import read_checkpoint
from napari_unet.engine.events import from_json

TINY = ["--steps", "6", "--batch-size", "2", "--patch-size", "64", "--base-channels", "8",
        "--amp", "off", "--device", "cpu", "--val-every", "3", "--checkpoint-every", "3"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", "--preset", "industrial", "--sample", "em", "--fold", "0", "--loss",
                 "dice_ce", "--out", str(run), "--evaluate", "--predict",
                 str(run / "data" / "images.tif"), *TINY])
    assert code == 0
    return run


def test_train_writes_a_complete_run(trained_run):
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt",
                 "evaluation.json", "data/images.tif", "data/masks.tif",
                 "predictions/images_labels.tif", "predictions/images_probabilities.tif"):
        assert (trained_run / name).exists(), name
    probabilities = tifffile.imread(trained_run / "predictions" / "images_probabilities.tif")
    images = tifffile.imread(trained_run / "data" / "images.tif")
    assert probabilities.shape == images.shape and probabilities.dtype == np.float32
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0


def _printed_metrics(out):
    line = out.strip().splitlines()[-1]
    assert line.startswith("evaluation: ")
    return {key: float(value) for key, value in (item.split("=") for item in line.split()[1:])}


def test_evaluate_reproduces_the_validation_of_the_saved_checkpoint(trained_run, capsys):
    # what training wrote, read before `evaluate` rewrites evaluation.json
    at_training = json.loads((trained_run / "evaluation.json").read_text())
    validations = [json.loads(line) for line in
                   (trained_run / "metrics.jsonl").read_text().splitlines()]
    best_validation = max(r["val_dice"] for r in validations if "val_dice" in r)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(trained_run), "--sample", "em", "--fold", "0",
                 "--amp", "off", "--device", "cpu"]) == 0
    printed = _printed_metrics(capsys.readouterr().out)
    # the best checkpoint on its own validation fold gives the Dice validation reported
    assert printed["samples"] == 2  # em's 8 images in 5 folds: 2, 2, 2, 1, 1
    assert printed["foreground_dice"] == pytest.approx(best_validation, abs=1e-4)
    assert printed["mean_dice"] == pytest.approx(at_training["mean_dice"], abs=1e-4)
    assert printed["dice_class1"] == pytest.approx(at_training["dice_per_class"][1], abs=1e-4)
    rewritten = json.loads((trained_run / "evaluation.json").read_text())
    assert rewritten["mean_dice"] == pytest.approx(printed["mean_dice"], abs=1e-4)
    # all 8 images (half of them seen in training) are another figure
    assert main(["evaluate", "--run", str(trained_run), "--sample", "em", "--amp", "off",
                 "--device", "cpu"]) == 0
    assert _printed_metrics(capsys.readouterr().out)["samples"] == 8


def test_predict_never_overwrites_without_asking(trained_run, tmp_path, capsys):
    source = trained_run / "data" / "images.tif"
    out = tmp_path / "labels.tif"
    args = ["predict", "--run", str(trained_run), "--input", str(source), "--output", str(out),
            "--device", "cpu", "--amp", "off"]
    assert main(args) == 0
    before = out.stat().st_mtime_ns
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == before
    assert main(args + ["--overwrite", "--tta"]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == tifffile.imread(source).shape and set(np.unique(labels)) <= {0, 1}


def test_events_jsonl_round_trip(tmp_path, capsys):
    assert main(["train", "--preset", "industrial", "--sample", "dagm", "--out",
                 str(tmp_path / "r"), "--events", "jsonl", *TINY]) == 0
    events = [from_json(line) for line in capsys.readouterr().out.splitlines()]
    names = [type(e).__name__ for e in events]
    assert names[0] == "Started" and names[-1] == "Finished" and names.count("Progress") == 6


def _another_value(option):
    """A valid value of `option` that is not its default, as text for the command line."""
    kind = option.value_type
    if option.choices:
        return [next(c for c in option.choices if c != option.default)]
    if kind is bool:
        return []
    if option.name == "loss":
        return ["dice_ce"]
    if isinstance(option.default, list):
        return ["48"]
    return ["0.5"] if kind is float else ["3"]


def test_every_option_flag_reaches_the_config():
    from napari_unet.cli_commands import train_config
    from napari_unet.options import FLAGGED

    base = ["train", "--preset", "industrial", "--sample", "dagm", "--out", "r"]
    for option in FLAGGED:
        config = train_config(build_parser().parse_args(
            [*base, option.flag_name, *_another_value(option)]))
        assert getattr(config, option.name) != getattr(
            train_config(build_parser().parse_args(base)), option.name), option.name


# -- bad input: every subcommand, exit 2 with one line and no traceback --------------------------
QUICK = ["--steps", "1", "--batch-size", "1", "--patch-size", "32", "--base-channels", "4",
         "--amp", "off", "--device", "cpu"]
TRAIN_ERRORS = [
    ([], "exactly one data source"),
    (["--sample", "dagm", "--init-from", "nucleii"], "no such run folder, checkpoint or built-in"),
    (["--sample", "dagm", "--data", "{tmp}"], "exactly one data source"),
    (["--images", "{image}"], "--images needs --masks"),
    (["--sample", "dagm", "--set", "lr"], "KEY=VALUE"),
    (["--sample", "dagm", "--set", "lr=["], "not valid YAML"),
    (["--sample", "dagm", "--set", "steps=many"], "'steps' expects int"),
    (["--sample", "dagm", "--set", "learning_rate=1"], "unknown config key"),
    (["--sample", "dagm", "--steps", "0"], "steps must be at least 1"),
    (["--sample", "dagm", "--fold", "7", "--folds", "5"], "fold 7 is out of range"),
    (["--sample", "dagm", "--lr", "-1"], "lr must be positive"),
    (["--sample", "dagm", "--config", "{tmp}/missing.yaml"], "cannot read config"),
    (["--images", "{image}", "--masks", "{strokes}", "--predict", "{image}", "--predict-every",
      "5"], "add --live"),
    (["--images", "{image}", "--masks", "{strokes}", "--live", "--predict", "{image}",
      "--predict-every", "0"], "--predict-every 0"),
    (["--images", "{image}", "--masks", "{strokes}", "--live", "--predict-every", "5"],
     "add --predict IMAGE"),
    (["--images", "{image}", "--masks", "{strokes}", "--live"], "leave out --steps"),
    (["--sample", "dagm", "--live"], "--live watches the --masks files"),
    (["--sample", "dagm", "--init-from", "{tmp}/nowhere"], "no such run folder"),
    (["--sample", "dagm", "--device", "cuda"], "no CUDA GPU"),
    (["--sample", "dagm", "--nproc", "0"], "--nproc 0"),
    (["--images", "{tmp}/missing.tif", "--masks", "{image}"], "missing.tif"),
    # the mask rule against what the masks hold ({strokes}: 0 unknown, 1 background, 2 object;
    # {strokes255}: objects 255; {unpainted}: all 0; {dense}: 0/255; {void}: all 255)
    (["--images", "{image}", "--masks", "{unpainted}", "--unlabeled", "ignore"],
     "no mask holds a labelled pixel"),
    (["--images", "{image}", "--masks", "{strokes}", "--unlabeled", "ignore",
      "--background-value", "7"], "no mask holds the painted background value 7"),
    (["--images", "{image}", "--masks", "{dense}", "--unlabeled", "ignore"],
     "use --unlabeled background"),
    (["--images", "{image}", "--masks", "{strokes}", "--foreground-value", "3"],
     "no mask holds --foreground-value 3 (values found: 0, 1, 2)"),
    (["--images", "{image}", "--masks", "{strokes}", "--background-value", "1"],
     "add --unlabeled ignore"),
    (["--images", "{image}", "--masks", "{strokes}", "--unlabeled", "ignore",
      "--foreground-value", "1"], "--foreground-value and --background-value are both 1"),
    (["--images", "{image}", "--masks", "{strokes}", "--unlabeled", "ignore",
      "--ignore-value", "1"], "--ignore-value and --background-value are both 1"),
    (["--images", "{image}", "--masks", "{strokes}", "--ignore-value", "2",
      "--foreground-value", "2"], "--foreground-value and --ignore-value are both 2"),
    (["--images", "{image}", "--masks", "{unpainted}", "--ignore-value", "0"],
     "--ignore-value 0 leaves the masks no background"),
    (["--images", "{image}", "--masks", "{strokes255}", "--unlabeled", "ignore"],
     "for one object value, pass --foreground-value 255"),
    (["--images", "{image}", "--masks", "{void}", "--ignore-value", "255"],
     "every mask pixel holds --ignore-value 255"),
    (["--images", "{image}", "--masks", "{strokes}", "--unlabeled", "ignore",
      "--foreground-value", "0"], "it cannot be the --foreground-value"),
    # issue 32: checked before any data is read or any folder made
    (["--sample", "dagm", "--resume"], "holds no checkpoint to continue"),
    (["--sample", "dagm", "--out", "{run}", "--resume", "--init-from", "{run}"],
     "give one of them"),
    (["--sample", "em", "--out", "{run}"], "already holds a run: pass --resume"),
    (["--sample", "dagm", "--out", "{image}"], "is a file: give a folder"),
    (["--data", "{tmp}", "--out", "{tmp}"], "is the --data folder"),
    (["--sample", "dagm", "--predict", "{tmp}/missing.tif"], "--predict: "),
    (["--sample", "dagm", "--predict", "{tmp}"], "give one image"),
    (["--sample", "dagm", "--evaluate"], "add --fold K"),
    (["--sample", "dagm", "--lr", "nan"], "lr must be a finite number"),
    (["--sample", "dagm", "--seed", "-1"], "seed must be at least 0"),
    (["--sample", "dagm", "--set", "loss=nonsense"], "loss must be one of"),
    (["--sample", "dagm", "--set", "hflip=2"], "hflip must be in [0, 1]"),
    (["--sample", "dagm", "--set", "adam_betas=[2, 3]"], "adam_betas are two decays"),
    (["--sample", "dagm", "--folds", "1", "--fold", "0"], "needs 2 folds or more"),
    (["--sample", "dagm", "--config", "{image}"], "not a YAML file"),
    # found by the engine once the run folder exists: the folder is removed again
    (["--sample", "dagm", "--set", "spatial_dims=3"], "train with --set spatial_dims=2"),
    (["--sample", "dagm", "--base-channels", "0"], "base_channels=0"),
    (["--sample", "dagm", "--init-from", "{image}"], "image.tif is not a napari_unet checkpoint"),
    (["--sample", "dagm", "--nnodes", "2"], "needs --rdzv-endpoint"),
    (["--sample", "dagm", "--instances", "foreground"], "give --init-from a model of objects"),
    (["--sample", "dagm", "--instances", "foreground", "--init-from", "{run}"],
     "is no model of objects"),
    (["--sample", "dagm", "--node-rank", "1"], "add --nnodes N"),
    (["--sample", "dagm", "--rdzv-endpoint", "localhost:29400"], "add --nnodes N"),
]
EVALUATE_ERRORS = [
    (["--run", "{tmp}/nowhere", "--sample", "em"], "does not exist"),
    (["--run", "{run}"], "exactly one data source"),
    (["--run", "{run}", "--sample", "em", "--images", "{image}", "--masks", "{image}"],
     "exactly one data source"),
    (["--run", "{run}", "--images", "{image}"], "--images needs --masks"),
    (["--run", "{run}", "--sample", "em", "--fold", "9"], "fold 9"),
    (["--run", "{run}", "--sample", "em", "--tile-size", "0"], "tile_size"),
    (["--run", "{run}", "--sample", "em", "--overlap", "1.5"], "overlap"),
    (["--run", "{run}", "--sample", "blobs3d"], "not a 2D image"),
    (["--run", "{run}", "--images", "{image}", "--masks", "{dense}", "--unlabeled", "ignore"],
     "use --unlabeled background"),
    (["--run", "{run}", "--images", "{image}", "--masks", "{dense}", "--background-value",
      "1"], "add --unlabeled ignore"),
    (["--run", "{run}", "--images", "{image}", "--masks", "{image}", "--fold", "0"],
     "fewer than the run's 5 folds"),
]
PREDICT_ERRORS = [
    (["--input", "{image}", "--output", "{tmp}/o.tif", "--diameter", "-3"],
     "give the objects' diameter in pixels"),
    (["--input", "{image}", "--output", "{tmp}/o.tif", "--diameter", "big"],
     "give the objects' diameter in pixels"),
    (["--input", "{tmp}/missing.tif", "--output", "{tmp}/o.tif"], "missing.tif does not exist"),
    (["--input", "{image}", "--output", "{tmp}/o.tif", "--probabilities", "{image}"],
     "is the input image: write the probabilities to another file"),
    (["--input", "{image}", "--output", "{image}"], "is the input image"),
    (["--input", "{image}", "--output", "{tmp}/o.tif", "--tile-size", "0"], "tile_size"),
    (["--input", "{image}", "--output", "{tmp}/o.tif", "--tile-size", "-5"], "tile_size"),
    (["--input", "{image}", "--output", "{tmp}/o.tif", "--tile-size", "32", "32", "32"],
     "tile_size"),
    (["--input", "{image}", "--output", "{tmp}/o.tif", "--overlap", "1"], "overlap"),
    (["--input", "{image}", "--output", "{tmp}/o.tif", "--batch-size", "0"], "batch_size"),
    (["--input", "{image}", "--output", "{tmp}/o.tif", "--threshold", "2"], "threshold"),
    # issue 32
    (["--input", "{image}", "--output", "{tmp}/o.tif", "--resume"], "without them a prediction"),
    (["--input", "{image}", "--output", "{tmp}/o.tif", "--block", "64"], "add --workers N"),
    (["--input", "{image}", "--output", "{tmp}/o.tif", "--memory-limit", "1GiB"],
     "add --workers N"),
    (["--input", "{image}", "--output", "{tmp}/o.png"], "written as TIF or OME-Zarr"),
    (["--input", "{image}", "--output", "{tmp}/o.tif", "--probabilities", "{tmp}/o.jpg"],
     "written as TIF"),
    (["--input", "{image}", "--output", "{image}", "--overwrite"], "is the input image"),
    (["--input", "{image}", "--output", "{tmp}/o.tif", "--probabilities", "{tmp}/o.tif"],
     "would both be"),
    (["--input", "{tmp}", "--output", "{tmp}/o.tif"], "looks like a file name"),
    (["--input", "{tmp}", "--output", "{tmp}"], "holds the input images"),
    (["--input", "{image}", "--output", "{tmp}", "--overwrite"], "is a folder: for one input"),
    (["--input", "{image}", "--output", "{tmp}/o.zarr", "--workers", "2", "--memory-limit",
      "nonsense"], "--memory-limit nonsense: give a size"),
    (["--input", "{image}", "--output", "{tmp}/o.zarr", "--workers", "1", "--block", "0"],
     "--block 0"),
    (["--input", "{image}", "--output", "{tmp}/o.zarr", "--workers", "1", "--block", "8", "8",
      "8"], "one per axis of the 2D image"),
    (["--input", "{image}", "--output", "{tmp}/o.zarr", "--workers", "1", "--scheduler",
      "tcp://127.0.0.1:1"], "give one of them"),
    (["--input", "{image}", "--output", "{tmp}/o.zarr", "--scheduler", "nowhere"],
     "with its port"),
    (["--input", "{image}", "--output", "{tmp}/o.zarr", "--scheduler", "tcp://127.0.0.1:1",
      "--memory-limit", "1GiB"], "leave it out"),
    (["--input", "{image}", "--output", "{tmp}/o.zarr", "--workers", "1", "--probabilities",
      "{tmp}/p.tif"], "leave out --probabilities"),
    (["--input", "{image}", "--output", "{tmp}/o.zarr", "--workers", "1", "--batch-size", "0"],
     "batch_size=0"),
    (["--input", "{image}", "--output", "{tmp}/o.zarr", "--workers", "1", "--tile-size", "0"],
     "tile_size=[0, 0]"),
    (["--input", "{image}", "--output", "{tmp}/o.zarr", "--workers", "1", "--threshold", "2"],
     "threshold=2.0"),
]
EXPORT_ERRORS = [
    (["--format", "onnx", "--output", "{tmp}/m.zip"], "name the onnx file m.onnx"),
    (["--format", "torchscript", "--output", "{run}/checkpoints/best.pt", "--overwrite"],
     "would replace the run's checkpoint"),
    (["--format", "bioimageio", "--output", "{tmp}/m.onnx"], "a .zip file"),
    (["--format", "bioimageio", "--output", "{tmp}/m.zip", "--test-image", "{tmp}/no.tif"],
     "no.tif does not exist"),
    (["--format", "onnx", "--output", "{tmp}/m.onnx", "--test-image", "{image}"],
     "--test-image is the test input of a bioimage.io package"),
]
BENCHMARK_ERRORS = [
    (["--steps", "0"], "--steps 0"),
    (["--warmup", "-1"], "--warmup -1"),
    (["--size", "0"], "--size 0"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--base-channels", "0"], "base_channels=0"),
]
MATRIX = ([("train", a, w) for a, w in TRAIN_ERRORS]
          + [("evaluate", a, w) for a, w in EVALUATE_ERRORS]
          + [("predict", a, w) for a, w in PREDICT_ERRORS]
          + [("benchmark", a, w) for a, w in BENCHMARK_ERRORS]
          + [("export", a, w) for a, w in EXPORT_ERRORS])


@pytest.mark.parametrize("command, args, words", MATRIX,
                         ids=[f"{c}:{' '.join(a)}" for c, a, _ in MATRIX])
def test_bad_input_exits_2_with_one_line(trained_run, tmp_path, capsys, command, args, words):
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.zeros((64, 64), np.uint8))
    image_before = image.read_bytes()
    masks = {"unpainted": np.zeros((64, 64), np.uint8), "strokes": np.zeros((64, 64), np.uint8),
             "dense": np.zeros((64, 64), np.uint8), "void": np.full((64, 64), 255, np.uint8)}
    masks["strokes"][5:9, 5:30], masks["strokes"][40:44, 5:30] = 1, 2
    masks["dense"][20:40, 20:40] = 255
    masks["strokes255"] = np.where(masks["strokes"] == 2, 255, masks["strokes"]).astype(np.uint8)
    for name, mask in masks.items():
        tifffile.imwrite(tmp_path / f"{name}.tif", mask)
    filled = [a.format(tmp=tmp_path, image=image, run=trained_run,
                       **{name: tmp_path / f"{name}.tif" for name in masks}) for a in args]
    if command == "train":
        filled = ["--preset", "industrial", "--out", str(tmp_path / "run"), *QUICK, *filled]
    elif command == "predict":
        filled = ["--run", str(trained_run), "--amp", "off", "--device", "cpu", *filled]
    elif command == "export":
        filled = ["--run", str(trained_run), *filled]
    elif command == "benchmark":
        filled = ["--preset", "industrial", "--size", "32", "--base-channels", "4",
                  "--batch-size", "1", "--steps", "1", "--warmup", "0", "--device", "cpu",
                  *filled]
    capsys.readouterr()
    code = main([command, *filled])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("napari_unet: error: "), lines
    assert words in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert image.read_bytes() == image_before, "a user's file was overwritten"
    left = sorted(path.name for path in tmp_path.iterdir())
    expected = sorted(["image.tif", *(f"{name}.tif" for name in masks)])
    assert left == expected, f"a failed command left {sorted(set(left) - set(expected))} behind"


def test_a_cancel_while_the_steps_are_timed_says_nothing_was_kept(tmp_path, capsys,
                                                                  monkeypatch):
    """Issue 32: SIGTERM during --minutes' timing steps: no run folder, no checkpoint."""
    from napari_unet.engine.training import calibration

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what the CLI's SIGTERM handler raises

    monkeypatch.setattr(calibration, "seconds_per_step", interrupted)
    code = main(["train", "--preset", "industrial", "--sample", "dagm", "--minutes", "1",
                 "--out", str(tmp_path / "run"), *QUICK[2:]])
    err = capsys.readouterr().err
    assert code == 130
    assert "no checkpoint was written, nothing is kept: start the run again" in err
    assert "--resume" not in err and not (tmp_path / "run").exists()


def test_a_cancel_after_a_checkpoint_says_it_is_kept(tmp_path, capsys, monkeypatch):
    from napari_unet import cli_commands

    def cancelled(events, show):
        for event in events:
            show(event)
            if isinstance(event, engine.CheckpointSaved):
                raise KeyboardInterrupt

    monkeypatch.setattr(cli_commands, "drive", cancelled)
    code = main(["train", "--preset", "industrial", "--sample", "dagm", "--out",
                 str(tmp_path / "run"), *QUICK[2:], "--steps", "4", "--checkpoint-every", "2"])
    assert code == 130 and "checkpoint is saved (continue with --resume)" in \
        capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_a_run_without_validation_says_so_instead_of_a_nan_dice(tmp_path, capsys):
    assert main(["train", "--preset", "industrial", "--sample", "dagm", "--out",
                 str(tmp_path / "run"), *QUICK, "--val-every", "1", "--minutes", "5"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("finished at step 1: no validation (no --fold") and "nan" not in \
        err[-1]
    # both given: said before training which one counts
    assert "warning: --steps 1 and --minutes 5 given: the run trains 1 steps" in err[0]


def test_masks_of_other_dimensions_name_an_option_that_exists(tmp_path, capsys):
    """Issue 32: a 4D mask said "pass spatial_dims=2 or 3", an option nowhere; --set
    spatial_dims=3 (the option that exists) is honoured by --preset auto."""
    rng = np.random.default_rng(0)
    for name, shape in (("four", (2, 8, 32, 32)), ("flat", (40, 40)), ("volume", (6, 40, 40))):
        tifffile.imwrite(tmp_path / f"{name}.tif", rng.integers(0, 255, shape, np.uint8))
        tifffile.imwrite(tmp_path / f"{name}_mask.tif", (rng.random(shape) > 0.5).astype(np.uint8))

    def train(name, *flags):
        code = main(["train", "--images", str(tmp_path / f"{name}.tif"), "--masks",
                     str(tmp_path / f"{name}_mask.tif"), "--out", str(tmp_path / name / "run"),
                     "--steps", "1", "--patch-size", "16", "--base-channels", "4", "--amp",
                     "off", "--device", "cpu", *flags])
        return code, capsys.readouterr().err

    for flags in ([], ["--set", "spatial_dims=3"]):
        code, err = train("four", *flags)
        assert code == 2 and "a 4D mask (2, 8, 32, 32)" in err and "--masks DIR" in err
        assert "pass spatial_dims" not in err
    code, err = train("flat", "--set", "spatial_dims=3")
    assert code == 2 and "cannot label a 3D volume: train 2D images with --set spatial_dims=2" \
        in err
    code, err = train("volume", "--set", "spatial_dims=3")  # alone: a stack of 6 2D slices
    assert code == 0 and "spatial_dims = 3: given by the user" in err
    assert load_checkpoint(tmp_path / "volume" / "run").config.spatial_dims == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["volume"]


def test_user_errors_in_a_real_process_print_no_traceback(tmp_path):
    result = cli("train", "--preset", "industrial", "--images", tmp_path / "nope.tif",
                 "--masks", tmp_path / "nope.tif", "--out", tmp_path / "r")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"napari_unet: error: {tmp_path / 'nope.tif'} does not exist: check the path"]
    result = cli("predict", "--run", tmp_path, "--input", "x.tif", "--output", "y.tif")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("napari_unet: error: no checkpoint")
    assert len(result.stderr.strip().splitlines()) == 1


# -- benchmark -----------------------------------------------------------------------------------
def test_benchmark_prints_one_row_per_mode(capsys):
    assert main(["benchmark", "--preset", "industrial", "--size", "32", "--base-channels", "4",
                 "--batch-size", "2", "--steps", "2", "--warmup", "1", "--device", "cpu"]) == 0
    header, rule, *rows = capsys.readouterr().out.strip().splitlines()
    names = re.split(r"\s{2,}", header.strip())  # columns are 2+ spaces apart
    assert names[:3] == ["preset", "mode", "device"] and set(rule) <= {"-", " "}
    table = [dict(zip(names, re.split(r"\s{2,}", row.strip()))) for row in rows]
    assert all(len(row) == len(names) for row in table)
    assert [(r["preset"], r["mode"], r["device"], r["batch"]) for r in table] == [
        ("industrial", "train", "cpu", "2"), ("industrial", "predict", "cpu", "2")]
    for row in table:
        img_s, p50, p99 = float(row["img/s"]), float(row["p50 ms"]), float(row["p99 ms"])
        assert img_s > 0 and 0 < p50 <= float(row["p90 ms"]) <= float(row["p95 ms"]) <= p99
        float(row["GFLOP/img"]), float(row["TFLOP/s"])


def _offered_presets(command):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if "--preset" in a.option_strings).choices


@pytest.mark.parametrize("preset", _offered_presets("benchmark"))
def test_benchmark_runs_for_every_preset_the_cli_offers(preset, capsys):
    """The network is built from what the preset says it sees (a region preset trains its
    regions' loss); a preset without that fails here, not in a user's hands."""
    assert main(["benchmark", "--preset", preset, "--steps", "1", "--warmup", "0", "--size",
                 "16", "--base-channels", "2", "--batch-size", "1", "--device", "cpu"]) == 0
    header, _, *rows = capsys.readouterr().out.strip().splitlines()
    names = re.split(r"\s{2,}", header.strip())
    table = [dict(zip(names, re.split(r"\s{2,}", row.strip()))) for row in rows]
    assert [(r["preset"], r["mode"]) for r in table] == [(preset, "train"), (preset, "predict")]
    assert all(float(r["img/s"]) > 0 for r in table)


def test_benchmark_counts_the_flop_of_a_convolution_by_hand():
    from napari_unet.engine.benchmark import count_gflop
    from napari_unet.engine.config import preset_config

    config = preset_config("industrial", model_options={"base_channels": 4})
    forward = count_gflop(config, 1, 2, (64, 64), train=False)
    # the first 3x3 convolution alone: 2 * 9 * (1 -> 4 channels) per pixel of a 64x64 input
    assert forward * 1e9 > 2 * 9 * 1 * 4 * 64 * 64
    # a training step: the forward pass and a backward pass of about twice its cost
    assert 2.5 < count_gflop(config, 1, 2, (64, 64), train=True) / forward < 3.5


# -- cancelling ----------------------------------------------------------------------------------
ENDLESS = ["train", "--preset", "industrial", "--sample", "dagm", "--events", "jsonl", *TINY[2:],
           "--steps", "100000", "--checkpoint-every", "100000"]


@pytest.mark.parametrize("signum, preexec_fn", [
    (signal.SIGINT, None), (signal.SIGTERM, None),
    # the bug behind "the CLI SIGINT test timed out": a child of a background job starts with
    # SIGINT ignored, and Python then leaves it ignored unless the CLI installs its handler
    (signal.SIGINT, ignoring_sigint)], ids=["SIGINT", "SIGTERM", "SIGINT, started ignoring it"])
def test_a_signal_saves_a_checkpoint_and_exits_130(tmp_path, signum, preexec_fn):
    run = tmp_path / "r"
    with start_cli(*ENDLESS, "--out", run, stderr=subprocess.PIPE,
                   preexec_fn=preexec_fn) as process:
        read_events_until(process, lambda event: event["event"] == "Progress")
        process.send_signal(signum)
        assert wait_for_exit(process) == 130
        assert "cancelled" in process.stderr.read()
    saved = load_checkpoint(run / "checkpoints" / "last.pt", prefer="last.pt")
    assert saved.step >= 1  # the last completed step, however far the child got
    resumed = cli("train", "--preset", "industrial", "--sample", "dagm", "--out", run,
                  "--resume", *TINY[2:], "--steps", saved.step + 2, "--events", "jsonl")
    assert resumed.returncode == 0, resumed.stderr
    events = [json.loads(line) for line in resumed.stdout.splitlines()]
    assert events[0]["start_step"] == saved.step
    assert [e["step"] for e in events if e["event"] == "Progress"] == [saved.step + 1,
                                                                        saved.step + 2]


def _train_until_sigint(tmp_path, hook):
    """`train` in a child process (tests/sigint_child.py) with the SIGINT of `hook`, to its end
    (a lost one ends the run at step 50, exit 0): (exit status, steps reported, saved state).
    Fold 0 validates 2 images at step 3."""
    run = tmp_path / "run"
    done = process_support.run([sys.executable, Path(__file__).with_name("sigint_child.py"),
                                json.dumps(hook), *ENDLESS, "--steps", "50", "--fold", "0",
                                "--out", run])
    steps = [json.loads(line)["step"] for line in done.stdout.splitlines()
             if '"Progress"' in line]
    assert (run / "checkpoints" / "last.pt").exists(), done.stderr[-2000:]
    return done.returncode, steps, read_checkpoint(run / "checkpoints" / "last.pt")


@pytest.fixture(scope="module")
def cancelled_between_steps(tmp_path_factory):
    """The reference: Ctrl-C in the caller right after step 3 was reported (between steps)."""
    code, steps, state = _train_until_sigint(tmp_path_factory.mktemp("reference"),
                                             {"name": "reference"})
    assert code == 130 and steps == [1, 2, 3] and state["step"] == 3
    return state


@pytest.mark.parametrize("moment, name, call, after", [
    ("step", "train_step", 3, True),  # the third step
    ("checkpoint", "save_checkpoint", 1, False),  # best.pt of step 3
    ("validation", "validate", 1, False)],  # step 3's validation
    ids=["during a step", "during a checkpoint write", "during a validation"])
def test_a_sigint_at_any_moment_saves_whole_steps(cancelled_between_steps, tmp_path, moment,
                                                  name, call, after):
    hook = {"name": name, "call": call, "after": after}
    code, steps, state = _train_until_sigint(tmp_path, hook)
    assert code == 130
    assert steps == [1, 2, 3] and state["step"] == 3, moment
    if moment == "checkpoint":  # the write it interrupted was finished, not dropped
        assert read_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["step"] == 3
    # the weights, optimizer and schedule of step 3, bit for bit: a resume continues exactly
    reference = cancelled_between_steps
    for key, value in reference["model_state"].items():
        assert torch.equal(state["model_state"][key], value), (moment, key)
    assert state["scheduler"] == reference["scheduler"]
    for saved, expected in zip(state["optimizer"]["state"].values(),
                               reference["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(saved[k], expected[k]) for k in expected), moment
