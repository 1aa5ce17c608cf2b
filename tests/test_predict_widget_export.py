"""The Predict widget's backend choice, its Export… button, bioimage.io packages as models and
averages of several runs (Average with)."""
import zipfile

import numpy as np
import pytest
from export_support import make_run, real_image
from gui_support import PLUGIN, gui

napari = pytest.importorskip("napari")

from napari.utils.notifications import notification_manager  # noqa: E402


@pytest.fixture
def predict_widget(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")
    widget.set_model(make_run(tmp_path, "tiny_unet"))
    layer = viewer.add_image(real_image("tiny_unet")[:128, :192], name="scan")
    widget.image_combo.value = layer
    widget.tile_size.setValue(128)
    widget.device.setCurrentText("cpu")
    return viewer, widget


@gui
def test_export_writes_a_package_that_the_widget_predicts_with(predict_widget, qtbot, tmp_path):
    viewer, widget = predict_widget
    worker = widget.export(tmp_path / "scan_model.zip")
    qtbot.waitUntil(lambda: (tmp_path / "scan_model.zip").exists(), timeout=120_000)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=10_000)
    with zipfile.ZipFile(tmp_path / "scan_model.zip") as archive:
        assert "rdf.yaml" in archive.namelist()
    # the notice comes through a queued signal, after the worker's thread ended: wait for it
    # (a loaded machine showed it only after the check)
    qtbot.waitUntil(lambda: any("exported" in str(n.message)
                                for n in notification_manager.records), timeout=10_000)

    widget.set_model(tmp_path / "scan_model.zip")
    widget.backend.setCurrentText("onnxruntime")
    widget.predict_button.click()
    qtbot.waitUntil(lambda: widget.last_job is not None and not widget.last_job.running,
                    timeout=60_000)
    job = widget.last_job
    assert job.error is None and job.labels_layer.data.shape == (128, 192)
    assert job.probabilities.min() >= 0.0 and job.probabilities.max() <= 1.0


@gui
def test_export_with_a_wrong_name_is_a_notification(predict_widget, tmp_path):
    _, widget = predict_widget
    seen = len(notification_manager.records)
    assert widget.export(tmp_path / "model.h5") is None
    [message] = [str(n.message) for n in notification_manager.records[seen:]]
    assert ".zip" in message and ".onnx" in message
    assert not (tmp_path / "model.h5").exists()


@gui
def test_the_widget_averages_the_runs_it_is_given_and_refuses_another_task(predict_widget, qtbot,
                                                                          tmp_path):
    from napari_unet.engine import predict_array

    viewer, widget = predict_widget
    first = tmp_path / "tiny_unet"
    second = make_run(tmp_path, "tiny_unet", seed=1, name="second")
    widget.backend.setCurrentText("torch")
    widget.add_average(second)
    widget.predict_button.click()
    assert "the average of 2 models" in widget.status.text()
    qtbot.waitUntil(lambda: widget.last_job is not None and not widget.last_job.running,
                    timeout=60_000)
    job = widget.last_job
    image = viewer.layers["scan"].data
    options = dict(tile_size=[128], device="cpu", backend="torch")
    together, _ = predict_array([first, second], image, **options)
    alone, _ = predict_array(first, image, **options)
    assert job.error is None
    np.testing.assert_allclose(job.probabilities, together, atol=1e-5)
    assert np.abs(job.probabilities - alone).max() > 0.02  # not the first model's alone

    widget.remove_average()
    widget.add_average(make_run(tmp_path, "unet", classes=3, name="three_classes"))
    widget.last_job = None
    seen = len(notification_manager.records)
    widget.predict_button.click()
    qtbot.waitUntil(lambda: widget.job is not None and not widget.job.running, timeout=60_000)
    messages = [str(n.message) for n in notification_manager.records[seen:]]
    assert any("models of one task" in m for m in messages), messages
    assert widget.last_job is None and widget.predict_button.isEnabled()
    assert [layer.name for layer in viewer.layers].count("scan prediction") == 1


def test_backend_choices_are_the_engines():
    import torch

    from napari_unet.choices import BACKENDS
    from napari_unet.engine.prediction.backends import choose_backend
    assert BACKENDS[0] == "auto"
    assert {choose_backend(name, torch.device("cpu"), "off") for name in BACKENDS} <= set(
        BACKENDS[1:])
    assert np.isin(["torch", "onnxruntime", "openvino"], BACKENDS).all()
