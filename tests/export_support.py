"""Small checkpoints of the three model families, written without training (seeded weights),
and real images from the shared data, for the export, backend and package tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from napari_unet.engine import preset_config
from napari_unet.engine.checkpoint import save_checkpoint
from napari_unet.engine.training.setup import make_model, window_sizes
from napari_unet.io import read_image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# preset, model options (true depth and padding, small widths), channels, classes, patch, norm
FAMILIES = {
    "tiny_unet": ("industrial", {"base_channels": 8}, 1, 2, [128],
                  dict(mode="minus_one_one", low=[0.0], high=[255.0], mean=[], std=[])),
    "unet": ("isbi2012", {"base_channels": 4}, 1, 2, [60],
             dict(mode="minus_one_one", low=[20.0], high=[230.0], mean=[], std=[])),
    "unet3d": ("volume3d", {"base_channels": 4, "max_channels": 32}, 4, 4, [64],
               dict(mode="zscore", low=[], high=[], mean=[300.0, 350.0, 320.0, 280.0],
                    std=[250.0, 300.0, 260.0, 240.0])),
}


def make_run(folder: Path, family: str, seed: int = 0, classes: int | None = None,
             name: str | None = None, weights: str = "checkpoints/best.pt") -> Path:
    """A run folder (``name``, else the family's) with a best.pt of ``family`` (weights drawn
    with `seed`; `classes`: other than the family's) at `weights` in it (a built-in model's
    folder holds it as best.pt)."""
    preset, options, channels, family_classes, patch, norm = FAMILIES[family]
    classes = classes or family_classes
    config = preset_config(preset, patch_size=patch, model_options=options, amp="off",
                           device="cpu")
    torch.manual_seed(seed)
    model = make_model(config, channels, classes)
    window, output = window_sizes(model, config.patch_size)
    run = Path(folder) / (name or family)
    save_checkpoint(run / weights, model=model, config=config,
                    norm_stats=norm, step=3, best_dice=0.5,
                    data_info={"num_classes": classes, "in_channels": channels,
                               "spatial_dims": config.spatial_dims, "input_size": list(window),
                               "output_size": list(output)})
    return run


def real_image(family: str) -> np.ndarray:
    """A real image of the right kind: a DAGM PNG (512^2), an ISBI slice cropped to 500^2 (the
    unpadded UNet's output for a 684 window), a BraTS crop (4, 64, 96, 64)."""
    if family == "tiny_unet":
        return np.asarray(read_image(DATA / "dagm2007_class1" / "0001.PNG"))
    if family == "unet":
        return np.asarray(read_image(DATA / "isbi2012" / "train-volume.tif")[3, :500, :500])
    volume = read_image(DATA / "brats2021" / "BraTS2021_00000_image.tif")
    return np.asarray(volume[:, 40:104, 40:136, 36:100])
