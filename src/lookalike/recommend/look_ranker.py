"""The look ranker: which of a scene's proposals is the ``like`` product, learned on generated
**train** scenes.

``look(like=...)`` used to rank the segmenter's boxes by a hand-set sum, cosine under the look
head + 0.5 x category vote + 0.5 x objectness. The ranker reads those three and six more
cues (:data:`FEATURES`) -- the plain cosine, the box's area and aspect, how much product lies
in a ring around the box (a box too small: its product goes on outside it) and in its middle
(a box too loose: its middle is product, its edges are not), and whether it touches the
photo's edge -- and gives one logit per box: a logistic regression over standardised cues,
fitted on the proposals of generated train scenes (train backgrounds, train products), each
labelled by whether it covers the target (IoU >= 0.5). To that logit it adds ``kind_weight`` x
the log probability that the box shows the like product's category, from a linear classifier
over the embedder's vectors (:class:`KindClassifier`) trained on train-scene crops and train
catalogue photos: the category vote asks the box's catalogue neighbours, which a small or
unbalanced catalogue makes noisy; the classifier has seen every category of the train split.
``scripts/train_look_ranker.py`` fits the packaged one. Saved as ``config.json`` +
``weights.safetensors`` (the scaler, the coefficients and the classifier), never pickled; it is
only used with the embedder and the look head it was fitted with (:func:`packaged_look_ranker`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.caches import ProjectCaches
from lookalike.errors import LookalikeError
from lookalike.models.weights import CONFIG_FILE, WEIGHTS_FILE

KIND = "look-ranker"
PACKAGED = Path(__file__).resolve().parent.parent / "data" / KIND
#: The cues of one proposal, in the order of a feature row.
FEATURES = ("head", "cosine", "vote", "objectness", "log_area", "log_aspect", "ring", "core",
            "at_edge")
#: The ring is the box grown by this factor about its centre, less the box; the middle is the
#: box shrunk by :data:`CORE`.
RING, CORE = 1.25, 0.75
#: A proposal is on target when it overlaps the target by at least this IoU (the benchmark's
#: hit; chosen on validation over a soft label that preferred tighter boxes and hit less often).
ON_TARGET_IOU = 0.5
#: The kind classifier reads unit vectors scaled by this (a softmax temperature of 0.1).
KIND_SCALE = 10.0


class LookRankerError(LookalikeError):
    """A look ranker that cannot be loaded or fitted."""


def _scaled(boxes: np.ndarray, factor: float, width: int, height: int) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    hw, hh = (b[:, 2] - b[:, 0]) / 2 * factor, (b[:, 3] - b[:, 1]) / 2 * factor
    out = np.stack([cx - hw, cy - hh, cx + hw, cy + hh], 1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1.0)


def region_features(boxes: np.ndarray, objectness: Any, head: np.ndarray, cosine: np.ndarray,
                    vote: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The :data:`FEATURES` rows ``[n, 9]`` of ``boxes`` ``[n, 4]`` (pixels of a photo of
    ``size`` = (width, height)) given the segmenter's ``objectness`` map
    (:class:`~lookalike.recommend.segmenter.ObjectnessMap`) and each box's cosine to the like
    product under the look head (``head``), without it (``cosine``) and its category vote."""
    width, height = size
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    inside, grown, shrunk = boxes, _scaled(boxes, RING, width, height), \
        _scaled(boxes, CORE, width, height)
    mass_in = objectness.of(inside) * _area(inside)
    ring = (objectness.of(grown) * _area(grown) - mass_in) / \
        np.maximum(_area(grown) - _area(inside), 1.0)
    box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    at_edge = (boxes[:, 0] <= 1) | (boxes[:, 1] <= 1) | (boxes[:, 2] >= width - 1) | \
        (boxes[:, 3] >= height - 1)
    return np.stack([np.asarray(head, np.float64), np.asarray(cosine, np.float64),
                     np.asarray(vote, np.float64), objectness.of(inside),
                     np.log(_area(inside) / (width * height)),
                     np.log(np.maximum(box_w, 1.0) / np.maximum(box_h, 1.0)), ring,
                     objectness.of(shrunk), at_edge.astype(np.float64)], axis=1)


