"""The Train widget under ``--preset auto``: the plan decides what the user leaves, the run is
as long as the minutes (or the steps, once set), and the plan the child sends is shown."""
from pathlib import Path

import numpy as np
import pytest
from gui_support import PLUGIN, gui, small_cpu_options  # noqa: E402
from process_support import deadline_ms  # noqa: E402

napari = pytest.importorskip("napari")

from napari_unet import runs  # noqa: E402
from napari_unet.cli import build_parser  # noqa: E402
from napari_unet.cli_progress import planned_text  # noqa: E402
from napari_unet.engine.events import Progress  # noqa: E402
from napari_unet.sample_data import SAMPLES  # noqa: E402
from napari_unet.widgets.train_fields import minutes_text, remaining_seconds  # noqa: E402

TRAIN_TIMEOUT_MS = deadline_ms(120)
FORCED = ("--steps", "--patch-size", "--batch-size", "--lr", "--base-channels", "--val-every")


def train_widget(viewer):
    images, masks = SAMPLES["dagm"](n=4, size=64)
    viewer.add_image(images, name="parts")
    viewer.add_labels(masks.astype(np.uint8), name="parts labels")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    return widget


def value_of(args, flag):
    return args[args.index(flag) + 1]


@gui
def test_auto_is_the_default_and_passes_only_what_the_user_set(make_napari_viewer):
    viewer = make_napari_viewer()
    train = train_widget(viewer)
    assert train.preset.currentText() == train.preset.itemText(0) == "auto"
    for field in (train.patch_size, train.batch_size, train.lr):
        assert field.value() == field.minimum() and field.specialValueText() == "planned"
    assert train.base_channels.currentText() == "planned"
    assert train.train_for.by_minutes.isChecked() and train.minutes.value() == 10
    assert train.train_for.estimate.text().startswith("about 10 minutes")

    args = train.cli_args("auto", Path("run"), 4)
    assert value_of(args, "--preset") == "auto" and float(value_of(args, "--minutes")) == 10
    assert not [flag for flag in FORCED if flag in args], "a field forces what the plan decides"
    assert "--amp" in args and "--device" in args
    parsed = build_parser().parse_args(["train", *args])
    assert (parsed.patch_size, parsed.batch_size, parsed.lr, parsed.steps) == (None,) * 4

    # a named preset fills the fields with its values (passed); auto leaves them again
    train.preset.setCurrentText("industrial")
    assert train.patch_size.specialValueText() == "preset default"
    named = train.cli_args("industrial", Path("run"), 4)
    assert "--patch-size" in named and "--batch-size" in named and "--minutes" in named
    train.preset.setCurrentText("auto")
    assert not [flag for flag in FORCED if flag in train.cli_args("auto", Path("run"), 4)]

    # what the user sets is passed; editing the steps makes them count, not the minutes
    train.patch_size.setValue(64)
    train.steps.setValue(2)
    assert train.train_for.by_steps.isChecked()
    args = train.cli_args("auto", Path("run"), 4)
    assert args[args.index("--patch-size"):][:3] == ["--patch-size", "64", "64"]
    assert value_of(args, "--steps") == "2" and "--minutes" not in args
    assert value_of(args, "--val-every") == "1" and "--batch-size" not in args
    train.minutes.setValue(3)
    assert train.train_for.by_minutes.isChecked()
    args = train.cli_args("auto", Path("run"), 4)
    assert float(value_of(args, "--minutes")) == 3 and "--steps" not in args

    # a volume keeps auto; the input-layout rule makes it 3D, as the CLI decides (the patch
    # the user set shrinks to the volume)
    viewer.add_image(np.zeros((48, 48, 48), np.float32), name="volume")
    train.image_combo.value = viewer.layers["volume"]
    assert train.preset.currentText() == "auto" and train._spatial_dims() == 3
    args = train.cli_args("auto", Path("run"), 4)
    assert args[args.index("--patch-size"):][:4] == ["--patch-size", "48", "48", "48"]


