"""Models that leave the app, and come back: ONNX and TorchScript graphs (``onnx``), bioimage.io
packages (``bioimageio``, written with ``bioimageio.spec``; ``package`` reads them back without
it), one loader for run folders, checkpoints and packages (``loader``), and ``formats``, the
faces' entry point.

May import: torch, numpy, ``engine.checkpoint``, ``engine.config``, ``engine.data``,
``engine.labels`` and the package's ``errors``, ``io``, ``runs``, ``models``. Never
``engine.training`` or ``engine.prediction`` (prediction imports the ONNX export, not the reverse).
"""
