"""A descriptor for telling a copy of a photo from a similar product (``copy-descriptor``).

An embedder for "more like this" is built to call similar products similar; a copy detector must
call the *same photo* similar even after it was cropped, resized, brightened and re-saved at low
JPEG quality, all at once, and call two look-alike products apart. This embedder learns that:

* *Two views* of each photo through the default EfficientNet-Lite0: the photo as it is (224 px)
  and the photo box-filtered down to 30 x 40 px first (112 px). The low-pass view makes a resize
  or a JPEG re-save nearly a no-op; the full view keeps the detail that tells products apart.
* *A small head* (a linear map plus a one-hidden-layer residual, 2 x 1,280 -> ``dim``) over the
  two views, trained contrastively (:mod:`.copy_training`): each random copy of a catalogue photo
  must find its original among all the catalogue's photos. Look-alike products shot the same way
  are the hard negatives the softmax over the whole catalogue brings in.

The package ships a head trained on the products catalogue's train split
(``lookalike/data/copy-descriptor``, written by ``benchmarks/copy_descriptor_train.py``);
``create("copy-descriptor")`` loads it, and :meth:`CopyDescriptorEmbedder.fit` trains another on a
shop's own photos. Saved as safetensors + JSON like every embedder.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError, ModelMismatchError
from lookalike.models.base import Embedder, l2_normalise

#: The low-pass view's size before the backbone (the catalogue's photos are 60 x 80 px).
LOW_SIZE = (30, 40)
#: Backbone input sides of the full and the low-pass view.
VIEW_SIDES = (224, 112)
FEATURES = 2 * 1280
#: The head shipped with the package.
PACKAGED = Path(__file__).resolve().parent.parent / "data" / "copy-descriptor"
_HEAD_KEYS = ("linear.weight", "linear.bias", "hidden.weight", "hidden.bias", "out.weight",
              "out.bias")


def low_pass(image: Image.Image) -> Image.Image:
    """The photo box-filtered down to :data:`LOW_SIZE` (what the second view sees)."""
    return image.convert("RGB").resize(LOW_SIZE, Image.Resampling.BOX)


def _gelu(x: np.ndarray) -> np.ndarray:
    """The tanh GELU (what ``torch.nn.GELU(approximate="tanh")`` computes)."""
    return 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3)))


def head_forward(tensors: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    """The head on ``[n, FEATURES]`` view features (not yet normalised)."""
    x = np.asarray(features, dtype=np.float32)
    linear = x @ tensors["linear.weight"].T + tensors["linear.bias"]
    hidden = _gelu(x @ tensors["hidden.weight"].T + tensors["hidden.bias"])
    return linear + hidden @ tensors["out.weight"].T + tensors["out.bias"]


class CopyDescriptorEmbedder(Embedder):
    """Unit ``dim``-d rows on which a copy lies nearer its original than any look-alike does.

    ``weights="packaged"`` (the default) loads the head shipped with the package; ``None``
    starts untrained (call :meth:`fit`). ``precision`` is the backbone's (``None``: the
    default, int8 where this CPU passes its self-check)."""

    kind = "copy-descriptor"
    needs_fit = True
    needs_labels = False
    batch_size = 64

    def __init__(self, dim: int = 256, hidden: int = 512, weights: str | None = "packaged",
                 precision: str | None = None) -> None:
        if dim < 8 or hidden < 8:
            raise LookalikeError(f"copy-descriptor: dim and hidden must be >= 8, not {dim}, "
                                 f"{hidden}")
        self._dim, self.hidden, self.precision = int(dim), int(hidden), precision
        self._views: list[Embedder] | None = None
        self._lock = threading.Lock()
        self._head: dict[str, np.ndarray] | None = None
        if weights == "packaged":
            self._load_packaged()
        elif weights is not None:
            raise LookalikeError(f"copy-descriptor: weights is 'packaged' or None, not {weights!r}"
                                 " (load a trained one with lookalike.models.base.load)")

    def _load_packaged(self) -> None:
        from lookalike.models.weights import WEIGHTS_FILE, read_tensors

        path = PACKAGED / WEIGHTS_FILE
        if path.is_file():
            self.load_state_tensors(read_tensors(path))

    @property
    def dim(self) -> int:
        return self._dim

    def config(self) -> dict[str, Any]:
        return {"dim": self._dim, "hidden": self.hidden}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CopyDescriptorEmbedder":
        return cls(dim=config.get("dim", 256), hidden=config.get("hidden", 512), weights=None)

    def _weights_fingerprint(self) -> dict[str, str]:
        digest = hashlib.sha256()
        for key in _HEAD_KEYS:
            digest.update(np.ascontiguousarray(self._require_head()[key]).tobytes())
        return {"weights": digest.hexdigest()[:16],
                "views": "+".join(view.embedder_id for view in self.views())}

    @property
    def trained(self) -> bool:
        return self._head is not None

    def _require_head(self) -> dict[str, np.ndarray]:
        if self._head is None:
            raise LookalikeError("copy-descriptor: no trained head (the package ships none, "
                                 "or it was built with weights=None); call fit() first")
        return self._head

    # ---- the two views ----------------------------------------------------------------------
    def views(self) -> list[Embedder]:
        """The full-size and the low-pass EfficientNet-Lite0 (built on first use)."""
        with self._lock:  # prepare() runs in reader threads
            if self._views is None:
                from lookalike.models.base import create

                options = {} if self.precision is None else {"precision": self.precision}
                self._views = [create("efficientnet-lite0", image_size=side, **options)
                               for side in VIEW_SIDES]
            return self._views

    def prepare(self, image: Image.Image) -> tuple[Any, Any]:
        full, low = self.views()
        image = image.convert("RGB")
        return full.prepare(image), low.prepare(low_pass(image))

    def features(self, items: Sequence[tuple[Any, Any]]) -> np.ndarray:
        """``[n, FEATURES]``: both views' unit rows side by side, of :meth:`prepare`'d items."""
        full, low = self.views()
        return np.concatenate([full.embed_prepared([a for a, _ in items]),
                               low.embed_prepared([b for _, b in items])], axis=1)

    def image_features(self, images: Sequence[Image.Image], batch: int = 256,
                       progress: Callable[[int], None] | None = None) -> np.ndarray:
        """:meth:`features` of images, a batch at a time (``progress(n)`` after each)."""
        out = []
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            out.append(self.features([self.prepare(image) for image in chunk]))
            if progress is not None:
                progress(len(chunk))
        return np.concatenate(out) if out else np.zeros((0, FEATURES), dtype=np.float32)

    def embed_prepared(self, items: list[Any]) -> np.ndarray:
        return self.embed_features(self.features(items))

    def _embed_batch(self, images: list[Image.Image]) -> np.ndarray:
        return head_forward(self._require_head(),
                            self.features([self.prepare(image) for image in images]))

    def embed_features(self, features: np.ndarray) -> np.ndarray:
        """Unit rows from precomputed :meth:`features`."""
        return l2_normalise(head_forward(self._require_head(), features))

    # ---- learning ---------------------------------------------------------------------------
    @classmethod
    def training_options(cls) -> dict[str, Any]:
        from lookalike.models.copy_training import TrainingOptions

        return dict(vars(TrainingOptions()))

    def fit(self, images: Sequence[Image.Image], labels: Sequence[Any] | None = None,
            **options: Any) -> "CopyDescriptorEmbedder":
        """Train the head: random copies (1 to 4 edits at once) of ``images`` must find their
        originals among all of ``images``. ``labels`` are not used. Options: see
        :class:`~lookalike.models.copy_training.TrainingOptions`."""
        from lookalike.models.copy_training import TrainingOptions, train_head

        try:
            settings = TrainingOptions(**options)
        except TypeError as error:
            raise LookalikeError(f"copy-descriptor: {error} (see lookalike train --list)") \
                from None
        self._head = train_head(self, list(images), settings)
        return self

    # ---- persistence ------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, np.ndarray]:
        return dict(self._require_head())

    def load_state_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        missing = [key for key in _HEAD_KEYS if key not in tensors]
        if missing:
            raise ModelMismatchError(f"copy-descriptor: weights lack {', '.join(missing)}")
        shapes = {"linear.weight": (self._dim, FEATURES), "hidden.weight": (self.hidden, FEATURES),
                  "out.weight": (self._dim, self.hidden)}
        for key, shape in shapes.items():
            if tuple(tensors[key].shape) != shape:
                raise ModelMismatchError(f"copy-descriptor: {key} is {tuple(tensors[key].shape)}"
                                         f", expected {shape}")
        self._head = {key: np.asarray(tensors[key], dtype=np.float32) for key in _HEAD_KEYS}


__all__ = ["CopyDescriptorEmbedder", "LOW_SIZE", "low_pass", "head_forward", "PACKAGED"]
