"""The CLI end to end on tiny data: train -> evaluate -> predict, events, exit statuses."""
import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
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


def test_evaluate_prints_and_matches_train_evaluation(trained_run, capsys):
    assert main(["evaluate", "--run", str(trained_run), "--sample", "em", "--fold", "0",
                 "--amp", "off", "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    values = dict(item.split("=") for item in line.split()[1:])
    saved = json.loads((trained_run / "evaluation.json").read_text())
    assert float(values["mean_dice"]) == pytest.approx(saved["mean_dice"], abs=1e-4)
    assert "dice_class1" in values


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


def _run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "napari_unet.cli", *args], capture_output=True,
                          text=True, **kw)


def test_user_errors_exit_2_with_one_line(tmp_path):
    result = _run_cli("train", "--preset", "industrial", "--images", str(tmp_path / "nope.tif"),
                      "--masks", str(tmp_path / "nope.tif"), "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "nope.tif" in result.stderr
    result = _run_cli("predict", "--run", str(tmp_path), "--input", "x.tif", "--output", "y.tif")
    assert result.returncode == 2 and "no checkpoint" in result.stderr


def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path):
    run = tmp_path / "r"
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_unet.cli", "train", "--preset", "industrial", "--sample",
         "dagm", "--out", str(run), "--events", "jsonl", *TINY[2:], "--steps", "100000",
         "--checkpoint-every", "100000"], stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if json.loads(line)["event"] == "Progress":
            break
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    assert (run / "checkpoints" / "last.pt").exists()
    resumed = _run_cli("train", "--preset", "industrial", "--sample", "dagm", "--out", str(run),
                       "--resume", *TINY[2:], "--steps", "3", "--events", "jsonl")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.splitlines()[0])["start_step"] >= 1
