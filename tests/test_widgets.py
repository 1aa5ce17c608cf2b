"""The Train, Predict and Correct widgets, driven the way a user drives them (pytest-qt).

The training tests start the real CLI in a child process on tiny synthetic data (TinyUNet
with 8 base channels, 64x64 patches, CPU), so they exercise the whole path: layers -> TIF
files -> child process -> JSON events -> Qt signals -> layers.
"""
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from gui_support import PLUGIN, gui, small_cpu_options  # noqa: E402
from process_support import deadline_ms  # noqa: E402

napari = pytest.importorskip("napari")

from napari.layers import Image, Labels  # noqa: E402
from napari.utils.notifications import notification_manager  # noqa: E402
from qtpy.QtCore import QTimer  # noqa: E402

from napari_unet.runs import live_pid, read_run  # noqa: E402
from napari_unet.sample_data import SAMPLES  # noqa: E402
from napari_unet.training_set import write_training_pairs  # noqa: E402
from napari_unet.widgets.correct import CorrectWidget  # noqa: E402
from napari_unet.widgets.predict import PredictWidget  # noqa: E402
from napari_unet.widgets.train import TrainWidget  # noqa: E402

TRAIN_TIMEOUT_MS = deadline_ms(120)  # ceilings on waits for events, never a guess of speed


def dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def tiny_parts(viewer, n=4):
    """4 DAGM-like 64x64 images; only the defective ones have painted labels."""
    images, masks = SAMPLES["dagm"](n=n, size=64)
    image = viewer.add_image(images, name="parts")
    labels = viewer.add_labels(masks.astype(np.uint8), name="parts labels")
    return image, labels


def errors_since(count):
    return [n for n in notification_manager.records[count:] if str(n.severity) == "error"]


def group_is_gone(pid) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


class Recorder:
    """Keeps every signal the runner emits, in order."""

    def __init__(self, runner):
        self.events = []
        for name in ("started", "progress", "validation", "checkpoint", "message", "finished",
                     "failed", "cancelled", "exited"):
            getattr(runner, name).connect(lambda value, name=name: self.events.append((name, value)))

    def of(self, name):
        return [value for kind, value in self.events if kind == name]


# -- docking -------------------------------------------------------------------------------------------
@gui
def test_the_three_widgets_dock_from_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    tiny_parts(viewer)
    train, predict, correct = (dock(viewer, name) for name in ("Train", "Predict", "Correct"))
    assert isinstance(train, TrainWidget)
    assert isinstance(predict, PredictWidget)
    assert isinstance(correct, CorrectWidget)
    # the pickers follow the layer list
    assert train.image_combo.current_choice == "parts"
    assert train.labels_combo.current_choice == "parts labels"
    assert train.preset.currentText() == "auto"
    viewer.add_image(np.zeros((48, 48, 48), np.float32), name="volume")
    train.image_combo.value = viewer.layers["volume"]
    assert train.preset.currentText() == "auto", "auto plans for volumes too"
    train.image_combo.value = viewer.layers["parts"]
    train.preset.setCurrentText("industrial")
    train.image_combo.value = viewer.layers["volume"]
    assert train.preset.currentText() == "volume3d", "under a 2D preset, a volume -> 3D preset"
    assert train.patch_size.value() <= 48
    viewer.layers.remove("parts labels")
    assert "parts labels" not in [layer.name for layer in train.labels_combo.choices]


@gui
def test_docked_widgets_scroll_in_a_short_window_instead_of_growing_it(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1200, 700)
    train, _, correct = (dock(viewer, name) for name in ("Train", "Predict", "Correct"))
    qtbot.waitUntil(lambda: train.scroll_area.verticalScrollBar().maximum() > 0, timeout=10_000)
    assert window.height() <= 700  # before: the docks' rows forced the window past the screen
    for row in (train.start_button, train.device, correct.threshold, correct.min_size):
        assert row.height() >= row.minimumSizeHint().height()  # rows keep their height


def shown_whole(widget, window) -> bool:
    """Whether all of `widget` is on screen in `window`: shown, its rectangle inside every
    ancestor's (a scroll area's viewport, the dock, the window), not squeezed (a spin box in
    a row of the form may come out 2 px under its hint: a squeezed row is a sliver)."""
    from qtpy.QtCore import QPoint, QRect

    if not widget.isVisible() or widget.height() < 0.75 * widget.minimumSizeHint().height():
        return False
    rect = QRect(widget.mapTo(window, QPoint(0, 0)), widget.size())
    parent = widget.parentWidget()
    while parent is not None and parent is not window:
        if not QRect(parent.mapTo(window, QPoint(0, 0)), parent.size()).contains(rect):
            return False
        parent = parent.parentWidget()
    return window.rect().contains(rect)


