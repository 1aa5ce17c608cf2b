"""Ship a trained run as a built-in model: napari_unet/builtin/NAME/{best.pt, card.json, card.md}.

The checkpoint keeps what prediction and fine-tuning need (the averaged weights in float16,
the config, normalisation, label head) and nothing a resume needs (optimizer, scheduler, RNG),
so that a 2M-parameter UNet takes under 4 MB of the wheel. The card's figures are measured
here: the object diameter of the training masks (median equivalent diameter of their objects,
what prediction rescales other images to) and the scores on the held-out data.

    python scripts/builtin/ship.py RUN NAME --card CARD.json --train-masks DIR
        [--heldout-images DIR --heldout-masks DIR] [--seed-threshold T]

A card whose "rescale" is false (membranes) ships no object size: its images are predicted at
their own scale.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch
from skimage.measure import label, regionprops

from napari_unet import builtin
from napari_unet.engine.checkpoint import read_checkpoint
from napari_unet.runs import find_checkpoint

KEEP = ("format_version", "model_hparams", "config", "norm_stats", "step", "best_dice",
        "data_info")


def object_diameter(mask_folder: Path) -> float:
    """Median equivalent diameter (pixels, in the image plane) of the masks' objects."""
    diameters = []
    for path in sorted(mask_folder.glob("*.tif")):
        mask = tifffile.imread(path)
        ids = mask if mask.max() > 1 and len(np.unique(mask)) > 2 else label(mask > 0)
        for region in regionprops(ids):
            if mask.ndim == 3:  # a volume: the widest slice's equivalent diameter
                area = max(np.count_nonzero(plane) for plane in region.image)
            else:
                area = region.area
            diameters.append(2 * np.sqrt(area / np.pi))
    return float(np.median(diameters))


def stripped(state: dict, diameter: float | None, objects=None,
             seed_threshold: float | None = None) -> dict:
    """The checkpoint to ship; `diameter` None: a model whose images are not rescaled to its
    objects' size (membranes: no objects of one size); `seed_threshold`: its watershed's seed
    threshold (a model of objects), kept in its label head."""
    weights = state.get("ema_state") or state["model_state"]
    small = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    result = {k: state[k] for k in KEEP}
    result["model_state"] = small
    result["data_info"] = dict(state["data_info"])
    if diameter is not None:
        result["data_info"]["object_diameter"] = round(diameter, 1)
    if seed_threshold is not None:
        labels = dict(result["data_info"]["labels"])
        if not labels.get("objects"):
            raise SystemExit("--seed-threshold is for a model of objects (--instances boundary)")
        result["data_info"]["labels"] = dict(labels, seed_threshold=seed_threshold)
    if objects == "membranes":  # its predictions come with the cells between the membranes
        result["data_info"]["objects"] = "membranes"
    if state["data_info"].get("in_channels") == 1:  # trained on colour images' luminance
        result["data_info"]["colour"] = "luminance"
    result["extra"] = {}
    return result


def score(folder: Path, images: Path, masks: Path, objects: bool = True) -> dict:
    """Foreground Dice (and AP@0.5 for a model of objects) on held-out data, by
    `napari_unet evaluate`."""
    command = [sys.executable, "-m", "napari_unet.cli", "evaluate", "--run", str(folder),
               "--images", str(images), "--masks", str(masks)] + ["--instances"] * objects
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return dict(part.split("=") for part in out.split() if "=" in part)


def _number(text: str):
    """An int or float where `text` reads as one, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def card_markdown(card: dict) -> str:
    """The card for people, from the card's data."""
    lines = [f"# {card['title']} (`{card['name']}`)", "", card["summary"] + ".", "",
             f"- images: {card['kind'].upper()}, {card['channels']} channel"
             + (f" ({card['colour']})" if card.get("colour") else ""),
             (f"- objects it was trained on: {card['diameter']} px across (median); other sizes "
              f"are predicted at the matching scale (`--diameter`)" if card.get("diameter")
              else "- images are predicted at their own scale (no object size to match)")]
    if card.get("seed_threshold") is not None:
        lines += [(f"- objects: the watershed's seeds are where P(interior) >= "
                  f"{card['seed_threshold']} ({card.get('seed_threshold_chosen', 'chosen')})")]
    lines += [f"- {card['use']}"] if card.get("use") else []
    lines += [f"- limits: {card['limits']}"] if card.get("limits") else []
    lines += ["", "## Data", ""]
    for source in card["sources"]:
        lines += [(f"- [{source['name']}]({source['url']}) (commit {source['commit'][:8]}), "
                  f"license {source['license']}: {source['taken']}")]
    training = card["training"]
    lines += ["", "## Training", "", (f"{training['recipe']}; {card['steps']} steps, "
              f"{training['minutes']} minutes on a {training['device']}:"), "",
              f"    {training['command']}", "",
              "Rebuilt from the public sources by the scripts in `scripts/builtin/`.", ""]
    scores = card.get("heldout_scores")
    if scores:
        shown = [k for k in SHOWN if k in scores]
        lines += ["## Scores on data held out of training", "", f"{card['heldout']}:", "",
                  "| " + " | ".join(shown) + " |", "|" + " --- |" * len(shown),
                  "| " + " | ".join(str(scores[k]) for k in shown) + " |", ""]
    return "\n".join(lines)


SHOWN = ("samples", "foreground_dice", "ap50", "seconds_per_image")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("name")
    parser.add_argument("--card", type=Path, required=True, help="the card's fixed part (JSON)")
    parser.add_argument("--train-masks", type=Path, required=True)
    parser.add_argument("--heldout-images", type=Path)
    parser.add_argument("--heldout-masks", type=Path)
    parser.add_argument("--scores", nargs="+", metavar="KEY=VALUE",
                        help="held-out scores measured elsewhere (benchmarks/builtin.py's row), "
                             "e.g. samples=1 foreground_dice=0.813 ap50=0.327")
    parser.add_argument("--seed-threshold", type=float,
                        help="the watershed's seed threshold on P(interior), chosen on data "
                             "that are not the held-out ones (the card says how)")
    parser.add_argument("--measured-by", default="python benchmarks/builtin.py",
                        help="the command that measured --scores")
    args = parser.parse_args(argv)
    folder = builtin.folder(args.name)
    folder.mkdir(parents=True, exist_ok=True)
    state = read_checkpoint(find_checkpoint(args.run))
    card = json.loads(args.card.read_text())
    # the card's "rescale": false: no object size to match (membranes)
    diameter = object_diameter(args.train_masks) if card.get("rescale", True) else None
    torch.save(stripped(state, diameter, card.get("objects"), args.seed_threshold),
               folder / builtin.WEIGHTS)
    if args.seed_threshold is not None:
        card["seed_threshold"] = args.seed_threshold
    card.update(name=args.name, steps=state["step"])
    if diameter is not None:
        card["diameter"] = round(diameter, 1)
    if "propose" in card and diameter is not None:  # the object size its data must have for the plan to propose it
        card["propose"]["diameter"] = round(diameter, 1)
    if args.heldout_images:
        card["heldout_scores"] = score(folder, args.heldout_images, args.heldout_masks,
                                       objects=card.get("objects") is True)
    if args.scores:
        card["heldout_scores"] = {**{key: _number(value) for key, value in
                                     (item.split("=", 1) for item in args.scores)},
                                  "measured_by": args.measured_by}
    (folder / builtin.CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
    (folder / builtin.CARD).write_text(card_markdown(card))
    size = (folder / builtin.WEIGHTS).stat().st_size / 1e6
    print(f"{args.name}: {size:.1f} MB, diameter {diameter} px, card {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
