"""A predicted OME-Zarr volume in napari: an ovule stack written as OME-Zarr, predicted over two
Dask workers into OME-Zarr, both opened lazily by napari-ome-zarr, with a screenshot.

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/zarr_demo.py \
        [--run RUN | --minutes 3] [--out zarr.png]

Without ``--run`` it first trains a 3D model on ovule stack 1135 (the CLI, volume3d preset).
Stack 1136, which the model did not see, is written as OME-Zarr (with its voxel size), then
``napari-unet predict --workers 2`` writes the prediction as OME-Zarr (probabilities pyramid,
labels group). napari opens the stack and the prediction with napari-ome-zarr (dask arrays,
nothing loaded whole); the Predict widget then predicts the lazy stack layer in napari too
(into scratch files), and the screenshot shows a middle plane with both.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from viewer_support import save_screenshot, settle, wait

ROOT = Path(__file__).resolve().parent.parent
OVULES = ROOT.parent / "shared" / "data" / "ovules3d"
PLUGIN = "napari-unet-torch"
CLI = [sys.executable, "-m", "napari_unet.cli"]


def train(minutes: float, folder: Path) -> Path:
    run = folder / "run"
    subprocess.run(CLI + ["train", "--images", str(OVULES / "1135_mini_image.tif"),
                          "--masks", str(OVULES / "1135_mini_labels.tif"), "--preset",
                          "volume3d", "--minutes", str(minutes), "--out", str(run)], check=True)
    return run


def as_ome_zarr(tif: Path, target: Path) -> Path:
    import tifffile
    import zarr
    from ome_zarr.writer import write_image

    from napari_unet.io import read_spacing

    image = tifffile.imread(tif)
    spacing = read_spacing(tif) or (1.0, 1.0, 1.0)
    write_image(image, zarr.open_group(str(target), mode="w"), axes="zyx",
                scale=dict(zip("zyx", spacing)), scale_factors=[{"z": 1, "y": 2, "x": 2}],
                storage_options={"chunks": (32, 64, 64)})
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--out", default="zarr.png")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="napari_unet_zarr_"))
    run = args.run or train(args.minutes, folder)
    stack = as_ome_zarr(OVULES / "1136_mini_image.tif", folder / "ovule_1136.zarr")
    output = folder / "ovule_1136_prediction.zarr"
    started = time.monotonic()
    subprocess.run(CLI + ["predict", "--run", str(run), "--input", str(stack), "--output",
                          str(output), "--workers", "2", "--block", "64",
                          "--memory-limit", "4GiB"], check=True)
    print(f"predicted over 2 workers in {time.monotonic() - started:.1f} s -> {output}")

    os.environ.setdefault("QT_API", "pyqt6")  # napari's own (its PyQt5 support is ending)
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari UNet: an OME-Zarr volume, predicted", show=True)
    viewer.window._qt_window.resize(1800, 1100)
    [image] = viewer.open(str(stack), plugin="napari-ome-zarr")
    opened = viewer.open(str(output), plugin="napari-ome-zarr")
    for layer in opened:
        levels = len(layer.data) if layer.multiscale else 1
        array = layer.data[0] if layer.multiscale else layer.data
        print(f"opened {layer.name}: {type(layer).__name__}, {levels} level(s), "
              f"{type(array).__module__.split('.')[0]} array")
        layer.visible = type(layer).__name__ == "Labels"  # the workers' labels over the stack
    predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")[1]
    viewer.window.add_plugin_dock_widget(PLUGIN, "Correct")
    predict.model_combo.setEditText(str(run))
    predict.image_combo.value = image
    app = QApplication.instance()
    predict.predict_button.click()
    wait(app, lambda: predict.last_job is not None and not predict.last_job.running, 300)
    job = predict.last_job
    workers_labels = next(np.asarray(layer.data[0]) for layer in opened
                          if type(layer).__name__ == "Labels")
    print(f"in napari: '{job.labels_layer.name}' ({type(job.labels_layer.data).__name__}); "
          f"equal to the workers' labels on {np.mean(workers_labels == job.labels_layer.data):.4f}"
          f" of the voxels")
    job.labels_layer.visible = False
    viewer.dims.set_current_step(0, image.data[0].shape[0] // 2)
    settle(app, 2)
    viewer.reset_view()
    save_screenshot(viewer, args.out)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
