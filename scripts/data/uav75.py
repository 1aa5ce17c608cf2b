"""UAV75: thin cracks on concrete, 75 drone photos of 512 x 512 (RGB) with pixel masks.

Source: github.com/ben-z-original/uav75, commit eb552d046fe50b3325e89644aa9ae75e7bc7cbcc (Benz,
Debus, Ha, Rodehorst, "Crack segmentation on UAS-based imagery using transfer learning", IVCNZ
2019). License: the repository's LICENSE file is the GNU General Public License v3 ("GNU GENERAL
PUBLIC LICENSE Version 3, 29 June 2007"); the README states no other terms.

Taken: all 75 pairs of {train,val,test}_img/NAME.jpg and {train,val,test}_lab/NAME.png, written
as SPLIT_NAME.png (the authors' split stays readable in the name). The labels are RGBA colours:
white (255) = crack -> mask 1; black = background and grey (204) = "planking" (the formwork
joints that look like cracks, a distractor the authors annotated area-wise) -> mask 0. Cracks are
only a couple of pixels wide. Any other colour, or a size mismatch, stops the script.

    python scripts/data/uav75.py --out DIR [--from-git-dir PATH | --from-dir PATH]
"""
from __future__ import annotations

import re
import sys

import numpy as np
from common import InputError, decode, pick, run

REPOSITORY = "ben-z-original/uav75"
COMMIT = "eb552d046fe50b3325e89644aa9ae75e7bc7cbcc"
LICENSE = "GNU GPL v3 (the repository's LICENSE file)"
CRACK, PLANKING, BACKGROUND = 255, 204, 0


def crack_mask(label: np.ndarray, name: str) -> np.ndarray:
    grey = label[..., 0] if label.ndim == 3 else label
    if label.ndim == 3 and not (np.array_equal(grey, label[..., 1])
                                and np.array_equal(grey, label[..., 2])):
        raise InputError(f"{name}: the label is not grey: expected black, grey 204 and white")
    values = set(np.unique(grey).tolist())
    if not values <= {CRACK, PLANKING, BACKGROUND}:
        raise InputError(f"{name}: label values {sorted(values)}, expected 0, 204 and 255")
    return (grey == CRACK).astype(np.uint8)


def convert(source, cap: int):
    files = set(source.names())
    pattern = re.compile(r"(train|val|test)_img/(.+)\.jpg$")
    found = sorted((m.group(1), m.group(2)) for m in map(pattern.match, files) if m)
    if not found:
        raise InputError("no {train,val,test}_img/*.jpg files: give the uav75 repository")
    names = {f"{split}_{stem}": (split, stem) for split, stem in found}
    pairs = []
    for name in pick(list(names), cap):
        split, stem = names[name]
        label_name = f"{split}_lab/{stem}.png"
        if label_name not in files:
            raise InputError(f"{split}_img/{stem}.jpg has no {label_name}")
        image = decode(source.read(f"{split}_img/{stem}.jpg"), f"{split}_img/{stem}.jpg")
        mask = crack_mask(decode(source.read(label_name), label_name), label_name)
        pairs.append((name, image, mask))
    return pairs


def main(argv: list[str] | None = None) -> int:
    return run(convert, argv, __doc__, REPOSITORY, COMMIT,
               title="UAV75 concrete cracks (drone)", terms=LICENSE,
               taken=("all {train,val,test} pairs as SPLIT_NAME; mask 1 = white (crack); planking "
                      "(grey) and black = 0."))


if __name__ == "__main__":
    sys.exit(main())
