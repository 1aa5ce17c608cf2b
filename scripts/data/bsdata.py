"""BSData: pitting on ball screw drives, 1104 photos with polygon masks; most hold no defect.

Source: github.com/2Obe/BSData, commit 7204b28a621733c01cd75899ed9ea27f6ea0b9e3 (Schlagenhauf,
Landwehr, "Industrial Machine Tool Element Surface Defect Dataset", arXiv 2103.13003, 2021).
License: the repository's LICENSE file is Creative Commons Attribution-ShareAlike 4.0
International (CC BY-SA 4.0): training and shipping weights allowed, with attribution and the
same license.

The set: image_data.json lists the 1104 photos in data/ (RGB JPEG: 1130 x 460 or 1540 x 645 for
the 1035 photos of 15 spots on one drive type, taken from 28 Aug to 16 Sep 2020 as the pitting
grew; 55 sizes of about 2700 x 900 for the 69 photos of the other type) and, for 394 of them, a
labelme file in label/ holding "Pitting" polygons. The other 710 hold no annotation. In a wear
sequence (one spot, NN_YYMMDDhhmmss_SPOT_ANGLE_crop_K.jpg, in time order) pitting does not heal,
so an unannotated photo taken before the spot's first annotated one holds no pitting, but one
taken after it is of unknown status (the last photo of 10 of the 15 spots, 3 between annotated
ones, and 15 of spot 585000_090 after its first two annotated ones): those 28 are left out. One
spot (477500_315) has no annotated photo at all; its 69 are kept as defect-free. The file names'
last digit does not say which photos hold a defect, though the README says so (167 annotated
photos end in _2, 22 unannotated in _1; the digit follows the size). data/BSD/test/ holds a
stray copy of one photo, not listed in image_data.json: ignored.

Taken: the 394 annotated photos (mask 1 = inside a Pitting polygon, drawn as labelme draws it)
and the 682 unannotated photos before their spot's first pitting (mask all 0), 1076 in all, 63 %
of them without a defect. Under the cap (300 by default) both groups are thinned evenly in name
order (time order within a spot), keeping that share: 110 with pitting, 190 without. Images are
written as 8-bit grey (PIL's "L", ITU-R 601 luma), at their own size; groups.txt names each
photo's spot (a spot's photos are near-duplicates: any_data.py tests on whole spots). A label that is not a
Pitting polygon, or that names another image or size, stops the script.

    python scripts/data/bsdata.py --out DIR [--from-git-dir PATH | --from-dir PATH] [--cap N]
"""
from __future__ import annotations

import json
import re
import sys

import numpy as np
from common import InputError, decode, pick_keeping_share, run
from PIL import Image, ImageDraw

REPOSITORY = "2Obe/BSData"
COMMIT = "7204b28a621733c01cd75899ed9ea27f6ea0b9e3"
LICENSE = "CC BY-SA 4.0 (the repository's LICENSE file)"
SEQUENCE = re.compile(r"\d+_(\d{12})_(\d+_\d+)_crop_\d+\.jpg$")  # time, spot


def read_json(source, name: str):
    try:
        return json.loads(source.read(name))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{name}: not JSON ({exc})") from None


def pitting_mask(label: dict, filename: str, size: tuple[int, int], name: str) -> np.ndarray:
    """size: (width, height). Polygons filled with their outline, as labelme's shape_to_mask."""
    if label.get("imagePath") != filename or (label.get("imageWidth"), label.get("imageHeight")) != size:
        raise InputError(f"{name}: labels {label.get('imagePath')} of "
                         f"{label.get('imageWidth')}x{label.get('imageHeight')}, "
                         f"expected {filename} of {size[0]}x{size[1]}")
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for shape in label.get("shapes", []):
        if shape.get("label") != "Pitting" or shape.get("shape_type") != "polygon":
            raise InputError(f"{name}: a {shape.get('shape_type')} '{shape.get('label')}', "
                             "expected only 'Pitting' polygons")
        draw.polygon([tuple(point) for point in shape["points"]], outline=1, fill=1)
    return np.asarray(mask, dtype=np.uint8)


def known_free(entries: list[dict]) -> list[str]:
    """Unannotated photos that come before their spot's first annotated one (or are in no
    sequence); the others are of unknown status."""
    first = {}
    for entry in entries:
        found = SEQUENCE.match(entry["filename"])
        if found and entry.get("annotations"):
            time, spot = found.groups()
            first[spot] = min(first.get(spot, time), time)
    kept = []
    for entry in entries:
        found = SEQUENCE.match(entry["filename"])
        if entry.get("annotations") or (found and found.group(1) > first.get(found.group(2), "9" * 12)):
            continue
        kept.append(entry["filename"])
    return kept


def convert(source, cap: int):
    files = set(source.names())
    if "image_data.json" not in files:
        raise InputError("no image_data.json: give the BSData repository")
    entries = read_json(source, "image_data.json").get("images", [])
    labels = {entry["filename"]: entry["annotations"] for entry in entries if entry.get("annotations")}
    chosen = pick_keeping_share(list(labels), known_free(entries), cap)
    pairs = []
    for filename in chosen:
        if f"data/{filename}" not in files:
            raise InputError(f"image_data.json lists {filename}, but data/{filename} is missing")
        image = np.asarray(Image.fromarray(decode(source.read(f"data/{filename}"),
                                                  f"data/{filename}")).convert("L"))
        size = (image.shape[1], image.shape[0])
        if filename in labels:
            label_name = f"label/{labels[filename]}"
            if label_name not in files:
                raise InputError(f"image_data.json names {label_name} for {filename}: it is missing")
            mask = pitting_mask(read_json(source, label_name), filename, size, label_name)
        else:
            mask = np.zeros(image.shape, np.uint8)
        found = SEQUENCE.match(filename)  # the spot: its photos over time are near-duplicates
        pairs.append((filename.removesuffix(".jpg"), image, mask,
                      found.group(2) if found else filename.removesuffix(".jpg")))
    return pairs


def main(argv: list[str] | None = None) -> int:
    return run(convert, argv, __doc__, REPOSITORY, COMMIT,
               title="BSData ball screw drive pitting", terms=LICENSE,
               taken=("the photos of image_data.json with a label (mask 1 = inside a Pitting "
                      "polygon) and the unannotated ones taken before their spot's first pitting "
                      "(mask 0); the later unannotated ones left out; grey (PIL L); evenly "
                      "thinned to the cap keeping the defect-free share."))


if __name__ == "__main__":
    sys.exit(main())
