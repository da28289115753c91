"""The embedder interface every model honours, and the registry that names them.

An embedder turns images into L2-normalised float32 rows. Models that learn implement ``fit``;
all of them save to a folder as ``config.json`` (+ ``weights.safetensors`` when they have weights)
and load back from it without running any code from the folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError, ModelMismatchError, UnknownNameError
from lookalike.models.weights import CONFIG_FILE, WEIGHTS_FILE
from lookalike.registry import Registry


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as contiguous float32."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    return vectors / norms


def embedder_id_of(kind: str, name: str, config: dict[str, Any],
                   fingerprint: dict[str, str]) -> str:
    """``<name>-<12 hex>``: a hash of the kind, the settings and the weights' fingerprint."""
    blob = json.dumps({"kind": kind, **config, **fingerprint}, sort_keys=True, default=str)
    return f"{_slug(name)}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


class Embedder(ABC):
    """Images in, L2-normalised float32 vectors out.

    Subclasses set ``kind`` (the registry name) and implement ``config``, ``dim`` and
    ``_embed_batch``. ``embed`` handles batching and normalisation, so every embedder returns the
    same kind of array.
    """

    kind: ClassVar[str] = ""
    #: Whether ``fit`` must be called before ``embed``.
    needs_fit: ClassVar[bool] = False
    #: A sensible batch size for ``embed``; big models want smaller ones.
    batch_size: int = 64
    #: Allowed values of the settings (constructor or training) that take one of a few names;
    #: ``lookalike train --list`` shows them.
    option_choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: Constructor arguments that training fills in and saves (not settings a user picks).
    learned_config: ClassVar[tuple[str, ...]] = ("classes", "mean", "std")

    # ---- identity -------------------------------------------------------------------------
    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of each embedding row."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able settings that, with the weights, rebuild this embedder exactly."""

    @property
    def name(self) -> str:
        """Human name, e.g. ``efficientnet-lite0``."""
        return self.kind

    @property
    def embedder_id(self) -> str:
        """A stable id of this embedder *and* its settings/weights; caches and indexes key on it.

        Two embedders with the same id must produce the same vectors for the same image.
        """
        return embedder_id_of(self.kind, self.name, self.config(), self._weights_fingerprint())

    def _weights_fingerprint(self) -> dict[str, str]:
        """Subclasses with learned weights return e.g. ``{"weights": sha}`` here."""
        return {}

    # ---- learning ---------------------------------------------------------------------------
    def fit(self, images: Sequence[Image.Image], labels: Sequence[Any] | None = None,
            **options: Any) -> "Embedder":
        """Learn from a catalogue's images (and labels where the method needs them).

        Embedders that do not learn return ``self`` unchanged.
        """
        return self

    @classmethod
    def training_options(cls) -> dict[str, Any]:
        """Settings ``fit`` takes besides the constructor's, with this method's defaults
        (none for embedders that do not learn)."""
        return {}

    # ---- inference --------------------------------------------------------------------------
    def embed(self, images: Iterable[Image.Image], batch_size: int | None = None,
              progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed RGB images to a ``[n, dim]`` float32 array of unit-length rows.

        ``progress`` is called with the number of images finished after every batch.
        """
        size = batch_size or self.batch_size
        out: list[np.ndarray] = []
        batch: list[Image.Image] = []
        for image in images:
            batch.append(image)
            if len(batch) == size:
                out.append(self._embed_checked(batch))
                if progress:
                    progress(len(batch))
                batch = []
        if batch:
            out.append(self._embed_checked(batch))
            if progress:
                progress(len(batch))
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out, axis=0)

    def embed_one(self, image: Image.Image) -> np.ndarray:
        """Embed a single image to a ``[dim]`` vector."""
        return self.embed([image])[0]

    # Pipelines (lookalike.models.cache) split embedding in two so the per-image work runs in
    # reader threads while the model runs: ``prepare`` one image (thread-safe, e.g. resize to
    # the input array), then ``embed_prepared`` a batch of prepared items. The defaults keep
    # PIL images as they are, so embedders that only implement ``_embed_batch`` work unchanged.
    def prepare(self, image: Image.Image) -> Any:
        """Per-image preparation that may run in a worker thread; default: the image itself."""
        return image

    def embed_prepared(self, items: list[Any]) -> np.ndarray:
        """Unit-length ``[n, dim]`` rows of items returned by :meth:`prepare`."""
        return self._embed_checked(items)

    def _embed_checked(self, batch: list[Image.Image]) -> np.ndarray:
        vectors = np.asarray(self._embed_batch(batch))
        if vectors.shape != (len(batch), self.dim):
            raise ModelMismatchError(
                f"{self.name}: produced shape {vectors.shape}, expected ({len(batch)}, {self.dim})")
        return l2_normalise(vectors)

    @abstractmethod
    def _embed_batch(self, images: list[Image.Image]) -> np.ndarray:
        """Raw (not yet normalised) features of one batch of RGB images."""

    # ---- persistence ------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` (+ ``weights.safetensors``) into ``folder``; returns the folder."""
        from lookalike.storage import atomic_write_text

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = self.state_tensors()
        if tensors:
            from lookalike.models.weights import write_tensors

            write_tensors(folder / WEIGHTS_FILE, tensors)
        meta = {"kind": self.kind, "dim": self.dim, "config": self.config(),
                "embedder_id": self.embedder_id}
        atomic_write_text(folder / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True))
        return folder

    def state_tensors(self) -> dict[str, np.ndarray]:
        """Learned arrays to store in safetensors; none for embedders without weights."""
        return {}

    def load_state_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        """Restore what ``state_tensors`` returned."""
        if tensors:
            raise ModelMismatchError(f"{self.name}: has no weights but the folder holds some")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Embedder":
        """Build an (unfitted) embedder from its ``config()``; subclasses may override."""
        return cls(**config)