@gui
@pytest.mark.parametrize("size", [(1280, 800), (1920, 1080)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("docking", ["plugins menu", "screenshot script", "make gui"])
def test_train_shows_its_data_preset_time_and_start_beside_the_other_two(
        make_napari_viewer, qtbot, size, docking):
    """The first screen: the three widgets docked on the right, as the Plugins menu docks them
    (one under the other, napari shrinking the upper ones to their minimum), as
    scripts/screenshot.py does (Correct tabbed with Predict) or as `make gui` (`napari -w
    napari-unet-torch __all__`: three tabs, Train raised). Train's pickers, preset, time
    budget and Start are all in view without scrolling, at both window sizes."""
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.full((64, 64, 3), 200, np.uint8), name="tile", rgb=True)
    window = viewer.window._qt_window
    window.resize(*size)
    tabs = docking == "make gui"
    train_dock, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train", tabify=tabs)
    viewer.window.add_plugin_dock_widget(PLUGIN, "Predict", tabify=tabs)
    viewer.window.add_plugin_dock_widget(PLUGIN, "Correct", tabify=docking != "plugins menu")
    if tabs:  # what napari's -w does after docking them
        train_dock.show()
        train_dock.raise_()
    rows = {"image": train.image_combo.native, "labels": train.labels_combo.native,
            "preset": train.preset, "start from": train.start_from.combo,
            "minutes": train.minutes, "steps": train.steps,
            "start": train.start_button, "progress": train.progress}
    settled = lambda: (window.width(), window.height()) == size \
        and all(shown_whole(row, window) for row in rows.values())  # noqa: E731
    try:
        qtbot.waitUntil(settled, timeout=10_000)
    except qtbot.TimeoutError:
        hidden = [name for name, row in rows.items() if not shown_whole(row, window)]
        pytest.fail(f"window {window.width()}x{window.height()} (asked {size}); not in view: "
                    f"{hidden}")
    assert train.scroll_area.verticalScrollBar().value() == 0
    # the rest of Train scrolls below them; the curve shows up once a run does
    assert not train.curve.isVisible()


@gui
def test_new_adds_empty_labels_over_the_image_to_paint(make_napari_viewer):
    """The first screen with an image alone: Labels' New adds a labels layer of the image's
    pixel grid (an RGB tile: without its colour axis), chosen and in paint mode."""
    viewer = make_napari_viewer()
    train = dock(viewer, "Train")
    seen = len(notification_manager.records)
    train.new_labels()  # no image yet: a notification, no layer
    assert "choose an image first" in str(errors_since(seen)[-1].message)
    assert len(viewer.layers) == 0
    viewer.add_image(np.full((40, 30, 3), 200, np.uint8), name="tile", rgb=True,
                     scale=(0.5, 0.5))
    train.new_labels()
    labels = viewer.layers["tile labels"]
    assert isinstance(labels, Labels) and labels.data.shape == (40, 30)
    assert tuple(labels.scale) == (0.5, 0.5) and labels.mode == "paint"
    assert train.labels_combo.value is labels


# -- user mistakes become notifications ---------------------------------------------------------
@gui
def test_mistakes_are_notifications_and_the_viewer_lives_on(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    images, _ = SAMPLES["dagm"](n=2, size=64)
    viewer.add_image(images, name="raw")
    empty = viewer.add_labels(np.zeros(images.shape, np.uint8), name="raw labels")
    train = dock(viewer, "Train")
    small_cpu_options(train, tmp_path / "run", steps=2)

    seen = len(notification_manager.records)
    train.start_button.click()  # nothing painted
    errors = errors_since(seen)
    assert errors and "empty" in str(errors[-1].message)
    assert not train.runner.is_running() and train.runner.pid is None
    assert not (tmp_path / "run").exists(), "nothing is written for a refused start"

    empty.data[0, 10:20, 10:20] = 1
    viewer.add_labels(np.zeros((64, 32), np.uint8), name="wrong size")
    train.labels_combo.value = viewer.layers["wrong size"]
    seen = len(notification_manager.records)
    train.start_button.click()
    assert "(2, 64, 64)" in str(errors_since(seen)[-1].message)

    train.labels_combo.value = empty
    viewer.add_image(images[0], name="flat")
    flat_labels = np.zeros((64, 64), np.uint8)
    flat_labels[20:30, 20:30] = 1
    viewer.add_labels(flat_labels, name="flat labels")
    train.image_combo.value = viewer.layers["flat"]
    train.labels_combo.value = viewer.layers["flat labels"]
    train.preset.setCurrentText("volume3d")
    seen = len(notification_manager.records)
    train.start_button.click()
    assert "3D" in str(errors_since(seen)[-1].message)

    train.preset.setCurrentText("industrial")
    not_a_folder = tmp_path / "a_file"
    not_a_folder.write_text("")
    train.run_folder.setText(str(not_a_folder / "run"))
    seen = len(notification_manager.records)
    train.start_button.click()
    assert "cannot create the run folder" in str(errors_since(seen)[-1].message)

    pictures = tmp_path / "pictures"  # a folder of the user's own files picked as the run's
    pictures.mkdir()
    (pictures / "holiday.png").write_bytes(b"")
    train.run_folder.setText(str(pictures))
    seen = len(notification_manager.records)
    train.start_button.click()
    assert "holds other files (holiday.png)" in str(errors_since(seen)[-1].message)
    assert [p.name for p in pictures.iterdir()] == ["holiday.png"], "nothing written there"

    predict = dock(viewer, "Predict")
    predict.set_model(tmp_path / "no_such_run")
    seen = len(notification_manager.records)
    predict.predict_button.click()
    assert "does not exist" in str(errors_since(seen)[-1].message)

    # the viewer still works
    viewer.add_points([[1, 1]], name="still alive")
    assert "still alive" in viewer.layers
    assert not train.runner.is_running()


@gui
@pytest.mark.parametrize("scene", ["no layers", "wrong layers and paths"])
def test_every_button_with_bad_choices_is_a_notification(make_napari_viewer, qtbot, monkeypatch,
                                                         tmp_path, scene):
    """Every enabled button of the three docked widgets pressed with nothing chosen, or with
    layers of the wrong kind or size and paths that are no run or checkpoint (file dialogs
    answering the same): each mistake is a one-line error notification, nothing is started
    or written, and the viewer lives. Before: Export… called export(path=False) (Qt's checked
    flag) and raised TypeError; a text file as the run to fine-tune from wrote the run folder
    and started a child that failed on it."""
    from qtpy.QtWidgets import QFileDialog, QPushButton

    junk = scene != "no layers"
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("not a checkpoint")
    missing = tmp_path / "missing"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        lambda *_, **__: str(missing) if junk else "")
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        lambda *_, **__: (str(not_a_checkpoint) if junk else "", ""))
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        lambda *_, **__: (str(tmp_path / "model.txt") if junk else "", ""))
    viewer = make_napari_viewer()
    if junk:
        images, masks = SAMPLES["dagm"](n=2, size=64)
        viewer.add_image(images, name="parts")
        painted = viewer.add_labels(masks.astype(np.uint8), name="parts labels")
        painted.data[:, 5:10, 5:10] = 1
        viewer.add_image(np.full((32, 32, 3), 200, np.uint8), name="tile", rgb=True)
        viewer.add_labels(np.zeros((8, 8), np.uint8), name="small labels")
        viewer.add_image(np.zeros((2, 3, 8, 8, 8), np.float32), name="5d")
    train, predict, correct = (dock(viewer, name) for name in ("Train", "Predict", "Correct"))
    run_dir = tmp_path / "run"
    train.run_folder.setText(str(run_dir))
    if junk:
        train.set_init_from(not_a_checkpoint)
        predict.set_model(not_a_checkpoint)
        correct.run_combo.setEditText(str(not_a_checkpoint))
    seen = len(notification_manager.records)
    pressed = []
    for widget in (train, predict, correct):
        for button in widget.findChildren(QPushButton):
            if button.isEnabled() and button.isVisibleTo(widget):
                pressed.append(button.text())
                button.click()  # an exception in a slot fails the test (pytest-qt)
    assert {"Start", "Predict", "Export…", "Threshold → new labels",
            "Add to training set"} <= set(pressed)
    if junk:  # the buttons' order differs between bindings: New, Add pair and the browse
        # buttons may have changed the choices before Start. The painted pair alone and the
        # text file to fine-tune from: Start reaches that file
        while train.pairs:
            train._remove_pair()
        train.labels_combo.value = painted
        train.set_init_from(not_a_checkpoint)
        train.run_folder.setText(str(run_dir))
        train.start_button.click()
        # a model that passes the first look: Export… reaches its file name
        zipfile.ZipFile(tmp_path / "model.pt", "w").close()
        predict.set_model(tmp_path / "model.pt")
        predict.export_button.click()
    errors = [str(n.message) for n in errors_since(seen)]
    assert errors and all("\n" not in message for message in errors)
    if junk:
        assert any(f"{not_a_checkpoint} is not a checkpoint" in m and "fine-tune" in m
                   for m in errors), errors
        assert any("predict with" in m for m in errors), errors
        assert any("model.txt: name the file .zip" in m for m in errors), errors
    assert not train.runner.is_running() and predict.job is None
    assert not run_dir.exists() and not missing.exists(), "nothing written for a mistake"
    viewer.add_points([[1, 1]], name="still alive")
    assert "still alive" in viewer.layers