class KindClassifier:
    """Which catalogue category a box shows: a linear softmax over the embedder's vectors,
    :meth:`log_prob` of one category per box."""

    def __init__(self, categories: Sequence[str], weight: np.ndarray, bias: np.ndarray) -> None:
        self.categories = [str(c) for c in categories]
        self.weight, self.bias = np.asarray(weight, np.float32), np.asarray(bias, np.float32)
        if self.weight.shape[0] != len(self.categories) or self.bias.shape != (
                len(self.categories),):
            raise LookRankerError(f"kind classifier of {len(self.categories)} categories has "
                                  f"weights {self.weight.shape} and bias {self.bias.shape}")
        self.row = {c: k for k, c in enumerate(self.categories)}

    def log_prob(self, vectors: np.ndarray, category: str) -> np.ndarray | None:
        """``log P(category | box)`` ``[n]`` of each box's vector; None for a category the
        classifier never saw."""
        if category not in self.row:
            return None
        logits = (np.asarray(vectors, np.float32) * KIND_SCALE) @ self.weight.T + self.bias
        top = logits.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        return (logits[:, self.row[category]] - log_norm).astype(np.float64)

    @classmethod
    def fit(cls, vectors: np.ndarray, categories: Sequence[str], epochs: int = 8,
            seed: int = 0) -> "KindClassifier":
        """Cross-entropy on unit ``vectors`` and their ``categories`` (PyTorch, Adam 1e-3,
        batches of 512, one thread's worth of work: seconds for 80,000 rows)."""
        import torch

        names = sorted(set(map(str, categories)))
        row = {c: k for k, c in enumerate(names)}
        x = torch.from_numpy(np.asarray(vectors, np.float32) * KIND_SCALE)
        y = torch.tensor([row[str(c)] for c in categories])
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layer = torch.nn.Linear(x.shape[1], len(names))
        optimiser = torch.optim.Adam(layer.parameters(), lr=1e-3, weight_decay=1e-5)
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), 512):
                rows = order[start:start + 512]
                loss = torch.nn.functional.cross_entropy(layer(x[rows]), y[rows])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        return cls(names, layer.weight.detach().numpy(), layer.bias.detach().numpy())


