"""CrackForest (CFD): road-surface cracks, 118 RGB photos of 480 x 320 with pixel masks.

Source: github.com/cuilimeng/CrackForest-dataset, commit ed57c2d96754e6c7d105805cd29aeeb3a799f267
(Shi, Cui, Qi, Meng, Chen, "Automatic road crack detection using random structured forests",
IEEE T-ITS 17(12), 2016). License, as its README states it: "The dataset is made available for
non-commercial research purposes only." So: benchmarking only, never a built-in model's weights.

Taken: every image/NNN.jpg that has a groundTruth/NNN.mat (118 of the 155 photos, 001-118; the
other 37, 201-208 and 301-329, have no labels and are left out), RGB as given. The masks come from the .mat files'
`Segmentation` map, a region map in the BSDS format: 1 is the background, 2 the cracks, and
higher values are either pockets of road enclosed by cracks (value 3: compact regions, up to 45 000
px) or cracks drawn in a later stroke (value 4, in 5 images: lines at most ~5 px wide). Crack
(mask 1) = values 2 and 4; background (0) = 1 and 3. A value other than 1-4, or a mask whose
size differs from its image, stops the script.

    python scripts/data/crackforest.py --out DIR [--from-git-dir PATH | --from-dir PATH]
"""
from __future__ import annotations

import io
import re
import sys

import numpy as np
from common import InputError, decode, pick, run

REPOSITORY = "cuilimeng/CrackForest-dataset"
COMMIT = "ed57c2d96754e6c7d105805cd29aeeb3a799f267"
LICENSE = ("non-commercial research purposes only (README: 'The dataset is made available for "
           "non-commercial research purposes only.')")
CRACK, BACKGROUND = (2, 4), (1, 3)


def crack_mask(segmentation: np.ndarray, name: str) -> np.ndarray:
    values = set(np.unique(segmentation).tolist())
    if not values <= set(CRACK + BACKGROUND):
        raise InputError(f"{name}: Segmentation values {sorted(values)}, expected 1-4: "
                         "the conversion rule does not know the others")
    return np.isin(segmentation, CRACK).astype(np.uint8)


def convert(source, cap: int):
    from scipy.io import loadmat

    files = set(source.names())
    labelled = sorted(m.group(1) for m in map(re.compile(r"groundTruth/(\d+)\.mat$").match, files) if m)
    if not labelled:
        raise InputError("no groundTruth/NNN.mat files: give the CrackForest-dataset repository")
    pairs = []
    for number in pick(labelled, cap):
        if f"image/{number}.jpg" not in files:
            raise InputError(f"groundTruth/{number}.mat has no image/{number}.jpg")
        image = decode(source.read(f"image/{number}.jpg"), f"image/{number}.jpg")
        truth = loadmat(io.BytesIO(source.read(f"groundTruth/{number}.mat")))["groundTruth"]
        mask = crack_mask(np.asarray(truth[0, 0]["Segmentation"]), f"groundTruth/{number}.mat")
        pairs.append((number, image, mask))
    return pairs


def main(argv: list[str] | None = None) -> int:
    return run(convert, argv, __doc__, REPOSITORY, COMMIT,
               title="CrackForest (CFD) road cracks", terms=LICENSE,
               taken="image/NNN.jpg with groundTruth/NNN.mat; mask 1 = Segmentation 2 or 4.")


if __name__ == "__main__":
    sys.exit(main())
