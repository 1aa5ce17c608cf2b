"""From strokes to a whole-image prediction in napari, timed, with a screenshot.

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/strokes_demo.py \
        [--fraction 0.03] [--strokes both] [--out strokes.png]

Opens the first ISBI 2012 slice (512 x 512, from ../shared/data/isbi2012; the EM sample where
it is absent), paints strokes on it as a user would (benchmarks/sparse.py's simulation: lines
through the membranes, value 2, and through the cells, value 1, and with `--strokes both` (the
default) also along each side of every membrane, on `fraction` of the pixels),
sets the Train widget's *Unpainted pixels* to *are unknown* (which trains a first model for
one minute) and presses Start. It prints the seconds from Start to the prediction layers and
how long the GUI thread's 16 ms timer waited between ticks meanwhile (p50, p99, the longest),
then saves a screenshot.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from viewer_support import save_screenshot, settle, wait

ROOT = Path(__file__).resolve().parent.parent
ISBI = ROOT.parent / "shared" / "data" / "isbi2012"
PLUGIN = "napari-unet-torch"


def _simulation():
    spec = importlib.util.spec_from_file_location("_sparse", ROOT / "benchmarks" / "sparse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _slice():
    """(image, membrane mask) of the first ISBI slice, or of the EM sample."""
    if (ISBI / "train-labels.tif").exists():
        import tifffile

        return (tifffile.imread(ISBI / "train-volume.tif")[0],
                tifffile.imread(ISBI / "train-labels.tif")[0] == 0)
    from napari_unet.sample_data import SAMPLES

    images, masks = SAMPLES["em"]()
    return images[0], masks[0] > 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.03)
    parser.add_argument("--strokes", default="both", choices=["skeleton", "edges", "both"],
                        help="where the simulated strokes run (benchmarks/sparse.py --strokes)")
    parser.add_argument("--out", default="strokes.png")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    image, membrane = _slice()
    drawn = _simulation().strokes(membrane.astype(np.uint8), args.fraction,
                                  np.random.default_rng(0), args.strokes)
    painted = np.where(drawn == 1, 2, np.where(drawn == 0, 1, 0)).astype(np.uint8)
    viewer = napari.Viewer(title="napari UNet: strokes", show=True)
    viewer.window._qt_window.resize(1800, 1100)
    viewer.add_image(image, name="em")
    viewer.add_labels(painted, name="strokes")
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    app = QApplication.instance()
    train.unpainted.meaning.setCurrentText(train.unpainted.UNKNOWN)
    train.device.setCurrentText("cpu")
    train.holdout.setChecked(False)
    run_root = Path(tempfile.mkdtemp(prefix="napari_unet_strokes_"))
    train.run_folder.setText(str(run_root / "run"))
    print(f"labelled: {np.count_nonzero(painted) / painted.size:.2%}; {train.learns.text()}")
    before = {layer.name for layer in viewer.layers}
    stamps = []
    timer = QTimer()
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    timer.start(16)
    try:
        started = time.perf_counter()
        train.start_button.click()
        while not ({layer.name for layer in viewer.layers} - before):
            if time.perf_counter() - started > args.timeout or \
                    (train.runner.exit_code not in (None, 0)):
                print(train.runner.stderr_text[-2000:], file=sys.stderr)
                return 1
            app.processEvents()
            time.sleep(0.005)
        seconds = time.perf_counter() - started
        timer.stop()
        gaps = np.diff(stamps) * 1000
        print(f"strokes_gui: seconds={seconds:.1f} p50_ms={np.median(gaps):.1f} "
              f"p99_ms={np.percentile(gaps, 99):.1f} max_ms={gaps.max():.1f} "
              f"new_layers={sorted({layer.name for layer in viewer.layers} - before)}")
        wait(app, lambda: train.runner.exit_code is not None, 120)
        settle(app, 2)
        save_screenshot(viewer, args.out)
    finally:
        timer.stop()
        viewer.close()
        shutil.rmtree(run_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
