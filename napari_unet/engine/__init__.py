"""The engine's public API: the one seam that the CLI, the widgets and DDP use.

    from napari_unet.engine import TrainConfig, train, predict, evaluate, load_checkpoint

Imports torch and numpy, never Qt or napari.
"""
from napari_unet.engine.checkpoint import Checkpoint, load_checkpoint
from napari_unet.engine.config import PRESETS, TrainConfig, preset_config, preset_names
from napari_unet.engine.data import Dataset, load_dataset
from napari_unet.engine.events import (CheckpointSaved, Failed, Finished, Message, Progress,
                                       Started, TilesDone, Validation)
from napari_unet.engine.predict import (PredictionDone, evaluate, labels_from_probabilities,
                                        predict, predict_array, predict_file)
from napari_unet.engine.trainer import train


def sample_dataset(name: str, **options) -> Dataset:
    """One of the built-in synthetic data sets (dagm, em, blobs3d) as a Dataset."""
    from napari_unet.engine.data import as_channel_first
    from napari_unet.errors import ConfigError
    from napari_unet.sample_data import SAMPLES

    if name not in SAMPLES:
        raise ConfigError(f"unknown sample {name!r}; choose one of {', '.join(SAMPLES)}")
    images, masks = SAMPLES[name](**options)
    spatial_dims = masks.ndim - 1
    return Dataset(images=[as_channel_first(image, spatial_dims) for image in images],
                   masks=[mask.astype("uint8") for mask in masks],
                   names=[f"{name}{i}" for i in range(len(images))], spatial_dims=spatial_dims)


__all__ = [
    "PRESETS", "Checkpoint", "CheckpointSaved", "Dataset", "Failed", "Finished", "Message",
    "PredictionDone", "Progress", "Started", "TilesDone", "TrainConfig", "Validation",
    "evaluate", "labels_from_probabilities", "load_checkpoint", "load_dataset", "predict",
    "predict_array", "predict_file", "preset_config", "preset_names", "sample_dataset", "train",
]
