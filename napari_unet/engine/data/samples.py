"""The built-in synthetic data sets as engine Datasets (for --sample and the demo)."""
from __future__ import annotations

from ...errors import ConfigError
from ...sample_data import SAMPLES
from .dataset import Dataset
from .layout import as_channel_first


def sample_dataset(name: str, **options) -> Dataset:
    """One of the built-in synthetic data sets (dagm, em, blobs3d) as a Dataset."""
    if name not in SAMPLES:
        raise ConfigError(f"unknown sample {name!r}; choose one of {', '.join(SAMPLES)}")
    images, masks = SAMPLES[name](**options)
    spatial_dims = masks.ndim - 1
    return Dataset(images=[as_channel_first(image, spatial_dims) for image in images],
                   masks=[mask.astype("uint8") for mask in masks],
                   names=[f"{name}{i}" for i in range(len(images))], spatial_dims=spatial_dims)
