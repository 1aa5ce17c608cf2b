"""The training data of the built-in `membranes` model: ISBI 2012 EM slices (MIT).

Source: the ISBI 2012 EM segmentation challenge's training slices (Cardona et al. 2010) as kept in
github.com/zhixuhao/unet (MIT), commit b45af4d, data/membrane: the project's
../shared/data/isbi2012 holds slices 0-23 (24-29 are kept aside by the project and never read).
The script splits the shared copy, writing outside the repository:

    OUT/train/images.tif, OUT/train/masks.tif      slices 0-19 (20 x 512 x 512)
    OUT/heldout/images.tif, OUT/heldout/masks.tif  slices 20-23 (the card's score)

Masks keep the challenge's convention: 0 = membrane (the foreground: train with
--foreground-value 0), 255 = cell interior.

    python scripts/builtin/isbi2012.py OUT [--shared ../shared/data/isbi2012]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import tifffile

TRAIN = slice(0, 20)
HELD_OUT = slice(20, 24)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[3] / "shared/data/isbi2012")
    args = parser.parse_args(argv)
    images = tifffile.imread(args.shared / "train-volume.tif")
    masks = tifffile.imread(args.shared / "train-labels.tif")
    for part, rows in (("train", TRAIN), ("heldout", HELD_OUT)):
        (args.out / part).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(args.out / part / "images.tif", images[rows])
        tifffile.imwrite(args.out / part / "masks.tif", masks[rows])
        print(f"{part}: slices {rows.start}-{rows.stop - 1}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
