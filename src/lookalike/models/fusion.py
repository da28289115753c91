"""Feature fusion: several embedders concatenated, each block L2-normalised and weighted.

Paper 000 describes an image by ``x = [x_p; x_c; x_g]`` (PHOG, colour, GIST). ``fusion`` does
that for any registered embedders::

    create("phog+hsv-histogram")                          # equal weights
    create("phog+hsv-histogram+gist", weights=[1, 2, 0.5])
    create("phog+gist", part_options={"phog": {"levels": 3}})

Every part returns unit-length rows, so a weight is exactly the share of the cosine similarity a
part contributes: with weights ``w`` the fused cosine is ``sum(w_i^2 cos_i) / sum(w_i^2)``.
``fit(images, labels)`` fits any part that learns, then picks the weights by grid search on a
validation split carved from the images it is given (maximising class-match P@10).
The saved config holds every part's kind and config and the weights; part weights (if any) go
into one safetensors file with a ``<part number>.`` prefix.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError, ModelMismatchError
from lookalike.models.base import Embedder, embedder_class, l2_normalise

#: Relative weights the grid search tries for every part after the first (the first stays 1).
DEFAULT_WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)


class FusionEmbedder(Embedder):
    """Concatenation of embedders with per-part weights (paper 000's fused feature vector)."""

    kind = "fusion"

    def __init__(self, parts: Sequence[str | Embedder | Mapping[str, Any]],
                 weights: Sequence[float] | None = None,
                 part_options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        if len(parts) < 2:
            raise LookalikeError("fusion needs at least two parts, e.g. 'phog+hsv-histogram'")
        options = dict(part_options or {})
        self.parts: list[Embedder] = []
        for part in parts:
            if isinstance(part, Embedder):
                self.parts.append(part)
            elif isinstance(part, Mapping):  # a saved config: {"kind": ..., "config": {...}}
                self.parts.append(embedder_class(part["kind"]).from_config(part.get("config", {})))
            else:
                name = str(part).strip()
                if name == "fusion":
                    raise LookalikeError("a fusion cannot contain 'fusion'; list its parts")
                self.parts.append(embedder_class(name)(**dict(options.pop(name, {}))))
        if options:
            raise LookalikeError(f"part_options for {', '.join(options)}, which are not parts")
        self.weights = self._checked_weights(weights)
        self.needs_fit = any(part.needs_fit for part in self.parts)  # type: ignore[misc]

    def _checked_weights(self, weights: Sequence[float] | None) -> list[float]:
        if weights is None:
            return [1.0] * len(self.parts)
        values = [float(w) for w in weights]
        if len(values) != len(self.parts):
            raise LookalikeError(f"fusion of {len(self.parts)} parts got {len(values)} weights")
        if any(not np.isfinite(w) or w < 0 for w in values) or not any(values):
            raise LookalikeError(f"fusion weights must be >= 0 and not all 0, got {values}")
        return values

    # ---- identity ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return "+".join(part.name for part in self.parts)

    @property
    def dim(self) -> int:
        return sum(part.dim for part in self.parts)

    @property
    def batch_size(self) -> int:  # type: ignore[override]
        return min(part.batch_size for part in self.parts)

    def config(self) -> dict[str, Any]:
        return {"parts": [{"kind": part.kind, "config": part.config()} for part in self.parts],
                "weights": list(self.weights)}

    def _weights_fingerprint(self) -> dict[str, str]:
        prints = {}
        for n, part in enumerate(self.parts):
            for key, value in part._weights_fingerprint().items():
                prints[f"{n}.{key}"] = value
        return prints

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "FusionEmbedder":
        return cls(parts=config["parts"], weights=config.get("weights"))

    # ---- persistence ------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, np.ndarray]:
        tensors = {}
        for n, part in enumerate(self.parts):
            for key, value in part.state_tensors().items():
                tensors[f"{n}.{key}"] = value
        return tensors

    def load_state_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        grouped: dict[int, dict[str, np.ndarray]] = {}
        for key, value in tensors.items():
            number, sep, rest = key.partition(".")
            if not sep or not number.isdigit() or int(number) >= len(self.parts):
                raise ModelMismatchError(f"fusion: unexpected tensor {key!r} in saved weights")
            grouped.setdefault(int(number), {})[rest] = value
        for n, part in enumerate(self.parts):
            part.load_state_tensors(grouped.get(n, {}))

    # ---- embedding --------------------------------------------------------------------------
    def part_blocks(self) -> list[tuple[int, int]]:
        """``(start, stop)`` columns of each part inside a fused vector."""
        bounds = np.cumsum([0] + [part.dim for part in self.parts])
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def combine(self, part_vectors: Sequence[np.ndarray]) -> np.ndarray:
        """Fuse per-part **unit-length** rows (what every embedder returns) with the weights;
        not yet normalised as a whole.

        Shared by ``embed`` and the windowed features of shop-the-look, so both give the same
        vectors.
        """
        out = np.empty((len(part_vectors[0]), self.dim), dtype=np.float32)
        for (start, stop), weight, vectors in zip(self.part_blocks(), self.weights, part_vectors):
            np.multiply(vectors, weight, out=out[:, start:stop])
        return out

    def _embed_batch(self, images: list[Image.Image]) -> np.ndarray:
        return self.combine([part.embed(images, batch_size=len(images)) for part in self.parts])

    # ---- learning ---------------------------------------------------------------------------
    def fit(self, images: Sequence[Image.Image], labels: Sequence[Any] | None = None,
            **options: Any) -> "FusionEmbedder":
        """Fit the parts that learn, then grid-search the weights on a validation split.

        Options: ``validation_fraction`` (0.2), ``weight_grid`` (:data:`DEFAULT_WEIGHT_GRID`),
        ``max_validation`` (2,000 queries), ``seed`` (0). Without labels only the parts are fitted
        and the weights stay as they are. The validation split is carved from ``images`` -- pass
        the training split, never the test split.
        """
        fraction = float(options.pop("validation_fraction", 0.2))
        grid = tuple(float(w) for w in options.pop("weight_grid", DEFAULT_WEIGHT_GRID))
        max_validation = int(options.pop("max_validation", 2000))
        seed = int(options.pop("seed", 0))
        for part in self.parts:
            if part.needs_fit:
                part.fit(images, labels, **options)
        if labels is None:
            return self
        labels = np.asarray([str(label) for label in labels])
        if len(labels) != len(images):
            raise LookalikeError(f"fusion.fit: {len(images)} images but {len(labels)} labels")
        if not 0 < fraction < 1:
            raise LookalikeError(f"validation_fraction must be in (0, 1), got {fraction}")
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(images))
        n_val = min(max_validation, max(1, int(round(fraction * len(images)))))
        val, gallery = order[:n_val], order[n_val:]
        if len(gallery) < 10:
            raise LookalikeError("fusion.fit: too few images to carve a validation split")
        blocks = [part.embed(images) for part in self.parts]
        self.weights, self.fit_report = search_weights(
            blocks, labels, val, gallery, grid=grid)
        return self


def search_weights(blocks: Sequence[np.ndarray], labels: np.ndarray, queries: np.ndarray,
                   gallery: np.ndarray, grid: Sequence[float] = DEFAULT_WEIGHT_GRID,
                   k: int = 10) -> tuple[list[float], list[dict[str, Any]]]:
    """The weights (first part fixed at 1) maximising class-match P@``k`` of ``queries``
    against ``gallery`` rows; returns them and every tried point with its P@k."""
    import faiss

    from lookalike.evaluate.metrics import mean, precision_at_k

    unit = [l2_normalise(b) for b in blocks]
    tried: list[dict[str, Any]] = []
    best: tuple[float, list[float]] = (-1.0, [1.0] * len(unit))
    for rest in itertools.product(grid, repeat=len(unit) - 1):
        weights = [1.0, *rest]
        fused = l2_normalise(np.concatenate([w * b for w, b in zip(weights, unit)], axis=1))
        _, rows = faiss.knn(fused[queries], fused[gallery], min(k, len(gallery)),
                            metric=faiss.METRIC_INNER_PRODUCT)
        relevant = (labels[gallery][np.maximum(rows, 0)] == labels[queries][:, None]) & (rows >= 0)
        score = mean(precision_at_k(relevant, k))
        tried.append({"weights": weights, f"P@{k}": score})
        if score > best[0] + 1e-12:
            best = (score, weights)
    return best[1], tried