class LookRanker:
    """``score(features, kind)``: one logit per proposal, higher = more likely the ``like``
    product: the logistic regression over :data:`FEATURES`, plus ``kind_weight`` x the log
    probability that the box shows the like product's category (:class:`KindClassifier`)."""

    def __init__(self, embedder: str, look_head: str, mean: np.ndarray, scale: np.ndarray,
                 coef: np.ndarray, intercept: float, kinds: KindClassifier | None = None,
                 kind_weight: float = 0.0) -> None:
        self.config: dict[str, Any] = {"kind": KIND, "embedder": embedder,
                                       "look_head": look_head, "features": list(FEATURES)}
        self.mean, self.scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        self.coef, self.intercept = np.asarray(coef, np.float64).ravel(), float(intercept)
        self.kinds, self.kind_weight = kinds, float(kind_weight)
        self.training: dict[str, Any] | None = None

    def score(self, features: np.ndarray, kind: np.ndarray | None = None) -> np.ndarray:
        """Logits ``[n]`` of feature rows ``[n, 9]`` (:func:`region_features`) and, when
        given, each box's ``log P(like's category)`` (:meth:`KindClassifier.log_prob`)."""
        rows = np.asarray(features, np.float64).reshape(-1, len(FEATURES))
        logits = ((rows - self.mean) / self.scale) @ self.coef + self.intercept
        return logits if kind is None else logits + self.kind_weight * np.asarray(kind)

    @classmethod
    def fit(cls, features: np.ndarray, overlaps: np.ndarray, embedder: str, look_head: str,
            C: float = 1.0) -> "LookRanker":
        """A logistic regression (scikit-learn) on standardised ``features`` of whether each
        proposal is on target: its IoU with the target (``overlaps``) is at least
        :data:`ON_TARGET_IOU`."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        labels = np.asarray(overlaps, np.float64) >= ON_TARGET_IOU
        if labels.all() or not labels.any():
            raise LookRankerError("a look ranker needs proposals both on and off the target")
        scaler = StandardScaler().fit(features)
        model = LogisticRegression(C=C, max_iter=5000).fit(scaler.transform(features), labels)
        ranker = cls(embedder, look_head, scaler.mean_, scaler.scale_, model.coef_[0],
                     float(model.intercept_[0]))
        ranker.training = {"proposals": int(len(labels)), "on_target": int(labels.sum()),
                           "on_target_iou": ON_TARGET_IOU, "C": C,
                           "coefficients": dict(zip(FEATURES, np.round(
                               model.coef_[0], 4).tolist()))}
        return ranker

    def save(self, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """``config.json`` + ``weights.safetensors`` into ``folder`` (each written atomically)."""
        import json

        from lookalike.models.weights import write_tensors
        from lookalike.storage import atomic_write_text

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"mean": self.mean, "scale": self.scale, "coef": self.coef,
                   "intercept": np.array([self.intercept])}
        config = {**self.config, "kind_weight": self.kind_weight, "categories": None}
        if self.kinds is not None:
            tensors.update({"kinds_weight": self.kinds.weight, "kinds_bias": self.kinds.bias})
            config["categories"] = self.kinds.categories
        write_tensors(folder / WEIGHTS_FILE, tensors)
        atomic_write_text(folder / CONFIG_FILE, json.dumps(
            {**config, "training": self.training, **(extra or {})}, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "LookRanker":
        """A ranker saved with :meth:`save` (JSON and safetensors only; runs no code)."""
        from lookalike.models.weights import read_network

        config, tensors = read_network(folder, KIND, "look ranker", LookRankerError)
        if list(config.get("features", [])) != list(FEATURES):
            raise LookRankerError(f"{folder}: look ranker of features {config.get('features')}, "
                                  f"this version reads {list(FEATURES)}")
        try:
            kinds = KindClassifier(config["categories"], tensors["kinds_weight"],
                                   tensors["kinds_bias"]) if config.get("categories") else None
            ranker = cls(config["embedder"], config["look_head"], tensors["mean"],
                         tensors["scale"], tensors["coef"], float(tensors["intercept"][0]),
                         kinds, float(config.get("kind_weight", 0.0)))
        except (KeyError, IndexError) as missing:
            raise LookRankerError(f"{folder}: look ranker without {missing}") from None
        if not ranker.mean.shape == ranker.scale.shape == ranker.coef.shape == (len(FEATURES),):
            raise LookRankerError(f"{folder}: look ranker weights are not {len(FEATURES)} wide")
        ranker.config.update({k: v for k, v in config.items()
                              if k not in ("training", "categories", "kind_weight")})
        ranker.training = config.get("training")
        return ranker


def ranking_cues(project: Any, loaded: Any, checker: Any, like: str, objectness: Any,
                 size: tuple[int, int]) -> tuple[Callable[..., np.ndarray], Any] | None:
    """``(boxes, vectors) -> `` :func:`region_features` rows for a ``like`` query (``loaded``:
    the searcher, ``checker``: its :class:`~lookalike.recommend.look_space.QuerySpace`), and
    the look head they are read under; None when no head fits the checker's embedder or the
    like product has no category."""
    from lookalike.recommend.look_head import packaged_look_head
    from lookalike.recommend.look_space import category_vote

    embedder = checker.embedder
    head = packaged_look_head(embedder.name, embedder.dim, project.caches)
    vote = None if head is None else category_vote(project, loaded, like)
    if head is None or vote is None:
        return None
    like_vector = checker.vectors([like])
    by_head, target = head.scorer(like_vector), like_vector[0]
    return (lambda boxes, vectors: region_features(
        boxes, objectness, by_head(vectors), vectors @ target, vote(vectors), size)), head


def ranked_scorer(project: Any, loaded: Any, checker: Any, like: str, objectness: Any,
                  size: tuple[int, int]) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """A ``like`` query's box scorer ``(boxes, vectors) -> logits`` under the packaged ranker
    (arguments as :func:`ranking_cues`); None when no ranker fits the embedder and head."""
    cues = ranking_cues(project, loaded, checker, like, objectness, size)
    ranker = None if cues is None else packaged_look_ranker(checker.embedder.name,
                                                            cues[1].digest, project.caches)
    if cues is None or ranker is None:
        return None
    features, kinds, category = cues[0], ranker.kinds, project.store.get(like).category
    return lambda boxes, vectors: ranker.score(features(boxes, vectors), None if kinds is None
                                               else kinds.log_prob(vectors, category))


def packaged_look_ranker(embedder: str, look_head: str,
                         caches: ProjectCaches | None = None) -> LookRanker | None:
    """The ranker shipped in the package when it was fitted for ``embedder`` (a registry name)
    and the look head of weights digest ``look_head``; None otherwise, or when absent. Loaded
    once per ``caches``."""
    def load() -> LookRanker | None:
        return LookRanker.load(PACKAGED) if (PACKAGED / WEIGHTS_FILE).is_file() else None

    ranker = load() if caches is None else caches.look_rankers.get_or_make(PACKAGED, load)
    if ranker is None or ranker.config["embedder"] != embedder or \
            ranker.config["look_head"] != look_head:
        return None
    return ranker


__all__: Sequence[str] = ("FEATURES", "KindClassifier", "LookRanker", "LookRankerError",
                          "packaged_look_ranker", "ranked_scorer", "ranking_cues",
                          "region_features")