@gui
def test_an_error_in_the_child_becomes_a_notification(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    train = dock(viewer, "Train")
    recorder = Recorder(train.runner)
    seen = len(notification_manager.records)
    # what the widget would run, with a data folder the engine cannot read
    (tmp_path / "run").mkdir()
    train.runner.start(["--preset", "industrial", "--data", str(tmp_path / "no_data"),
                        "--out", str(tmp_path / "run"), "--steps", "2", "--device", "cpu"],
                       tmp_path / "run")
    qtbot.waitUntil(lambda: train.runner.exit_code is not None, timeout=TRAIN_TIMEOUT_MS)
    assert train.runner.exit_code == 2
    [message] = recorder.of("failed")
    assert "no_data" in message and "\n" not in message and "Traceback" not in message
    errors = errors_since(seen)
    assert errors and str(errors[-1].message) == f"training failed: {message}"


# -- the full loop -----------------------------------------------------------------------------------
@gui
def test_train_then_predict_round_trip(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    image, labels = tiny_parts(viewer)
    painted = [z for z in range(4) if labels.data[z].any()]
    train = dock(viewer, "Train")
    run_dir = tmp_path / "run"
    small_cpu_options(train, run_dir, steps=4)
    recorder = Recorder(train.runner)

    train.start_button.click()
    assert train.runner.is_running()
    assert not train.start_button.isEnabled() and train.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: train.runner.exit_code is not None, timeout=TRAIN_TIMEOUT_MS)
    assert train.runner.exit_code == 0, train.runner.stderr_text[-2000:]

    # the layers were written in the generic layout, painted slices only
    written = sorted(p.name for p in (run_dir / "data" / "images").iterdir())
    assert written == [f"parts_z{z:04d}.tif" for z in painted]
    assert sorted(p.name for p in (run_dir / "data" / "masks").iterdir()) == written
    # events became signals, in order, and fed the widget
    kinds = [kind for kind, _ in recorder.events]
    assert kinds[0] == "started" and kinds[-2:] == ["finished", "exited"]
    assert [p.step for p in recorder.of("progress")] == [1, 2, 3, 4]
    assert [s for s, _ in train.curve.loss] == [1, 2, 3, 4]
    assert recorder.of("started")[0].val_samples == 1  # one painted slice held out for Dice
    assert len(train.curve.dice) >= 1
    assert train.progress.value() == train.progress.maximum() == 4
    finished = recorder.of("finished")[0]
    assert Path(finished.path).is_file()
    assert train.start_button.isEnabled() and not train.cancel_button.isEnabled()

    # "predict the image when training ends" adds the result over the image
    qtbot.waitUntil(lambda: train.prediction is not None and not train.prediction.running,
                    timeout=60_000)
    assert train.prediction.error is None
    probabilities = viewer.layers["parts probabilities"]
    prediction = viewer.layers["parts prediction"]
    assert isinstance(probabilities, Image) and isinstance(prediction, Labels)
    assert probabilities.data.shape == prediction.data.shape == image.data.shape
    np.testing.assert_array_equal(prediction.scale, image.scale)
    assert probabilities.data.min() >= 0.0 and probabilities.data.max() <= 1.0
    from napari_unet.engine import load_checkpoint

    assert probabilities.metadata["threshold"] == load_checkpoint(finished.path).config.threshold

    # the Predict widget offers the run, predicts again, and its slider re-cuts the labels
    predict = dock(viewer, "Predict")
    assert predict.model_combo.currentText() == str(run_dir)
    predict.image_combo.value = image
    predict.tile_size.setValue(64)
    predict.predict_button.click()
    qtbot.waitUntil(lambda: predict.last_job is not None and not predict.last_job.running,
                    timeout=60_000)
    job = predict.last_job
    assert job.labels_layer.name == "parts prediction [1]", "earlier results are not replaced"
    threshold = float(np.quantile(job.probabilities, 0.7))
    predict.set_threshold(threshold)
    expected = (job.probabilities >= round(threshold, 2)).astype(np.uint8)
    np.testing.assert_array_equal(job.labels_layer.data, expected)
    assert predict.threshold.isEnabled()

    # an image the model cannot take: one clear notification, no layers
    photo = viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="photo", rgb=True)
    predict.image_combo.value = photo
    seen, layers_before = len(notification_manager.records), len(viewer.layers)
    predict.predict_button.click()
    qtbot.waitUntil(lambda: not predict.job.running, timeout=60_000)
    [error] = errors_since(seen)
    assert str(error.message).startswith("prediction failed:") and "channel" in str(error.message)
    assert len(viewer.layers) == layers_before and predict.predict_button.isEnabled()

    # Cancel stops a prediction between tiles (worker.quit); nothing is added
    big = viewer.add_image(np.tile(image.data, (16, 4, 4)), name="big")  # 64 x 256 x 256
    layers_before = len(viewer.layers)
    predict.image_combo.value = big
    predict.predict_button.click()
    cancelling = predict.job
    qtbot.waitUntil(lambda: predict.progress.value() > 0, timeout=60_000)
    predict.cancel_button.click()
    qtbot.waitUntil(lambda: not cancelling.running, timeout=60_000)
    assert cancelling.cancelled and cancelling.labels_layer is None and cancelling.error is None
    assert predict.progress.value() < predict.progress.maximum()
    assert len(viewer.layers) == layers_before
    assert predict.predict_button.isEnabled()

    # re-attaching reads the same curve back from the run folder
    record = read_run(run_dir)
    np.testing.assert_allclose(record.loss, train.curve.loss)
    np.testing.assert_allclose(record.dice, train.curve.dice)
    assert record.total_steps == 4
    assert record.checkpoint is not None and record.checkpoint.is_file()
    assert record.pid is None and live_pid(run_dir) is None

    # "Add to training set" feeds the corrected labels back, under new names
    correct = dock(viewer, "Correct")
    correct.image_combo.value = image
    correct.labels_combo.value = labels
    correct.run_combo.setEditText(str(run_dir))
    correct.add_to_training_set()  # the run already trained on exactly these pairs
    assert sorted(p.name for p in (run_dir / "data" / "images").iterdir()) == written
    labels.data_setitem((np.array([painted[0]] * 3), np.array([0, 0, 1]), np.array([0, 1, 0])), 1)
    correct.add_to_training_set()  # one corrected slice: a new pair beside the old one
    correct.add_to_training_set()
    names = sorted(p.name for p in (run_dir / "data" / "images").iterdir())
    assert names == sorted(written + [f"parts_z{painted[0]:04d}_2.tif"])
    assert correct.labels_combo.current_choice == "parts labels"

    # fine-tuning from the run starts from its weights and trains on its (grown) training set
    train.set_init_from(run_dir)
    assert train.patch_size.value() == 64 and train.base_channels.currentData() == 8
    train.steps.setValue(2)
    train.run_folder.setText(str(tmp_path / "finetuned"))
    recorder.events.clear()
    train.start_button.click()
    qtbot.waitUntil(lambda: train.runner.exit_code is not None, timeout=TRAIN_TIMEOUT_MS)
    assert train.runner.exit_code == 0, train.runner.stderr_text[-2000:]
    started = recorder.of("started")[0]
    assert started.train_samples + started.val_samples == len(painted) + 1
    assert "--init-from" in train.runner._process.args


