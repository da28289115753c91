"""Smaller embeddings from any embedder: PCA (``pca``) and a learned projection (``projection``).

Paper 001 cut its 4,096-d embeddings to 512-d with a linear layer and lost about 2% of quality
while k-NN got much faster. Both embedders here wrap a *base* embedder (any registry kind or a
loaded model) and map its unit vectors linearly to ``dim`` numbers, then L2-normalise:

``pca``         scikit-learn :class:`~sklearn.decomposition.PCA` fitted on the base vectors of
                the training images (no labels needed); ``whiten=True`` divides by the
                component standard deviations.
``projection``  a supervised linear map. ``method="linear"`` (default) trains a bias-free
                ``d -> dim`` layer, started from the PCA solution, under a cosine-softmax
                classifier over the label column (the layer is what is kept);
                ``method="lda"`` uses scikit-learn's
                :class:`~sklearn.discriminant_analysis.LinearDiscriminantAnalysis` (at most
                ``classes - 1`` dimensions).

The saved folder holds the base's config inside ours and, in ``weights.safetensors``, the base's
weights (prefixed ``base.``) with the projection (``projection.matrix`` ``[dim, d]``,
``projection.mean`` ``[d]``). ``fit_vectors`` is the fast path when the base vectors are already
known (e.g. from a project's embedding cache).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError, ModelMismatchError
from lookalike.models.base import Embedder, create, embedder_class, l2_normalise
from lookalike.models.cnn import NotTrainedError
from lookalike.models.learners import VectorLearner

PROJECTION_METHODS = ("linear", "lda")


class ReducedEmbedder(VectorLearner, Embedder):
    """A base embedder followed by ``(v - mean) @ matrix.T`` and L2 normalisation."""

    needs_fit = True

    def __init__(self, base: str | Embedder = "efficientnet-lite0", dim: int = 256,
                 base_config: dict[str, Any] | None = None, label_column: str = "article_type",
                 seed: int = 0) -> None:
        self.base = create(base, **(base_config or {})) if isinstance(base, str) else base
        if int(dim) != dim or dim < 1:
            raise LookalikeError(f"dim must be a positive whole number, got {dim!r}")
        if dim > self.base.dim:
            raise LookalikeError(f"dim {dim} is larger than the base embedder's {self.base.dim}")
        self.out_dim = int(dim)
        self.label_column = label_column
        self.seed = int(seed)
        self.batch_size = self.base.batch_size
        self.matrix: np.ndarray | None = None  # [dim, d]
        self.mean: np.ndarray | None = None    # [d]
        self.fit_info: dict[str, Any] = {}

    # ---- identity ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"{self.kind}{self.out_dim}-{self.base.name}"

    @property
    def dim(self) -> int:
        return self.out_dim

    def config(self) -> dict[str, Any]:
        return {"base": self.base.kind, "base_config": self.base.config(), "dim": self.out_dim,
                "label_column": self.label_column, "seed": self.seed}

    def _weights_fingerprint(self) -> dict[str, str]:
        digest = hashlib.sha256()
        if self.matrix is None or self.mean is None:
            digest.update(b"unfitted")
        else:
            digest.update(self.matrix.tobytes())
            digest.update(self.mean.tobytes())
        return {"projection": digest.hexdigest()[:16],
                **{f"base_{k}": v for k, v in self.base._weights_fingerprint().items()}}

    # ---- learning ---------------------------------------------------------------------------
    def fit(self, images: Iterable[Image.Image], labels: Sequence[Any] | None = None,
            **options: Any) -> "ReducedEmbedder":
        """Embed ``images`` with the base (streamed in batches) and fit on the vectors."""
        return self.fit_vectors(self.base.embed(images), labels, **options)

    def fit_vectors(self, vectors: np.ndarray, labels: Sequence[Any] | None = None,
                    **options: Any) -> "ReducedEmbedder":
        """Fit on the base embedder's unit vectors ``[n, base.dim]`` (and labels if needed)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.base.dim:
            raise ModelMismatchError(f"{self.name}: vectors of shape {vectors.shape}, the base "
                                     f"gives {self.base.dim}-d rows")
        if len(vectors) <= self.out_dim and self.kind == "pca":
            raise LookalikeError(f"{self.name}: {len(vectors)} vectors are too few for "
                                 f"{self.out_dim} components")
        matrix, mean = self._fit(vectors, labels, **options)
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        return self

    def _fit(self, vectors: np.ndarray, labels: Sequence[Any] | None,
             **options: Any) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # ---- inference --------------------------------------------------------------------------
    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Base unit vectors -> reduced unit vectors."""
        if self.matrix is None or self.mean is None:
            raise NotTrainedError(f"{self.name}: not fitted yet; call fit() or load a saved model")
        return l2_normalise((np.asarray(vectors, dtype=np.float32) - self.mean) @ self.matrix.T)

    def prepare(self, image: Image.Image) -> Any:
        return self.base.prepare(image)

    def embed_prepared(self, items: list[Any]) -> np.ndarray:
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.project(self.base.embed_prepared(items))

    def _embed_batch(self, images: list[Image.Image]) -> np.ndarray:
        return self.project(self.base._embed_checked(images))

    # ---- persistence ------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, np.ndarray]:
        tensors = {f"base.{k}": v for k, v in self.base.state_tensors().items()}
        if self.matrix is not None and self.mean is not None:
            tensors["projection.matrix"] = self.matrix
            tensors["projection.mean"] = self.mean
        return tensors

    def load_state_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        self.base.load_state_tensors({k[len("base."):]: v for k, v in tensors.items()
                                      if k.startswith("base.")})
        if "projection.matrix" in tensors:
            matrix = np.asarray(tensors["projection.matrix"], dtype=np.float32)
            mean = np.asarray(tensors["projection.mean"], dtype=np.float32)
            if matrix.shape != (self.out_dim, self.base.dim) or mean.shape != (self.base.dim,):
                raise ModelMismatchError(f"{self.name}: saved projection {matrix.shape} does not "
                                         f"fit {self.out_dim} x {self.base.dim}")
            self.matrix, self.mean = matrix, mean

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ReducedEmbedder":
        config = dict(config)
        base = embedder_class(config.pop("base")).from_config(config.pop("base_config", {}))
        return cls(base=base, **config)


class PCAEmbedder(ReducedEmbedder):
    """Principal components of the base vectors (scikit-learn PCA), method ``pca``."""

    kind = "pca"

    def __init__(self, base: str | Embedder = "efficientnet-lite0", dim: int = 256,
                 base_config: dict[str, Any] | None = None, whiten: bool = False,
                 label_column: str = "article_type", seed: int = 0) -> None:
        super().__init__(base, dim, base_config, label_column, seed)
        self.whiten = bool(whiten)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "whiten": self.whiten}

    def _fit(self, vectors: np.ndarray, labels: Sequence[Any] | None,
             **options: Any) -> tuple[np.ndarray, np.ndarray]:
        if options:
            raise LookalikeError(f"pca: unknown option(s) {sorted(options)}")
        from sklearn.decomposition import PCA

        pca = PCA(n_components=self.out_dim, whiten=self.whiten, random_state=self.seed,
                  svd_solver="auto").fit(vectors)
        matrix = pca.components_
        if self.whiten:
            matrix = matrix / np.sqrt(pca.explained_variance_)[:, None]
        self.fit_info = {"explained_variance_ratio": float(pca.explained_variance_ratio_.sum()),
                         "items": len(vectors)}
        return matrix, pca.mean_


class ProjectionEmbedder(ReducedEmbedder):
    """A linear map learned from the class labels, method ``projection``.

    ``method="linear"``: a bias-free ``d -> dim`` layer (initialised with the PCA components)
    trained with Adam under a cosine-softmax classifier (scale ``scale``), on a seeded 90/10
    split with early stopping (:func:`~lookalike.models.feature_training.train_on_vectors`).
    ``method="lda"``: scikit-learn LDA (eigen solver, automatic shrinkage).
    """

    kind = "projection"
    option_choices = {"method": PROJECTION_METHODS}

    @classmethod
    def training_options(cls) -> dict[str, Any]:
        """The keyword settings of the linear method's training (``method=lda`` takes none)."""
        import inspect

        parameters = inspect.signature(cls._fit_linear).parameters.values()
        return {p.name: p.default for p in parameters
                if p.default is not inspect.Parameter.empty and p.name != "progress"}

    def __init__(self, base: str | Embedder = "efficientnet-lite0", dim: int = 256,
                 base_config: dict[str, Any] | None = None, method: str = "linear",
                 scale: float = 16.0, label_column: str = "article_type", seed: int = 0) -> None:
        super().__init__(base, dim, base_config, label_column, seed)
        if method not in PROJECTION_METHODS:
            raise LookalikeError(f"projection method must be one of "
                                 f"{', '.join(PROJECTION_METHODS)}, got {method!r}")
        self.method = method
        self.scale = float(scale)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "method": self.method, "scale": self.scale}

    def _fit(self, vectors: np.ndarray, labels: Sequence[Any] | None,
             **options: Any) -> tuple[np.ndarray, np.ndarray]:
        if labels is None:
            raise LookalikeError(f"{self.name}: a learned projection needs labels (e.g. the "
                                 f"{self.label_column} of each image)")
        from lookalike.models.datasets import encode_labels

        codes, classes = encode_labels(list(labels))
        if len(codes) != len(vectors):
            raise LookalikeError(f"{self.name}: {len(codes)} labels for {len(vectors)} vectors")
        if self.method == "lda":
            return self._fit_lda(vectors, codes.numpy(), len(classes), **options)
        return self._fit_linear(vectors, codes, len(classes), **options)

    def _fit_lda(self, vectors: np.ndarray, codes: np.ndarray, n_classes: int,
                 **options: Any) -> tuple[np.ndarray, np.ndarray]:
        if options:
            raise LookalikeError(f"projection (lda): unknown option(s) {sorted(options)}")
        if self.out_dim > n_classes - 1:
            raise LookalikeError(f"{self.name}: LDA gives at most classes - 1 = {n_classes - 1} "
                                 f"dimensions; use dim <= {n_classes - 1} or method='linear'")
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        import warnings

        with warnings.catch_warnings():
            # classes with a single item are normal in a catalogue; sklearn warns per class
            warnings.filterwarnings("ignore", message="Only one sample available")
            lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto",
                                             n_components=self.out_dim).fit(vectors, codes)
        self.fit_info = {"items": len(vectors), "classes": n_classes}
        # The eigen solver's transform is x @ scalings; centring on the data mean first only
        # shifts every row by the same vector, and makes cosine similarity meaningful.
        return lda.scalings_[:, :self.out_dim].T, vectors.mean(axis=0)

    def _fit_linear(self, vectors: np.ndarray, codes: Any, n_classes: int,
                    epochs: int = 30, learning_rate: float = 2e-3, batch_size: int = 512,
                    patience: int = 4, validation_fraction: float = 0.1,
                    threads: int | None = 2, progress: Any = None) -> tuple[np.ndarray, np.ndarray]:
        import torch
        from sklearn.decomposition import PCA
        from torch import nn

        from lookalike.models.feature_training import train_on_vectors
        from lookalike.models.heads import CosineClassifier

        mean = vectors.mean(axis=0)
        start = PCA(n_components=min(self.out_dim, len(vectors) - 1), random_state=self.seed)
        components = start.fit(vectors).components_
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            layer = nn.Linear(self.base.dim, self.out_dim, bias=False)
            classifier = CosineClassifier(self.out_dim, n_classes, self.scale)
        with torch.no_grad():
            layer.weight[:len(components)] = torch.from_numpy(components)
        model = nn.Sequential(layer, classifier)
        centred = torch.from_numpy(vectors - mean)
        result = train_on_vectors(model, centred, codes, epochs=epochs, batch_size=batch_size,
                                  learning_rate=learning_rate, patience=patience,
                                  validation_fraction=validation_fraction, seed=self.seed,
                                  threads=threads)
        self.fit_info = {"items": len(vectors), "classes": n_classes,
                         "best_epoch": result.best_epoch, "val_accuracy": result.best_value,
                         "history": result.history}
        return layer.weight.detach().numpy().copy(), mean
