"""Prediction: the sliding window (tiles, Gaussian blending, TTA, volumes bigger than RAM),
prediction of arrays, files and folders, and the CPU backends that run an exported graph
(ONNX Runtime, OpenVINO).

May import: torch, numpy, ``engine.checkpoint``, ``engine.data``, ``engine.labels``,
``engine.events``, ``engine.runtime``, ``engine.export`` (the ONNX graph and the model loader)
and the package's ``errors``, ``io``. Never ``engine.training``.
"""
