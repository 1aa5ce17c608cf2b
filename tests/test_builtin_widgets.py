"""Built-in models in the widgets (fake ones, tests/conftest.py's builtin_models): Predict
lists them beside the runs and segments with one before anything is painted; Train starts a
run from one (``--init-from NAME``) and refuses one of the other kind at once; nothing is
ever written into a built-in model's folder."""
import numpy as np
import pytest
from gui_support import PLUGIN, folder_state, gui

napari = pytest.importorskip("napari")

from napari.utils.notifications import notification_manager  # noqa: E402
from qtpy.QtCore import Qt  # noqa: E402

from napari_unet import builtin  # noqa: E402
from napari_unet.cli import build_parser  # noqa: E402
from napari_unet.sample_data import SAMPLES  # noqa: E402
from napari_unet.widgets.runner import train_command  # noqa: E402


def dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def items(combo) -> list[str]:
    return [combo.itemText(k) for k in range(combo.count())]


def errors_since(count) -> list[str]:
    return [str(n.message) for n in notification_manager.records[count:]
            if str(n.severity) == "error"]


def choose_item(combo, text) -> None:
    """Pick `text` from the combo's list as a user does (activated follows a click)."""
    index = combo.findText(text)
    assert index >= 0, items(combo)
    combo.setCurrentIndex(index)
    combo.activated.emit(index)


def painted_parts(viewer):
    images, masks = SAMPLES["dagm"](n=2, size=64)
    viewer.add_image(images, name="parts")
    viewer.add_labels(masks.astype(np.uint8), name="parts labels")


@gui
def test_predict_segments_with_a_builtin_model_before_anything_is_painted(
        builtin_models, make_napari_viewer, qtbot):
    before = folder_state(builtin_models)
    viewer = make_napari_viewer()
    predict = dock(viewer, "Predict")
    combo = predict.model_combo
    assert {"nuclei", "nuclei3d"} <= set(items(combo))
    assert combo.itemData(combo.findText("nuclei"), Qt.ToolTipRole) \
        == builtin.describe("nuclei") == "nuclei: 2D nuclei (a test model)"
    choose_item(combo, "nuclei")
    assert predict.model_note.text() == ("built-in model: 2D nuclei (a test model) (2D, 1 "
                                         "channel, objects ~17 px across)")
    assert predict.model_note.isVisibleTo(predict) and "2D nuclei" in combo.toolTip()

    layer = viewer.add_image(np.random.default_rng(0).random((128, 128), np.float32) * 255,
                             name="cells")
    predict.image_combo.value = layer
    predict.device.setCurrentText("cpu")
    predict.backend.setCurrentText("torch")
    predict.predict_button.click()
    assert predict.status.text() == "predicting cells with nuclei"
    qtbot.waitUntil(lambda: predict.job is not None and not predict.job.running, timeout=60_000)
    job = predict.job
    assert job.error is None and job.checkpoint == ["nuclei"]  # the engine resolves the name
    assert job.labels_layer in viewer.layers and job.labels_layer.data.shape == (128, 128)
    assert all(p in viewer.layers for p in job.probability_layers)
    assert folder_state(builtin_models) == before

    predict.set_model("no such model")
    assert not predict.model_note.isVisibleTo(predict)


@gui
def test_train_starts_from_nothing_a_builtin_model_or_a_run_in_one_field(
        builtin_models, make_napari_viewer, monkeypatch, tmp_path):
    before = folder_state(builtin_models)
    viewer = make_napari_viewer()
    painted_parts(viewer)
    train = dock(viewer, "Train")
    started = []  # the child's command lines (a real child would not see the fake models)
    monkeypatch.setattr(train.runner, "start",
                        lambda args, run_dir: started.append(train_command(args)))
    combo = train.start_from.combo
    assert items(combo)[:2] == ["planned", "nothing"] and combo.currentText() == "planned"
    assert {"nuclei", "nuclei3d"} <= set(items(combo))
    assert combo.itemData(combo.findText("nuclei3d"), Qt.ToolTipRole) \
        == builtin.describe("nuclei3d")

    def start(name):
        train.run_folder.setText(str(tmp_path / name))
        count = len(started)
        train.start_button.click()
        train._end_ui()
        return started[-1] if len(started) > count else None

    assert "--init-from" not in start("planned")  # the auto plan may propose a start
    choose_item(combo, "nothing")
    command = start("nothing")
    assert command[command.index("--init-from") + 1] == "none"  # no proposal either

    train.preset.setCurrentText("industrial")
    train.base_channels.setCurrentIndex(train.base_channels.findData(8))
    choose_item(combo, "nuclei")
    # the plan takes the model's network and size: its weights fit only those
    assert train.preset.currentText() == "auto" and train.base_channels.currentData() is None
    assert train.start_from.note.text().startswith("built-in model: 2D nuclei (a test model)")
    command = start("from_nuclei")
    assert command[command.index("--init-from") + 1] == "nuclei"
    args = build_parser().parse_args(command[command.index("train"):])
    assert args.init_from == "nuclei"
    pairs = lambda run: sorted(p.name for p in (tmp_path / run / "data" / "images").iterdir())  # noqa: E731
    assert pairs("from_nuclei") == pairs("planned")  # the painted ones: a model has no data

    seen = len(notification_manager.records)
    choose_item(combo, "nuclei3d")
    wrong = "nuclei3d is a 3D model and the image is 2D: choose a 2D model (or nothing)"
    assert train.start_from.note.text().startswith(wrong)
    assert start("from_nuclei3d") is None
    assert [m for m in errors_since(seen) if m.startswith(wrong)]
    assert not (tmp_path / "from_nuclei3d").exists()

    train.set_init_from(tmp_path / "from_nuclei")  # a run, typed or browsed: as before
    assert combo.currentText() == str(tmp_path / "from_nuclei")
    assert not train.start_from.note.text()
    assert folder_state(builtin_models) == before


@gui
def test_nothing_is_written_into_a_builtin_models_folder(builtin_models, make_napari_viewer,
                                                         tmp_path):
    before = folder_state(builtin_models)
    viewer = make_napari_viewer()
    painted_parts(viewer)
    train, predict, correct = (dock(viewer, name) for name in ("Train", "Predict", "Correct"))
    folder = builtin_models / "nuclei"
    seen = len(notification_manager.records)

    train.run_folder.setText(str(folder))
    train.start_button.click()
    predict.set_model("nuclei")
    assert predict.export(folder / "nuclei.zip") is None
    correct.image_combo.value = viewer.layers["parts"]
    correct.labels_combo.value = viewer.layers["parts labels"]
    for run in ("nuclei", folder):
        correct.run_combo.setEditText(str(run))
        correct.add_to_training_set()

    errors = errors_since(seen)
    assert len(errors) == 4, errors
    assert all("part of the installed package" in m for m in errors), errors
    assert errors[2].startswith("nuclei is a built-in model") and "Train widget" in errors[2]
    assert not train.runner.is_running()
    assert folder_state(builtin_models) == before
