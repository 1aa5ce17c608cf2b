"""The run folder's layout, the training set and the choice lists: one home each, no torch.

These modules are what the CLI, the trainer, the runner and the widgets share, so they are
tested here without a viewer (and, for the import, without torch).
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet import choices, runs
from napari_unet.errors import CheckpointError, ConfigError, DataError
from napari_unet.training_set import (
    copy_training_set,
    describe_classes,
    mask_classes,
    pair_count,
    write_training_pairs,
)

ISBI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012"


def test_choices_runs_and_training_set_import_no_torch_and_no_qt():
    code = ("import sys; import napari_unet.choices, napari_unet.runs, napari_unet.training_set; "
            "from napari_unet.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'qtpy', 'napari') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _parser_choices(command, option):
    from napari_unet.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return tuple(next(a for a in sub._actions if option in a.option_strings).choices)


def test_every_face_offers_the_one_choice_list():
    from napari_unet.engine import PRESETS, TrainConfig
    from napari_unet.engine.prediction.sliding_window import tta_mode

    assert _parser_choices("train", "--preset") == choices.PRESET_CHOICES
    assert ("auto", *PRESETS) == choices.PRESET_CHOICES and tuple(PRESETS) == choices.PRESET_NAMES
    assert _parser_choices("benchmark", "--preset") == choices.PRESET_NAMES
    assert _parser_choices("train", "--amp") == choices.AMP_MODES
    assert _parser_choices("predict", "--device") == choices.DEVICES
    assert _parser_choices("predict", "--tta") == choices.TTA_MODES
    assert _parser_choices("train", "--sample") == choices.SAMPLES
    for mode in choices.TTA_MODES:
        assert tta_mode(mode) == mode
    for amp in choices.AMP_MODES:
        TrainConfig(amp=amp)
    with pytest.raises(ConfigError, match="amp must be one of auto, bf16, fp16, off"):
        TrainConfig(amp="fp8")
    for normalization in choices.NORMALIZATIONS:
        TrainConfig(normalization=normalization)


# -- the run folder ----------------------------------------------------------------------------
def test_a_run_folder_reads_back_what_the_trainer_wrote(tmp_path):
    from napari_unet.engine import TrainConfig

    folder = runs.RunFolder(tmp_path / "run")
    folder.prepare(TrainConfig(steps=30), resume=False)
    folder.log_progress(10, 0.5, 1e-4, 12.0)
    folder.log_progress(20, float("nan"), 1e-4, 12.0)  # a diverging step is not a point
    folder.log_validation(20, 0.75, [0.99, 0.75])
    with open(tmp_path / "run" / runs.METRICS, "a") as f:
        f.write('{"step": 30, "loss": 0.1')  # a line being written
    record = runs.read_run(tmp_path / "run")
    assert record.loss == [(10, 0.5)] and record.dice == [(20, 0.75)]
    assert record.total_steps == 30 and record.last_step == 20
    assert record.checkpoint is None and record.pid is None
    with open(tmp_path / "run" / runs.METRICS, "a") as f:
        f.write(', "lr": 0.0001}\n')
    loss, dice, offset = runs.read_metrics(tmp_path / "run" / runs.METRICS,
                                           record.metrics_offset)
    assert loss == [(30, 0.1)] and dice == []
    assert offset == (tmp_path / "run" / runs.METRICS).stat().st_size
    with pytest.raises(ConfigError, match="already holds a run"):
        (folder.last).write_bytes(b"")
        runs.RunFolder(tmp_path / "run").prepare(TrainConfig(), resume=False)
    with pytest.raises(FileNotFoundError, match="not a napari_unet run folder"):
        runs.read_run(tmp_path)


def test_find_checkpoint_prefers_best_then_last_and_says_what_is_missing(tmp_path):
    assert runs.find_checkpoint(tmp_path, required=False) is None
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        runs.find_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        runs.find_checkpoint(tmp_path / "nothing.pt")
    (tmp_path / runs.CHECKPOINTS).mkdir()
    last = tmp_path / runs.CHECKPOINTS / runs.LAST
    last.write_bytes(b"")
    assert runs.find_checkpoint(tmp_path) == last
    best = tmp_path / runs.CHECKPOINTS / runs.BEST
    best.write_bytes(b"")
    assert runs.find_checkpoint(tmp_path) == best
    assert runs.find_checkpoint(tmp_path, prefer=runs.LAST) == last
    assert runs.find_checkpoint(last) == last


def test_pid_file_names_the_live_child_only(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runs.write_pid_file(tmp_path, child.pid, child.args)  # at once: not yet exec'ed maybe
        assert runs.live_pid(tmp_path) == child.pid
        # a pid file older than the process that has the pid now: a recycled pid
        record = json.loads((tmp_path / runs.PID_FILE).read_text())
        record["started"] -= 3600
        (tmp_path / runs.PID_FILE).write_text(json.dumps(record))
        assert runs.live_pid(tmp_path) is None
        assert not runs.alive(child.pid)  # no pid file: only a napari_unet command line
    finally:
        child.kill()
        child.wait()
    runs.write_pid_file(tmp_path, child.pid, child.args)
    assert runs.live_pid(tmp_path) is None  # gone
    runs.remove_pid_file(tmp_path)
    assert not (tmp_path / runs.PID_FILE).exists()


def test_new_run_folders_never_collide(tmp_path):
    first = runs.new_run_folder(tmp_path)
    first.mkdir()
    second = runs.new_run_folder(tmp_path)
    assert second != first and not second.exists()
    (first / runs.CONFIG).write_text("steps: 5\n")
    assert runs.recent_runs(tmp_path) == [first]


# -- mask values -> classes: one rule ----------------------------------------------------------
def test_the_mask_rule_for_files_and_for_painted_layers():
    isbi = np.array([[0, 255], [255, 0]], np.uint8)
    assert mask_classes(isbi)[0].tolist() == [[0, 1], [1, 0]]
    inverted, _ = mask_classes(isbi, invert=True)
    assert inverted.tolist() == mask_classes(isbi, foreground_value=0)[0].tolist() \
        == [[1, 0], [0, 1]]
    instances = np.arange(40, dtype=np.uint16).reshape(5, 8)
    merged, was_merged = mask_classes(instances, instances="merge")
    assert was_merged and merged.tolist() == (instances != 0).astype(int).tolist()
    kept, was_merged = mask_classes(instances)  # files: 39 values are 39 classes
    assert not was_merged and kept.max() == 39
    with pytest.raises(DataError, match="0..255"):
        mask_classes(np.arange(300, dtype=np.uint16))
    assert mask_classes(np.arange(300, dtype=np.uint16), instances="merge")[1]
    with pytest.raises(DataError, match="invert needs a mask of one object class"):
        mask_classes(np.array([0, 1, 2]), invert=True)


def test_describe_classes_says_what_will_be_learned():
    labels = np.zeros((10, 10), np.uint8)
    labels[:2] = 255
    assert describe_classes(labels) == "learns value(s) 255: 20% of the pixels"
    assert describe_classes(labels, invert=True) \
        == "learns everything but value(s) 255: 80% of the pixels"
    assert describe_classes(labels, foreground_value=7) == "learns value 7: no object pixels"
    labels[5:] = 2
    # beside other classes 255 is the unlabelled value (Pascal VOC's void), said so in words
    assert describe_classes(labels) \
        == "learns value(s) 2: class 2 62%; 80% of the pixels labelled, the rest ignored"
    assert "instances merged" in describe_classes(np.arange(100).reshape(10, 10))
    tumour = np.zeros((100, 100), np.uint8)  # BraTS: classes of well under 1 % of a volume
    tumour[0, :43], tumour[1, :5] = 2, 4
    assert describe_classes(tumour) == "learns value(s) 2, 4: class 2 0.43%, class 4 0.05%"


# -- the training set ----------------------------------------------------------------------------
def test_training_pairs_from_layers_are_the_cli_s_data_set(tmp_path):
    """ISBI's files through the CLI (--data DIR: membrane = 0 is the object) and the same
    arrays written by the widgets with invert give the same training set."""
    from napari_unet.engine import load_dataset

    if (ISBI / "train-labels.tif").exists():
        images = tifffile.imread(ISBI / "train-volume.tif")[:3, :64, :64]
        labels = tifffile.imread(ISBI / "train-labels.tif")[:3, :64, :64]
    else:  # the same conventions, made up: 0 = membrane, 255 = cell interior
        images = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
        labels = np.where(np.indices((3, 64, 64))[2] % 8 == 0, 0, 255).astype(np.uint8)
    isbi = tmp_path / "isbi"
    isbi.mkdir()
    tifffile.imwrite(isbi / "train-volume.tif", images, photometric="minisblack")
    tifffile.imwrite(isbi / "train-labels.tif", labels, photometric="minisblack")
    from_cli = load_dataset(isbi, spatial_dims=2)

    report = write_training_pairs(tmp_path / "run" / runs.DATA, [("em", images, labels)], 2,
                                  invert=True)
    assert len(report["written"]) == 3 and pair_count(tmp_path / "run" / runs.DATA) == 3
    from_widget = load_dataset(tmp_path / "run" / runs.DATA, spatial_dims=2)
    for a, b in zip(from_cli.masks, from_widget.masks, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(from_cli.images, from_widget.images, strict=True):
        np.testing.assert_array_equal(a, b)
    assert from_cli.masks[0].mean() == pytest.approx((labels[0] == 0).mean())

    # written again: nothing doubles; a copy into a new run keeps every pair
    again = write_training_pairs(tmp_path / "run" / runs.DATA, [("em", images, labels)], 2,
                                 invert=True)
    assert again["written"] == [] and again["duplicates"] == 3
    assert copy_training_set(tmp_path / "run", tmp_path / "other" / runs.DATA) == 3
    names = sorted(p.name for p in (tmp_path / "other" / runs.DATA / "masks").iterdir())
    assert names == ["em_z0000.tif", "em_z0001.tif", "em_z0002.tif"]
    assert json.loads(json.dumps(report))["merged"] == []