# ---- the registry ---------------------------------------------------------------------------
# Built-in embedders are named here as "module:Class" and imported on first use, so importing
# lookalike never pulls in torch. Plugins add themselves with ``@register``.
_BUILTIN: dict[str, str] = {
    "pixels": "lookalike.models.baselines:PixelsEmbedder",
    "hsv-histogram": "lookalike.models.baselines:HSVHistogramEmbedder",
    "efficientnet-lite0": "lookalike.models.efficientnet:EfficientNetLite0Embedder",
    "phog": "lookalike.models.handcrafted:PHOGEmbedder",
    "gist": "lookalike.models.handcrafted:GISTEmbedder",
    "fusion": "lookalike.models.fusion:FusionEmbedder",
    "cnn": "lookalike.models.cnn:CNNEmbedder",
    "cnn-hash": "lookalike.models.hashing:CNNHashEmbedder",
    "lsh": "lookalike.models.hashing:LSHEmbedder",
    "finetune": "lookalike.models.finetune:FinetuneEmbedder",
    "pca": "lookalike.models.reduction:PCAEmbedder",
    "projection": "lookalike.models.reduction:ProjectionEmbedder",
    "autoencoder": "lookalike.models.autoencoder:AutoencoderEmbedder",
    "conv-autoencoder": "lookalike.models.autoencoder:ConvAutoencoderEmbedder",
    "infogan": "lookalike.models.infogan:InfoGANEmbedder",
    "copy-descriptor": "lookalike.models.copy_descriptor:CopyDescriptorEmbedder",
}
#: The plugin registry: embedder kinds (built-ins load lazily from ``_BUILTIN``; plugins add
#: themselves with :func:`register`). Process-wide on purpose, like an entry-point table.
_REGISTRY: Registry[type[Embedder]] = Registry("embedder", _BUILTIN)


def register(kind: str) -> Callable[[type[Embedder]], type[Embedder]]:
    """Class decorator: make an embedder available by name to every caller (CLI, API, service)."""
    return _REGISTRY.register(kind)


def available() -> list[str]:
    """Names of all registered embedders."""
    return _REGISTRY.available()


def embedder_class(name: str) -> type[Embedder]:
    """The class registered under ``name`` (importing its module on first use)."""
    return _REGISTRY.get(name)


def create(name: str, **options: Any) -> Embedder:
    """Build an embedder by registry name, e.g. ``create("efficientnet-lite0", image_size=112)``.

    Names joined with ``+`` build a fusion of those embedders where the fusion model is available.
    """
    if "+" in name:
        return embedder_class("fusion")(parts=name.split("+"), **options)
    return embedder_class(name)(**options)


def load(folder: str | Path, **overrides: Any) -> Embedder:
    """Load an embedder saved with ``save``. Reads JSON and safetensors only; runs no code.

    ``overrides`` replace entries of the saved config, for inference-time settings such as the
    ``cnn``'s ``test_time_flip``; one that changes the network's shape fails as a mismatch when
    the saved weights are loaded.
    """
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise UnknownNameError(f"{folder}: no {CONFIG_FILE}; not a saved lookalike model")
    meta = json.loads(config_path.read_text())
    kind = meta.get("kind")
    if kind not in available():
        raise UnknownNameError(f"{config_path}: unknown embedder kind {kind!r}")
    try:
        embedder = embedder_class(kind).from_config({**meta.get("config", {}), **overrides})
    except TypeError as error:
        raise LookalikeError(f"{folder}: {kind} does not take {sorted(overrides)} "
                             f"({error})") from None
    weights = folder / WEIGHTS_FILE
    if weights.is_file():
        from lookalike.models.weights import read_tensors

        embedder.load_state_tensors(read_tensors(weights))
    if embedder.dim != meta.get("dim"):
        raise ModelMismatchError(f"{config_path}: dim {embedder.dim} != saved {meta.get('dim')}")
    return embedder


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "embedder"
