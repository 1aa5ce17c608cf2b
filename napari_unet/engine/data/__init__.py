"""Training data: data sets and their layouts on disk, the input-layout rule, normalisation,
training windows, resolution changes and the built-in samples.

May import: numpy, torch, tifffile (through ``napari_unet.io``), ``napari_unet.choices``,
``errors``, ``io``, ``masks`` (the mask rule), ``layouts`` and ``engine.labels``. Nothing here imports
the training loop, prediction or export.
"""
