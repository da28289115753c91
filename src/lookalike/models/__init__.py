"""Image embedders and the embedding cache.

``lookalike.models.base`` holds the :class:`~lookalike.models.base.Embedder` interface and the
registry (``create``, ``load``, ``register``, ``available``); the built-in embedders are
``pixels`` and ``hsv-histogram`` (:mod:`~lookalike.models.baselines`) and
``efficientnet-lite0`` (:mod:`~lookalike.models.efficientnet`); :mod:`~lookalike.models.cache`
stores vectors by content hash and runs the reader -> embedder -> writer pipeline.

Nothing heavy is imported here: torch and ONNX Runtime load only when a model that needs them
is first used. See docs/embedders.md.
"""

from lookalike.models.base import Embedder, available, create, load, register

__all__ = ["Embedder", "available", "create", "load", "register"]
