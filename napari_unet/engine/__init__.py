"""The engine's public API: the one seam that the CLI, the widgets and DDP use.

    >>> from napari_unet.engine import TrainConfig, train, predict, evaluate, load_checkpoint

Imports torch and numpy, never Qt or napari. Names are loaded on first use (PEP 562), so
that a face that needs only the events or the config (the Train widget, which runs training
in a child process) does not pay for importing torch.
"""
from importlib import import_module

_EXPORTS = {
    "Checkpoint": "checkpoint",
    "format_table": "benchmark", "run_benchmark": "benchmark",
    "cpu_has_fast_bf16": "runtime", "resolve_amp": "runtime", "resolve_device": "runtime",
    "PRESETS": "config", "TrainConfig": "config", "preset_config": "config",
    "preset_names": "config",
    "Dataset": "data.dataset", "load_dataset": "data.dataset",
    "sample_dataset": "data.samples",
    "CheckpointSaved": "events", "Failed": "events", "Finished": "events", "Message": "events",
    "Progress": "events", "Started": "events", "Planned": "events", "TilesDone": "events", "Validation": "events",
    "from_json": "events", "to_json": "events", "FileDone": "events",
    "evaluate": "evaluation",
    "export_model": "export.formats", "load_checkpoint": "export.loader",
    "LabelHead": "labels",
    "DEFAULT_MINUTES": "plan", "Plan": "plan", "plan_for_data": "plan",
    "plan_lines": "plan", "start_name": "start",
    "fit_to_minutes": "training.calibration", "check_budget": "training.calibration",
    "time_limit": "training.pace",
    "predict_files": "prediction.files", "Ensemble": "prediction.ensemble",
    "load_models": "prediction.ensemble", "check_diameter": "prediction.scale",
    "PredictionDone": "prediction.predict", "predict_volume": "prediction.workers", "predict": "prediction.predict",
    "predict_array": "prediction.predict", "output_shapes": "prediction.predict", "predict_file": "prediction.predict",
    "train": "training.loop",
    "LiveControl": "training.live", "LiveView": "training.live", "train_live": "training.live",
    "view_image": "training.live",
    "MasksUpdated": "events", "ViewPredicted": "events",
    # what the CLI needs to launch torchrun workers
    "TIMEOUT_VARIABLE": "training.distributed", "check_process_count": "training.distributed",
    "collective_timeout": "training.distributed", "threads_per_process": "training.distributed",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'napari_unet.engine' has no attribute {name!r}")
    value = getattr(import_module(f"napari_unet.engine.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
