"""Training: the loop (a generator of events), what a run is made of (``setup``), one step and
the loss reader (``steps``), the input pipeline, augmentation, losses, DDP, validation; the
steps of a run fitted to minutes (``calibration`` times the first ones, ``pace`` re-fits them
while the run trains).

May import: torch, numpy, ``engine.config``, ``engine.checkpoint``, ``engine.data``,
``engine.labels``, ``engine.events``, ``engine.runtime``, ``engine.metrics``,
``engine.prediction`` (validation runs the sliding window), ``engine.export.loader``
(fine-tuning from a run) and the package's ``errors``, ``io``, ``runs``, ``models``.
"""
