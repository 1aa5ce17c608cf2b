"""napari-unet: UNet, TinyUNet and 3D-UNet segmentation for napari and the command line.

The import package is ``napari_unet``; the distribution is ``napari-unet-torch`` (PyPI's
``napari-unet`` is an unrelated plugin). Importing this package imports neither torch, Qt
nor napari: the engine lives in :mod:`napari_unet.engine`, the networks in
:mod:`napari_unet.models`.
"""
from napari_unet.errors import NapariUnetError

__version__ = "0.1.0"

__all__ = ["NapariUnetError", "__version__"]
