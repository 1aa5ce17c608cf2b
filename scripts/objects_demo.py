"""Nuclei as objects in napari: a model of objects predicts DSB 2018 images it did not train
on, the objects come back as a labels layer (one colour each), with a screenshot.

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/objects_demo.py \
        [--run RUN | --minutes 5] [--out objects.png]

Without ``--run`` it first trains one (the CLI, ``--instances boundary``, on the DSB 2018
images that ``benchmarks/objects.py`` trains on: every image but every third). It then opens
test images (every third one) side by side in napari, docks Predict and Correct, predicts
them with the Predict widget and saves a screenshot with the objects over the images.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from viewer_support import save_screenshot, settle, wait

ROOT = Path(__file__).resolve().parent.parent
DSB = ROOT.parent / "shared" / "data" / "dsb2018"
PLUGIN = "napari-unet-torch"


def train(minutes: float, folder: Path) -> Path:
    """A run of objects trained on DSB 2018's train part (every image but every third)."""
    data = folder / "data"
    for part in ("images", "masks"):
        (data / part).mkdir(parents=True)
    images = sorted((DSB / "images").glob("*.png"))
    for k, path in enumerate(images):
        if k % 3 != 2:
            (data / "images" / path.name).symlink_to(path)
            (data / "masks" / f"{path.stem}.tif").symlink_to(DSB / "instances" / f"{path.stem}.tif")
    run = folder / "run"
    subprocess.run([sys.executable, "-m", "napari_unet.cli", "train", "--data", str(data),
                    "--instances", "boundary", "--minutes", str(minutes), "--out", str(run)],
                   check=True)
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--images", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--out", default="objects.png")
    args = parser.parse_args(argv)
    import imageio.v3 as iio
    import napari
    from qtpy.QtWidgets import QApplication

    run = args.run or train(args.minutes, Path(tempfile.mkdtemp(prefix="napari_unet_objects_")))
    viewer = napari.Viewer(title="napari UNet: nuclei as objects", show=True)
    viewer.window._qt_window.resize(1800, 1100)
    paths = sorted((DSB / "images").glob("*.png"))
    layers = []
    for k, index in enumerate(args.images):
        image = iio.imread(paths[index])
        layers.append(viewer.add_image(image, name=paths[index].stem,
                                       translate=(0, 270 * k)))
    predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")[1]
    viewer.window.add_plugin_dock_widget(PLUGIN, "Correct")
    predict.model_combo.setEditText(str(run))
    app = QApplication.instance()
    for layer in layers:
        predict.image_combo.value = layer
        predict.predict_button.click()
        wait(app, lambda layer=layer: predict.last_job is not None
             and not predict.last_job.running and predict.last_job.image_layer is layer, 300)
        objects = predict.last_job.labels_layer
        print(f"{layer.name}: {len(np.unique(objects.data)) - 1} objects "
              f"({objects.name}, {objects.data.dtype})")
    settle(app, 2)
    viewer.reset_view()
    save_screenshot(viewer, args.out)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
