"""Built-in models: data, not code. Each lives in a folder of this package that looks like a run
folder to the loader (``NAME/best.pt``, the weights with their config, normalisation and head)
beside its card (``NAME/card.md`` for people, ``NAME/card.json`` for the faces: what it
segments, its training data and their licenses, how it was trained, its scores on data held
out of training). ``scripts/builtin/`` rebuilds each one from public sources.

A name is resolved where a run folder is expected: an existing path wins, else a built-in
name. No torch, numpy or Qt here: the CLI and the widgets list the models without loading one.
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
WEIGHTS, CARD, CARD_JSON = "best.pt", "card.md", "card.json"


def names() -> list[str]:
    """The built-in models shipped with this installation, sorted."""
    return sorted(p.parent.name for p in HERE.glob(f"*/{WEIGHTS}"))


def folder(name: str) -> Path:
    return HERE / name


@cache
def card(name: str) -> dict:
    """The model's card as data: title, summary, kind, the object diameter it was trained on
    (pixels), sources with licenses, training, held-out scores."""
    path = folder(name) / CARD_JSON
    return json.loads(path.read_text()) if path.is_file() else {"name": name}


def builtin_name(run_or_name) -> str | None:
    """The built-in model `run_or_name` names, or None when it names a path that exists or
    no built-in model."""
    text = str(run_or_name)
    if Path(text).exists() or text not in names():
        return None
    return text


def is_inside(path) -> bool:
    """Whether `path` lies in the built-in models' folder (the installed package: never
    written)."""
    text = str(path).strip()
    return bool(text) and Path(text).expanduser().resolve().is_relative_to(HERE.resolve())


def resolve(run_or_name):
    """The folder of a built-in model for its name; anything else unchanged."""
    name = builtin_name(run_or_name)
    return folder(name) if name else run_or_name


def describe(name: str) -> str:
    """One line for a list: 'nuclei: 2D nuclei (fluorescence, brightfield, H&E), as objects'."""
    return f"{name}: {card(name).get('summary', 'a built-in model')}"
