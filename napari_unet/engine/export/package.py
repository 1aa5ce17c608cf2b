"""Reading a bioimage.io model package back: ``predict --model PACKAGE.zip``.

A package exported by napari-unet keeps the run's model options, normalisation, label head,
threshold and window under ``config.napari_unet`` and its ``pytorch_state_dict`` weights; from those this
module rebuilds the same :class:`Checkpoint` a run folder gives, so prediction (tiling, TTA,
out-of-core output, CPU backends) is the engine's own. Only the zip's ``rdf.yaml`` and weights
are read, with ``zipfile``, ``yaml`` and ``torch.load(weights_only=True)``: no extra is needed
and no code from the package is executed.
"""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import torch
import yaml

from ...errors import CheckpointError
from ..checkpoint import Checkpoint, build_from_state

CONFIG_KEY = "napari_unet"  # the same key engine.export writes


class _Yaml12(yaml.SafeLoader):
    """YAML 1.2 scalars, as bioimageio.spec writes them: PyYAML reads YAML 1.1, where ``off``
    is False and ``1e-05`` a string."""


_Yaml12.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12.add_implicit_resolver("tag:yaml.org,2002:bool",
                              re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Yaml12.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."))


def is_package(path) -> bool:
    path = Path(path)
    return path.suffix.lower() == ".zip" and path.is_file()


def _read_rdf(archive: zipfile.ZipFile, path: Path) -> dict:
    names = [n for n in archive.namelist() if n.endswith(("rdf.yaml", "bioimageio.yaml"))]
    if not names:
        raise CheckpointError(f"{path} is not a bioimage.io model package (no rdf.yaml in the "
                              f"zip): export one with `napari_unet export --format bioimageio`")
    rdf = yaml.load(archive.read(min(names, key=len)), Loader=_Yaml12)
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise CheckpointError(f"{path} describes a bioimage.io {rdf.get('type')!r}, not a model")
    return rdf


def load_package(path) -> Checkpoint:
    """A napari-unet checkpoint from a bioimage.io package that napari-unet exported."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            rdf = _read_rdf(archive, path)
            ours = (rdf.get("config") or {}).get(CONFIG_KEY)
            weights = (rdf.get("weights") or {})
            if ours is None:
                formats = ", ".join(weights) or "none"
                raise CheckpointError(
                    f"{path} was not exported by napari-unet (weights: {formats}): napari-unet "
                    f"runs only packages it exported; run this one with bioimageio.core "
                    f"(`bioimageio predict`)")
            source = (weights.get("pytorch_state_dict") or {}).get("source")
            if source is None:
                raise CheckpointError(f"{path} has no pytorch_state_dict weights: export the "
                                      f"run again with `napari_unet export`")
            state = torch.load(io.BytesIO(archive.read(source)), map_location="cpu",
                               weights_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is damaged or not a bioimage.io package ({reason}): "
                              f"export it again") from None
    model, config = build_from_state(ours["hparams"], state, ours["config"], path)
    data_info = dict(ours.get("data_info") or {})
    data_info.setdefault("input_size", ours.get("input_size"))
    if ours.get("labels"):  # packages from before the head: Checkpoint derives it from data_info
        data_info["labels"] = ours["labels"]
    return Checkpoint(model=model, config=config, norm_stats=ours["norm_stats"],
                      step=int(ours.get("step", 0)), best_dice=_dice(ours.get("best_dice")),
                      data_info=data_info, path=path, state={})


def _dice(value) -> float:
    """The best Dice a package saved; a run without validation saved NaN, which YAML holds as
    null."""
    return float("nan") if value is None else float(value)
