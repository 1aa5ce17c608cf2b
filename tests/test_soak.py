"""Soak: in one viewer, cycles of train -> cancel or finish -> predict -> correct -> add to the
training set. Nothing may pile up: child processes, threads, open files, memory, layers.

The cycle count is SOAK_CYCLES (8 by default, enough for one leaked process, thread or file per
cycle to show; SOAK_CYCLES=50 for a long soak); the figures are printed (run with -s).
"""
import gc
import os
import threading

import numpy as np
import pytest
from gui_support import PLUGIN, gui
from process_support import deadline_ms, resource_tracker

napari = pytest.importorskip("napari")
psutil = pytest.importorskip("psutil")

from napari_unet import runs  # noqa: E402
from napari_unet.sample_data import SAMPLES  # noqa: E402

CYCLES = int(os.environ.get("SOAK_CYCLES", "8"))
MEMORY_GROWTH_MB = 100
TIMEOUT_MS = deadline_ms(120)  # ceilings on waits for events, never a guess of speed


def dock(viewer, name):
    return viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]


def our_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("napari-unet")]


def open_files_under(folder):
    return [f.path for f in psutil.Process().open_files() if f.path.startswith(str(folder))]


def resident_mb():
    gc.collect()
    return psutil.Process().memory_info().rss / 2 ** 20


def train_once(train, qtbot, run_dir, cancel):
    train.run_folder.setText(str(run_dir))
    train.steps.setValue(100_000 if cancel else 2)
    train.start_button.click()
    if cancel:  # once it has trained a step, as a user watching the curve would
        qtbot.waitUntil(lambda: len(train.curve.loss) > 0 or not train.runner.is_running(),
                        timeout=TIMEOUT_MS)
        train.cancel_button.click()
    qtbot.waitUntil(lambda: train.runner.exit_code is not None, timeout=TIMEOUT_MS)
    assert train.runner.exit_code == (130 if cancel else 0), train.runner.stderr_text[-2000:]
    assert runs.find_checkpoint(run_dir, required=False) is not None


def predict_once(predict, qtbot, run_dir, image):
    predict.set_model(run_dir)
    predict.image_combo.value = image
    predict.predict_button.click()
    qtbot.waitUntil(lambda: predict.job is not None and not predict.job.running,
                    timeout=TIMEOUT_MS)
    job = predict.job
    assert job.error is None and job.labels_layer is not None
    return job


def correct_and_feed_back(correct, image, prediction, run_dir, cycle):
    correct.labels_combo.value = prediction
    correct.fill_holes()
    # the user's correction: a square the model missed (a different one each cycle)
    z, y = cycle % image.data.shape[0], 4 + 2 * (cycle % 20)
    square = np.mgrid[z:z + 1, y:y + 4, 8:12].reshape(3, -1)
    prediction.data_setitem(tuple(square), 1)
    correct.image_combo.value = image
    correct.run_combo.setEditText(str(run_dir))
    correct.add_to_training_set()


@gui
@pytest.mark.soak
def test_many_cycles_leave_nothing_behind(make_napari_viewer, qtbot, tmp_path):
    from napari_unet.training_set import pair_count

    viewer = make_napari_viewer()
    images, masks = SAMPLES["dagm"](n=4, size=64)
    image = viewer.add_image(images, name="parts")
    viewer.add_labels(masks.astype(np.uint8), name="parts labels")
    train, predict, correct = (dock(viewer, n) for n in ("Train", "Predict", "Correct"))
    train.batch_size.setValue(2)
    train.base_channels.setCurrentIndex(train.base_channels.findData(8))
    train.patch_size.setValue(64)
    train.amp.setCurrentText("off")
    train.device.setCurrentText("cpu")
    train.holdout.setChecked(False)
    train.predict_at_end.setChecked(False)
    predict.tile_size.setValue(64)
    predict.device.setCurrentText("cpu")
    me = psutil.Process()

    figures = []
    for cycle in range(CYCLES):
        run_dir = tmp_path / f"run{cycle}"
        train_once(train, qtbot, run_dir, cancel=cycle % 2 == 1)
        job = predict_once(predict, qtbot, run_dir, image)
        pairs_before = pair_count(run_dir / runs.DATA)
        correct_and_feed_back(correct, image, job.labels_layer, run_dir, cycle)
        assert pair_count(run_dir / runs.DATA) > pairs_before  # the corrected slices

        # this cycle's layers, and only these, were added; the user then closes them
        added = [layer.name for layer in viewer.layers][2:]
        assert added == ["parts probabilities", "parts prediction"]
        assert job.labels_layer.data.shape == image.data.shape
        assert set(np.unique(job.labels_layer.data)) <= {0, 1}
        for name in added:
            viewer.layers.remove(name)
        # nothing left running or open
        qtbot.waitUntil(lambda: not our_threads(), timeout=deadline_ms(10))
        # (Python's multiprocessing resource tracker, started once by earlier Dask tests,
        # lives as long as the test process: no work of ours)
        assert [c for c in me.children(recursive=True) if not resource_tracker(c)] == []
        assert open_files_under(tmp_path) == []
        figures.append((resident_mb(), me.num_threads(), me.num_fds()))

    first, last = figures[0], figures[-1]
    print(f"\nsoak: {CYCLES} cycles; after the first: {first[0]:.0f} MB, {first[1]} threads, "
          f"{first[2]} fds; after the last: {last[0]:.0f} MB, {last[1]} threads, {last[2]} fds; "
          f"growth {last[0] - first[0]:.1f} MB; MB per cycle {[round(f[0]) for f in figures]}")
    assert last[0] - first[0] < MEMORY_GROWTH_MB
    assert last[1] <= first[1] + 4, "threads pile up"
    assert last[2] <= first[2] + 4, "file descriptors pile up"