def start_endless_run(viewer, tmp_path):
    """Start a run that only a cancel or a close can end: (widget, run folder, recorder, pid)."""
    tiny_parts(viewer)
    train = dock(viewer, "Train")
    run_dir = tmp_path / "run"
    small_cpu_options(train, run_dir, steps=100_000)
    recorder = Recorder(train.runner)
    train.start_button.click()
    return train, run_dir, recorder, train.runner.pid


def _why_not_followed(run_dir, pid, train) -> str:
    """What the run folder and the runner say when a live run was not followed (seen once,
    in a full suite beside a long benchmark; not reproduced alone)."""
    import os

    from napari_unet import runs
    pid_file = run_dir / runs.PID_FILE
    try:
        os.kill(pid, 0)
        import psutil
        exists = f"runs, created {psutil.Process(pid).create_time():.2f}"
    except Exception as exc:  # noqa: BLE001 - a diagnosis, whatever it finds
        exists = f"gone ({exc!r})"
    return (f"pid file {pid_file.read_text() if pid_file.exists() else 'missing'}; child "
            f"{pid} {exists}; runner running {train.runner.is_running()}, exit code "
            f"{train.runner.exit_code}; live_pid {live_pid(run_dir)}; now {time.time():.2f}")


@gui
def test_cancel_stops_the_run_without_freezing_the_viewer(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)  # shown: the widgets really repaint on every event
    train, run_dir, recorder, pid = start_endless_run(viewer, tmp_path)
    assert live_pid(run_dir) == pid, "the run folder records its live child"
    qtbot.waitUntil(lambda: len(recorder.of("progress")) >= 2, timeout=TRAIN_TIMEOUT_MS)

    # while the child trains, the GUI thread keeps its 10 ms timer going. On a loaded 2-core
    # machine the OS deschedules the GUI now and then (gaps of 100-300 ms); a GUI thread that
    # waits on training instead loses most of the time in long gaps. So: measure 6 s, count
    # the time lost in gaps over 500 ms, and allow a quarter of it.
    stamps = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    events_before = len(recorder.of("progress"))
    timer.start()
    qtbot.wait(6000)
    timer.stop()
    gaps_ms = np.diff(stamps) * 1000
    stalled = float(gaps_ms[gaps_ms > 500].sum()) / float(gaps_ms.sum())
    events_during = len(recorder.of("progress")) - events_before
    print(f"\nGUI timer while training: {len(gaps_ms)} ticks, p50 {np.median(gaps_ms):.1f} ms, "
          f"p99 {np.percentile(gaps_ms, 99):.1f} ms, max {gaps_ms.max():.1f} ms, "
          f"{stalled:.0%} of the time in gaps > 500 ms; {events_during} progress events")
    assert events_during >= 2, "training was not running during the measurement"
    assert len(gaps_ms) >= 50 and np.median(gaps_ms) < 100
    assert stalled < 0.25, "the GUI thread stalled while the child trained"

    # a second Train widget (as in a new viewer session) re-attaches to the live run: it
    # restores the curve from the run folder, follows it, and its Cancel reaches the child
    follower = TrainWidget(viewer)
    follower.attach(run_dir)
    assert follower.watcher is not None and follower.watcher.pid == pid, _why_not_followed(
        run_dir, pid, train)
    restored = len(follower.curve.loss)
    assert restored >= 1
    qtbot.waitUntil(lambda: len(follower.curve.loss) > restored, timeout=deadline_ms(60))
    assert follower.cancel_button.isEnabled()
    follower.cancel_button.click()
    qtbot.waitUntil(lambda: train.runner.exit_code is not None, timeout=deadline_ms(60))
    assert train.runner.exit_code == 130, train.runner.stderr_text[-2000:]
    assert recorder.of("cancelled") == [str(run_dir)]
    qtbot.waitUntil(lambda: follower.watcher is None, timeout=deadline_ms(10))  # it saw the end
    assert not recorder.of("failed")
    assert group_is_gone(pid), "a process of the run is still alive"
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert live_pid(run_dir) is None
    assert train.start_button.isEnabled()


