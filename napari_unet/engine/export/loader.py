"""One model loader for run folders, checkpoint files and bioimage.io packages: every face and
every part of the engine that needs a trained model (prediction, evaluation, export,
fine-tuning) asks ``load_checkpoint``.
"""
from __future__ import annotations

from ...errors import CheckpointError
from ...runs import BEST, find_checkpoint
from ..checkpoint import Checkpoint, build_from_state, read_checkpoint
from .package import is_package, load_package


def load_checkpoint(run_or_path, prefer: str = BEST, expect_model: str | None = None) -> Checkpoint:
    """Load a run's checkpoint (best, else last), or a package napari-unet exported, with its
    model built, weights in place and its label head (``checkpoint.head``)."""
    if is_package(run_or_path):
        checkpoint = load_package(run_or_path)
    else:
        path = find_checkpoint(run_or_path, prefer)
        state = read_checkpoint(path)
        model, config = build_from_state(state["model_hparams"],
                                         state.get("ema_state") or state["model_state"],
                                         state["config"], f"checkpoint {path}")
        checkpoint = Checkpoint(model=model, config=config, norm_stats=state["norm_stats"],
                                step=state["step"], best_dice=state["best_dice"],
                                data_info=state.get("data_info", {}), path=path, state=state)
    name = checkpoint.model.hparams["name"]
    if expect_model is not None and name != expect_model:
        raise CheckpointError(f"{checkpoint.path} holds a {name} model, not {expect_model}: "
                              f"choose a checkpoint trained with that model")
    return checkpoint
