"""Save a screenshot of napari with the EM sample and the Train, Predict and Correct widgets.

    python scripts/screenshot.py [--out docs/screenshot.png] [--steps 60] [--no-train]
                                 [--open FILE ...] [--slice Z] [--size 1280x800]

``--open`` opens files through the plugin's reader instead of the sample, e.g. a BraTS 2021
case: ``--open ../shared/data/brats2021/BraTS2021_00000_image.tif
../shared/data/brats2021/BraTS2021_00000_labels.tif --slice 70``.

Without a display it re-runs itself under ``xvfb-run``. By default it first trains a small
model on the sample from the Train widget (a real child process, CPU, in a temporary run
folder) so that the picture shows the loss/Dice curve and the predicted layers.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from viewer_support import close_toasts, save_screenshot, settle, wait

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "napari-unet-torch"


def _under_xvfb() -> None:
    """Re-run this script under Xvfb when there is no display to draw on."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") \
            or os.environ.get("NAPARI_UNET_SCREENSHOT_CHILD"):
        return
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        sys.exit("no display and no xvfb-run: install xvfb (see `make system-deps`)")
    os.environ["NAPARI_UNET_SCREENSHOT_CHILD"] = "1"
    os.execv(xvfb, [xvfb, "-a", "-s", "-screen 0 1920x1200x24", sys.executable,
                    str(Path(__file__).resolve()), *sys.argv[1:]])


def window_size(text: str) -> tuple[int, int]:
    """'1280x800' -> (1280, 800)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give the size as WIDTHxHEIGHT, "
                                         f"e.g. 1280x800") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the width and height must be positive")
    return width, height


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    parser.add_argument("--steps", type=int, default=60, help="training steps before the shot")
    parser.add_argument("--no-train", action="store_true", help="only open and dock")
    parser.add_argument("--open", nargs="+", metavar="FILE",
                        help="open these files (the plugin's reader) instead of the EM sample")
    parser.add_argument("--slice", type=int, default=3, help="the slice shown (first axis)")
    parser.add_argument("--size", type=window_size, default=(1800, 1100), metavar="WxH",
                        help="the window's size in pixels (default 1800x1100)")
    parser.add_argument("--run", metavar="RUN",
                        help="instead of training: predict the first image with this model "
                             "(a built-in model's name, a run folder or a checkpoint) from "
                             "the Predict widget")
    args = parser.parse_args(argv)
    _under_xvfb()
    os.environ.setdefault("QT_API", "pyqt6")  # the project's binding (the Makefile's), not
    # qtpy's first pick, PyQt5, when both are installed

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari UNet", show=True)
    window = viewer.window._qt_window  # a script, not a plugin: the window's size is ours to set
    window.resize(*args.size)
    if args.open:
        for path in args.open:
            viewer.open(path, plugin=PLUGIN)
    else:
        viewer.open_sample(PLUGIN, "em")
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    _, predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict", tabify=False)
    _, correct = viewer.window.add_plugin_dock_widget(PLUGIN, "Correct", tabify=True)
    app = QApplication.instance()
    app.processEvents()

    run_root = Path(tempfile.mkdtemp(prefix="napari_unet_screenshot_"))
    try:
        if args.run:
            predict.set_model(args.run)
            predict.predict()
            if not wait(app, lambda: predict.job is None or not predict.job.running, 900):
                print("prediction did not finish in time; taking the shot anyway",
                      file=sys.stderr)
        elif not args.no_train:
            train.steps.setValue(args.steps)
            train.device.setCurrentText("cpu")
            train.run_folder.setText(str(run_root / "run"))
            train.start_button.click()
            if not wait(app, lambda: train.runner.exit_code is not None, 600):
                print("training did not finish in time; taking the shot anyway", file=sys.stderr)
            elif train.runner.exit_code != 0:
                print(train.runner.stderr_text[-2000:], file=sys.stderr)
            wait(app, lambda: train.prediction is None or not train.prediction.running, 120)
            if "em labels" in viewer.layers:
                viewer.layers["em labels"].visible = False
            if "em" in viewer.layers:
                viewer.layers.selection.active = viewer.layers["em"]
        viewer.dims.set_current_step(0, args.slice)
        close_toasts(window)
        settle(app, 1)
        viewer.reset_view()  # the canvas shrank as the widgets docked: fit the image again
        settle(app, 0.5)
        save_screenshot(viewer, args.out)
    finally:
        viewer.close()
        shutil.rmtree(run_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