@gui
def test_the_compile_box_follows_the_plan_unless_the_user_sets_it(make_napari_viewer):
    """torch.compile: planned (partly checked, nothing passed: the plan decides, on a GPU by
    timing a compiled step), on (--compile) or off (compile=false, whatever the plan)."""
    from qtpy.QtCore import Qt

    from napari_unet.cli_commands import train_config
    from napari_unet.engine.plan import Plan

    viewer = make_napari_viewer()
    train = train_widget(viewer)
    box = train.compile
    assert box.checkState() == Qt.CheckState.PartiallyChecked and box.text().endswith("planned")
    plan = Plan(values={"compile": True}, fingerprint=None)  # a plan that compiles (a GPU)

    def compiled(args):
        return train_config(build_parser().parse_args(["train", *args]), plan).compile

    args = train.cli_args("auto", Path("run"), 4)
    assert "--compile" not in args and "compile=false" not in args and compiled(args)
    box.setCheckState(Qt.CheckState.Unchecked)
    args = train.cli_args("auto", Path("run"), 4)
    assert box.text().endswith("off") and "compile=false" in args and not compiled(args)
    box.setCheckState(Qt.CheckState.Checked)
    args = train.cli_args("auto", Path("run"), 4)
    assert box.text().endswith("on") and "--compile" in args and compiled(args)


def test_the_time_left_comes_from_the_steps_done():
    event = Progress(step=30, total=130, loss=0.5, lr=1e-3, img_s=4.0)
    assert remaining_seconds(event, start_step=10, elapsed_s=40.0) == 200.0
    assert remaining_seconds(event, start_step=30, elapsed_s=1.0) is None
    assert minutes_text(200.0) == "3 min" and minutes_text(20.0) == "20 s"


@gui
def test_the_bar_follows_a_run_that_refits_its_steps(make_napari_viewer, tmp_path):
    """Issue 36: a run fitted to minutes re-fits its steps while it trains (Progress.total
    changes, with an info Message): the bar, the curve and the status follow."""
    from napari_unet.engine.events import Message, Started

    train = train_widget(make_napari_viewer())
    train._on_started(Started(total_steps=40, start_step=0, run_dir="run", device="cpu"))
    for step, total in ((1, 40), (23, 40), (24, 74)):
        train._on_progress(Progress(step=step, total=total, loss=0.5, lr=1e-3, img_s=4.0))
        train._refresh_progress()
        assert (train.progress.maximum(), train.curve.total) == (total, total)
    train._on_message(Message("info", "the steps run faster than planned"))
    assert train.status.text() == "the steps run faster than planned"
    # a run followed from its folder (metrics.jsonl): the total from its config.yaml again
    (tmp_path / runs.CONFIG).write_text("steps: 90\n")
    train.run_dir, train.curve.total = tmp_path, 74
    train._on_watched_points([(80, 0.5)], [])
    assert (train.progress.maximum(), train.progress.value(), train.curve.total) == (90, 80, 90)


@gui
def test_an_auto_run_shows_its_plan(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    train = train_widget(viewer)
    run_dir = tmp_path / "run"
    small_cpu_options(train, run_dir, steps=2)  # base 8, patch 64, batch 2: set by the user
    train.predict_at_end.setChecked(False)
    seen = []
    for name in ("planned", "started", "finished"):
        getattr(train.runner, name).connect(lambda event, name=name: seen.append((name, event)))
    train.start_button.click()
    qtbot.waitUntil(lambda: train.runner.exit_code is not None, timeout=TRAIN_TIMEOUT_MS)
    assert train.runner.exit_code == 0, train.runner.stderr_text[-2000:]
    assert [name for name, _ in seen] == ["planned", "started", "finished"]
    planned = seen[0][1]
    assert train.plan_view.event == planned
    text = train.plan_view.text.toPlainText()
    assert text == planned_text(planned)
    assert "patch_size = 64x64: given by the user" in text and "normalization = " in text
    assert not train.plan_view.text.isHidden() and "choices" in train.plan_view.toggle.text()
    assert train.progress.value() == train.progress.maximum() == 2
    assert "preset: auto" in (run_dir / runs.CONFIG).read_text()