@gui
def test_a_result_that_arrives_after_cancel_adds_no_layer(make_napari_viewer, qtbot, monkeypatch):
    """The worker's last event, already on its way when Cancel is pressed (or the viewer
    closes, which cancels the end-of-training prediction), adds no layer. Before: the layers
    were added to the closing viewer and napari's dims slider raised IndexError (seen at the
    teardown of test_train_then_predict_round_trip on a busy machine)."""
    import threading

    from napari_unet import engine
    from napari_unet.widgets import prediction_job
    from napari_unet.widgets.prediction_job import PredictionJob

    yielded = threading.Event()

    def events(*_):
        yield engine.PredictionDone(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.uint8))
        yielded.set()  # the result is queued for the GUI thread, not delivered yet

    monkeypatch.setattr(prediction_job, "_predict_events", events)
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((8, 8), np.float32), name="scan")
    job = PredictionJob(viewer, "model.pt", image)
    assert yielded.wait(60)
    job.cancel()
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    assert [layer.name for layer in viewer.layers] == ["scan"] and job.labels_layer is None


@gui
def test_closing_the_viewer_stops_training(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    train, run_dir, recorder, pid = start_endless_run(viewer, tmp_path)
    qtbot.waitUntil(lambda: len(recorder.of("progress")) >= 1, timeout=TRAIN_TIMEOUT_MS)
    viewer.close()
    assert group_is_gone(pid), "closing the viewer left the training process running"
    assert (run_dir / "checkpoints" / "last.pt").is_file(), "no checkpoint saved on close"


# -- correction tools -------------------------------------------------------------------------------
@gui
def test_correction_tools(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    stack = np.zeros((3, 40, 40), np.uint8)
    stack[1, 5:25, 5:25] = 1
    stack[1, 10:15, 10:15] = 0  # a hole
    stack[1, 30:32, 30:32] = 1  # a 4-pixel speck
    stack[1, 35:38, 2:10] = 2  # another class, 24 pixels
    stack[0, 2:4, 30:32] = 1  # a speck on another slice: "current slice" leaves it alone
    labels = viewer.add_labels(stack.copy(), name="mask")
    probabilities = np.linspace(0, 1, 3 * 40 * 40, dtype=np.float32).reshape(3, 40, 40)
    viewer.add_image(probabilities, name="probabilities")
    image = viewer.add_image(np.random.default_rng(0).random((3, 40, 40), np.float32), name="em")
    correct = dock(viewer, "Correct")

    correct.probability_combo.value = viewer.layers["probabilities"]
    correct.threshold.setValue(0.25)
    correct.threshold_to_labels()
    thresholded = viewer.layers["probabilities > 0.25"]
    np.testing.assert_array_equal(thresholded.data, probabilities >= 0.25)

    correct.labels_combo.value = labels
    viewer.dims.set_current_step(0, 1)
    correct.scope.setCurrentText("current slice")
    correct.min_size.setValue(10)
    correct.remove_small()
    assert labels.data[1, 30:32, 30:32].sum() == 0, "the speck stays"
    assert (labels.data[1, 35:38, 2:10] == 2).all(), "an object big enough was removed"
    assert (labels.data[0, 2:4, 30:32] == 1).all(), "another slice was changed"
    correct.fill_holes()
    assert (labels.data[1, 10:15, 10:15] == 1).all()
    correct.undo()  # napari's own undo takes the last edit back
    assert (labels.data[1, 10:15, 10:15] == 0).all()
    slice_one = labels.data[1].copy()
    correct.scope.setCurrentText("every slice (2D)")
    correct.remove_small()  # now the other slice's speck goes too
    assert labels.data[0].sum() == 0
    np.testing.assert_array_equal(labels.data[1], slice_one)
    correct.scope.setCurrentText("current slice")

    viewer.dims.set_current_step(0, 2)
    correct.copy_neighbour(-1)
    np.testing.assert_array_equal(labels.data[2], labels.data[1])
    viewer.dims.set_current_step(0, 0)
    correct.copy_neighbour(+1)
    np.testing.assert_array_equal(labels.data[0], labels.data[1])
    assert labels.data.sum() > 0

    # add to training set never replaces files: a second add gets new names
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    correct.image_combo.value = image
    correct.run_combo.setEditText(str(run_dir))
    correct.add_to_training_set()
    first = sorted(p.name for p in (run_dir / "data" / "masks").iterdir())
    assert first == ["em_z0000.tif", "em_z0001.tif", "em_z0002.tif"]
    before = (run_dir / "data" / "masks" / "em_z0000.tif").read_bytes()
    correct.add_to_training_set()  # the same pairs again: nothing new
    assert len(list((run_dir / "data" / "masks").iterdir())) == 3
    labels.data_setitem((np.array([0]), np.array([0]), np.array([0])), 1)
    correct.add_to_training_set()
    assert sorted(p.name for p in (run_dir / "data" / "masks").iterdir()) == [
        "em_z0000.tif", "em_z0000_2.tif", "em_z0001.tif", "em_z0002.tif"]
    assert (run_dir / "data" / "masks" / "em_z0000.tif").read_bytes() == before


@gui
def test_pickers_offer_only_layers_of_their_kind(make_napari_viewer):
    """Correct's Probabilities picker offers float single-channel maps, never the RGB photo
    or a uint8 scan (before: it picked the RGB tile itself); each other picker offers its kind
    (images: any Image layer or channel group; labels: Labels layers)."""
    viewer = make_napari_viewer()
    viewer.add_image(np.full((32, 32, 3), 200, np.uint8), name="tile", rgb=True)
    viewer.add_image(np.zeros((32, 32), np.uint8), name="scan")
    viewer.add_image(np.zeros((32, 32, 3), np.float32), name="float colour", rgb=True)
    viewer.add_labels(np.zeros((32, 32), np.uint8), name="mask")
    train, predict, correct = (dock(viewer, name) for name in ("Train", "Predict", "Correct"))
    assert correct.probability_combo.choices == ()
    assert correct.probability_combo.value is None
    seen = len(notification_manager.records)
    correct.threshold_to_labels()  # nothing to threshold: a notification, no layer
    assert "choose a probability layer" in str(errors_since(seen)[-1].message)

    probabilities = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    viewer.add_image(probabilities, name="tile probabilities")
    assert [layer.name for layer in correct.probability_combo.choices] == ["tile probabilities"]
    assert correct.probability_combo.value is viewer.layers["tile probabilities"]
    assert correct.threshold.value() == 0.5  # no model's threshold with it
    # a prediction's map carries its model's threshold (a fitted one): Correct cuts there
    viewer.add_image(probabilities, name="fitted probabilities", metadata={"threshold": 0.35})
    assert correct.probability_combo.value is viewer.layers["fitted probabilities"]
    assert correct.threshold.value() == pytest.approx(0.35)
    viewer.layers.remove("fitted probabilities")
    correct.threshold.setValue(0.5)
    viewer.add_image(probabilities * 300, name="float scan")  # floats, but not 0..1
    correct.probability_combo.value = viewer.layers["float scan"]
    seen = len(notification_manager.records)
    layers = len(viewer.layers)
    correct.threshold_to_labels()
    assert "not a probability map" in str(errors_since(seen)[-1].message)
    assert "0..300" in str(errors_since(seen)[-1].message) and len(viewer.layers) == layers

    images = {"tile", "scan", "float colour", "tile probabilities", "float scan"}
    for picker in (train.image_combo, predict.image_combo, correct.image_combo):
        assert {layer.name for layer in picker.choices} == images
    for picker in (train.labels_combo, correct.labels_combo):
        assert [layer.name for layer in picker.choices] == ["mask"]


def test_write_training_pairs_keeps_painted_slices_and_merges_instances(tmp_path):
    image = np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8)
    labels = np.zeros((4, 8, 8), np.int32)
    labels[2, 1:3, 1:3] = 1
    labels[3].flat[:40] = np.arange(1, 41)  # 40 instance ids: one foreground class
    report = write_training_pairs(tmp_path, [("cells", image, labels)], spatial_dims=2)
    assert report["written"] == ["cells_z0002", "cells_z0003"]
    assert report["kept"] == 2 and report["total"] == 4 and report["merged"] == ["cells"]
    import tifffile
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "images" / "cells_z0002.tif"), image[2])
    merged = tifffile.imread(tmp_path / "masks" / "cells_z0003.tif")
    assert merged.dtype == np.uint8 and set(np.unique(merged)) == {0, 1}
    volume = write_training_pairs(tmp_path, [("cells", image, labels)], spatial_dims=3)
    assert volume["written"] == ["cells"]
    assert tifffile.imread(tmp_path / "images" / "cells.tif").shape == (4, 8, 8)


