"""The training data of the built-in `nuclei3d` model: 3D nuclei of Arabidopsis ovules (MIT).

Source: github.com/kreshuklab/plant-seg (MIT), at commit 9d748063, tests/resources/data/: three
100^3 crops of confocal stacks of nuclei in Arabidopsis ovules (Vijayan et al., "A deep
learning-based toolkit for 3D nuclei segmentation", the GoNuclear data), each with one label per
nucleus, anisotropic voxels (about 0.284 um in Z, 0.127 um in Y and X). The script clones the
repository (or reads a clone given with --source), reads its HDF5 files (h5py: `pip install h5py`)
and writes, outside the repository:

    OUT/train/images/ID.tif   uint8 ZYX, the voxel size as tifffile's spacing_um
    OUT/train/masks/ID.tif    uint16 instance ids, one per nucleus
    OUT/heldout/...           the crop held out of training (the card's score)

Crops 1135 and 1137 train the model; 1136 is held out (it is ../shared/data/ovules3d's
1136_mini_image.tif, which the script checks voxel for voxel). The 3D nuclei the project keeps
aside (shared/KEPT_ASIDE.md: funalab/QCANet, BBBC050) are never read.

    python scripts/builtin/ovules3d.py OUT [--source CLONE] [--shared ../shared/data/ovules3d]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

REPOSITORY = "https://github.com/kreshuklab/plant-seg"
COMMIT = "9d748063cc9de8d8025aaf691a11483b94a5894c"
CROPS = {"1135": "train/1135_mini.h5", "1136": "train/1136_mini.h5", "1137": "val/1137_mini.h5"}
HELD_OUT = "1136"


def clone(folder: Path) -> Path:
    if not folder.exists():
        subprocess.run(["git", "clone", "--quiet", REPOSITORY, str(folder)], check=True)
    subprocess.run(["git", "-C", str(folder), "checkout", "--quiet", COMMIT], check=True)
    return folder


def read_crop(path: Path) -> tuple[np.ndarray, np.ndarray, list[float]]:
    try:
        import h5py
    except ImportError:
        sys.exit("error: reading the crops needs h5py: pip install h5py")
    with h5py.File(path, "r") as h5:
        raw, label = h5["raw"][...], h5["label"][...]
        spacing = [float(v) for v in h5["raw"].attrs["element_size_um"]]
    return raw, label.astype(np.uint16), spacing


def write(folder: Path, name: str, raw: np.ndarray, label: np.ndarray, spacing: list[float]) -> None:
    meta = {"axes": "ZYX", "spacing_um": spacing}
    for sub, array in (("images", raw), ("masks", label)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / sub / f"{name}.tif", array, metadata=meta, compression="zlib")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, default=None, help="a clone of plant-seg (else cloned into OUT/plant-seg)")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[3] / "shared/data/ovules3d")
    args = parser.parse_args(argv)
    source = args.source if args.source is not None else clone(args.out / "plant-seg")
    for name, rel in CROPS.items():
        raw, label, spacing = read_crop(source / "tests/resources/data" / rel)
        held = name == HELD_OUT
        shared = args.shared / f"{name}_mini_image.tif"
        if held and shared.exists() and not np.array_equal(tifffile.imread(shared), raw):
            sys.exit(f"error: crop {name} differs from {shared}: the held-out crop must be the shared one")
        write(args.out / ("heldout" if held else "train"), name, raw, label, spacing)
        print(f"{name}: {'held out' if held else 'train'} {raw.shape} {int(label.max())} nuclei, spacing {spacing}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