@gui
@pytest.mark.one_binding
def test_a_3d_volume_trains_with_volume3d_and_predicts_3d_layers(make_napari_viewer, qtbot,
                                                                 tmp_path):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "blobs3d")
    channel0 = layers[0]
    labels = viewer.layers["blobs3d labels"]
    train = dock(viewer, "Train")
    train.image_combo.value = channel0
    assert train.labels_combo.value is labels
    assert train.preset.currentText() == "auto"
    train.preset.setCurrentText("volume3d")
    small_cpu_options(train, tmp_path / "run", steps=2)
    train.patch_size.setValue(32)
    train.start_button.click()
    qtbot.waitUntil(lambda: train.runner.exit_code is not None, timeout=TRAIN_TIMEOUT_MS)
    assert train.runner.exit_code == 0, train.runner.stderr_text[-2000:]
    assert [p.name for p in (tmp_path / "run" / "data" / "masks").iterdir()] == ["blobs3d_ch0.tif"]
    qtbot.waitUntil(lambda: train.prediction is not None and not train.prediction.running,
                    timeout=60_000)
    assert train.prediction.error is None
    prediction = viewer.layers["blobs3d ch0 prediction"]
    assert prediction.data.shape == labels.data.shape and prediction.ndim == 3
    # two classes besides the background: one probability layer each
    for k in (1, 2):
        assert viewer.layers[f"blobs3d ch0 probability class {k}"].data.shape == labels.data.shape


@gui
@pytest.mark.parametrize("native_bf16", [True, False])
def test_cpu_amp_default_follows_native_bf16(make_napari_viewer, monkeypatch, native_bf16):
    import napari_unet.widgets.train_form as train_module
    monkeypatch.setattr(train_module, "_cuda_devices", lambda: 0)
    monkeypatch.setattr(train_module, "_cpu_has_fast_bf16", lambda: native_bf16)
    viewer = make_napari_viewer()
    tiny_parts(viewer)
    widget = TrainWidget(viewer)
    assert widget.amp.currentText() == ("bf16" if native_bf16 else "off")
    args = widget.cli_args("industrial", Path("run"), 4)
    assert args[args.index("--amp") + 1] == widget.amp.currentText()


@gui
def test_the_option_fields_reach_the_config(make_napari_viewer):
    """The Train widget's option fields are made from the option rows and each one's value
    reaches the run's config through the command line the widget builds."""
    from napari_unet.cli import build_parser
    from napari_unet.cli_commands import train_config
    from napari_unet.options import SHOWN

    viewer = make_napari_viewer()
    tiny_parts(viewer)
    widget = TrainWidget(viewer)
    assert set(widget.option_fields) == {option.name for option in SHOWN}
    widget.steps.setValue(37)
    widget.batch_size.setValue(3)
    widget.lr.setValue(0.00123)
    widget.patch_size.setValue(48)
    widget.amp.setCurrentText("fp16")
    widget.device.setCurrentText("cpu")
    widget.compile.setChecked(True)
    config = train_config(build_parser().parse_args(
        ["train", *widget.cli_args("industrial", Path("run"), 4)]))
    assert (config.steps, config.batch_size, config.lr, config.patch_size) == (
        37, 3, 0.00123, [48, 48])
    assert (config.amp, config.device, config.compile) == ("fp16", "cpu", True)
    assert config.val_every == 3 and config.log_every == 3
