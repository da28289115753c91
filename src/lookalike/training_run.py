"""``Project.train``: learn an embedder on a project's own catalogue.

Any registered embedder that learns (``needs_fit``) can be trained; what data it gets follows
from the training contract its class declares (:mod:`lookalike.models.learners`), not from
its name:

- a :class:`~lookalike.models.learners.VectorLearner`: its ``base`` embedder's vectors of the training items, through
  the project's embedding cache (``embeddings/<base id>/``), so a base that already indexed the
  catalogue is not run again (``pca``, ``projection``);
- a :class:`~lookalike.models.learners.TensorLearner`: uint8
  :class:`~lookalike.models.datasets.ImageTensors` at the model's
  ``image_size``/``channels`` (``cnn``, ``cnn-hash``, ``finetune``, the autoencoders, ...);
- otherwise ``fit(images, labels)`` with PIL images.

Training items are those whose ``split`` is ``train``; a catalogue without a train split uses
all its items (the trainers hold a seeded validation share out of them). Labels come from
``label_column`` (items without a value are left out). Input size follows the catalogue (its
most common image size) unless the options set ``image_size``; grey catalogues train on one
channel. Checkpoints go to ``<project>/models/<name>/checkpoints/``; the finished model is
written next to them, ``config.json`` last, so ``models/<name>`` is loadable only once complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError, StoreError
from lookalike.layout import MODELS_DIR
from lookalike.models.learners import TensorLearner, VectorLearner

#: A :class:`lookalike.project.Project` (not imported: project.py calls this module, so the
#: dependency points one way).
Project = Any

CHECKPOINTS_DIR = "checkpoints"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MODEL_FILES = ("weights.safetensors", "training.json", "config.json")  # config.json last


@dataclass
class TrainSummary:
    """What ``Project.train`` did and where the model is."""

    name: str
    method: str
    model_dir: str
    embedder: str
    embedder_id: str
    dim: int
    label_column: str | None
    items: int
    classes: int
    image_size: list[int] | None
    seconds: float
    resumed: bool
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def index_command(self) -> str:
        return f"lookalike index --embedder {MODELS_DIR}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "index_command": self.index_command}


def model_folder(project_path: Path, embedder: str) -> Path | None:
    """The folder a ``--embedder`` value names, if it is a saved model: ``models/<name>`` inside
    the project first, then a path (absolute or relative to the working directory)."""
    inside = project_path / embedder
    if embedder.startswith(f"{MODELS_DIR}/") and inside.is_dir():
        return inside
    path = Path(embedder).expanduser()
    return path if path.is_dir() else None


def train_project(project: "Project", method: str, *, name: str | None = None,
                  label_column: str | None = "article_type",
                  options: Mapping[str, Any] | None = None, resume: bool = False,
                  progress: bool = True) -> TrainSummary:
    """Train ``method`` on ``project``'s training items; see :meth:`Project.train`."""
    from lookalike.models import base as models

    cls = models.embedder_class(method)
    if not cls.needs_fit:
        learners = [k for k in models.available() if _learns(k)]
        raise LookalikeError(f"{method} does not learn from a catalogue; trainable methods: "
                             f"{', '.join(learners)}")
    name = name or method
    if not _NAME.match(name):
        raise LookalikeError(f"model name {name!r}: use letters, digits, '.', '_' or '-' "
                             "(at most 64 characters)")
    options = dict(options or {})
    folder = project.layout.model(name)
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder / ".train.lock", name):
        return _train_locked(project, cls, method, name, folder, label_column, options, resume,
                             progress)


def _train_locked(project: "Project", cls: type, method: str, name: str, folder: Path,
                  label_column: str | None, options: dict[str, Any], resume: bool,
                  progress: bool) -> TrainSummary:
    started = time.perf_counter()
    frame = _training_frame(project)
    # Embedders that learn without labels (autoencoders, InfoGAN) declare needs_labels = False
    # and train on every training item; the others on the items that have a label.
    needs_labels = getattr(cls, "needs_labels", True)
    label_column, labels = _labels(frame, label_column if needs_labels else None, needs_labels)
    if labels is not None:
        keep = labels.notna().to_numpy()
        frame, labels = frame[keep], labels[keep].astype(str)
    if len(frame) < 2:
        raise LookalikeError(f"{project.path}: {len(frame)} labelled training items; need at "
                             "least 2 (ingest a catalogue first)")
    model_options, fit_options = _split_options(cls, options)
    accepts = inspect.signature(cls.__init__).parameters
    if "image_size" in accepts and "image_size" not in model_options:
        model_options["image_size"] = list(_common_size(frame))
    if "channels" in accepts and "channels" not in model_options:
        model_options["channels"] = 1 if _all_grey(frame) else 3
    if "label_column" in accepts and label_column is not None:
        model_options.setdefault("label_column", label_column)
    if isinstance(model_options.get("base"), str):
        found = model_folder(project.path, model_options["base"])
        if found is not None:
            from lookalike.models import base as models

            model_options["base"] = models.load(found)
    model = cls(**model_options)

    checkpoints = folder / CHECKPOINTS_DIR
    if not resume and checkpoints.exists():
        shutil.rmtree(checkpoints)  # a fresh run must not pick up another run's epochs
    label_list = None if labels is None else labels.tolist()
    if isinstance(model, VectorLearner):
        vectors = _base_vectors(project, model.base, frame, progress)
        model.fit_vectors(vectors, label_list, **fit_options)
    elif isinstance(model, TensorLearner):
        data = _tensors(project, frame, label_list, tuple(model.image_size),
                        int(model.channels))
        fit_options.setdefault("progress", None if progress else False)
        model.fit_tensors(data, checkpoint_dir=checkpoints, resume=resume, **fit_options)
    else:
        from lookalike.catalogue.images import decode_image

        images = [decode_image(Path(p)) for p in frame["image_path"]]
        model.fit(images, label_list, **fit_options)
    _save_atomically(model, folder)
    result = getattr(model, "training_result", None)
    if result is not None and not isinstance(result, dict):
        from lookalike.models.training import TrainResult

        if isinstance(result, TrainResult):
            result = result.to_json()
    if result is None:
        result = dict(getattr(model, "fit_info", {}) or {})
    return TrainSummary(
        name=name, method=method, model_dir=str(folder), embedder=model.name,
        embedder_id=model.embedder_id, dim=model.dim, label_column=label_column,
        items=len(frame), classes=0 if labels is None else int(labels.nunique()),
        image_size=list(getattr(model, "image_size", ())) or None,
        seconds=round(time.perf_counter() - started, 3), resumed=resume,
        result=json.loads(json.dumps(result, default=str)))


# ---- options ----------------------------------------------------------------------------------
def _learns(kind: str) -> bool:
    from lookalike.models import base as models

    try:
        return bool(models.embedder_class(kind).needs_fit)
    except Exception:  # noqa: BLE001 - a broken plugin must not break the error message
        return False


def _split_options(cls: type, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Options the constructor takes (model settings) vs the rest (training settings, checked
    by the model's fit)."""
    accepts = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepts.values())
    named = {k for k in accepts if k != "self"}
    if takes_any:  # e.g. cnn-hash forwards **cnn_options: ask the parents too
        for parent in cls.__mro__[1:]:
            if "__init__" in parent.__dict__:
                named |= set(inspect.signature(parent.__init__).parameters) - {"self"}
    model = {k: v for k, v in options.items() if k in named}
    rest = {k: v for k, v in options.items() if k not in named}
    return model, rest


# ---- data -------------------------------------------------------------------------------------
def _training_frame(project: "Project"):
    frame = project.store.frame()
    if len(frame) == 0:
        raise StoreError(f"{project.path}: the catalogue is empty; run `lookalike ingest` first")
    if "split" in frame.columns and (frame["split"] == "train").any():
        frame = frame[frame["split"] == "train"]
    return frame


def _labels(frame, label_column: str | None, needs_labels: bool):
    if label_column is None:
        return None, None
    if label_column not in frame.columns:
        # Named product catalogues keep article_type as the category; other catalogues
        # (folders, Fashion-MNIST) only have category: fall back to it for the default.
        if label_column == "article_type" and "category" in frame.columns \
                and frame["category"].notna().any():
            return "category", frame["category"]
        if not needs_labels:
            return None, None
        raise LookalikeError(f"label column {label_column!r} is not in the catalogue; columns: "
                             f"{', '.join(map(str, frame.columns))}")
    return label_column, frame[label_column]


def _common_size(frame) -> tuple[int, int]:
    """The most common (width, height) of the items' images."""
    sizes = frame.groupby(["width", "height"]).size().sort_values(ascending=False)
    width, height = sizes.index[0]
    return int(width), int(height)


def _all_grey(frame, sample: int = 16) -> bool:
    from PIL import Image

    paths = frame["image_path"].iloc[np.linspace(0, len(frame) - 1, min(sample, len(frame)))
                                     .astype(int)]
    for path in paths:
        with Image.open(path) as image:
            if image.mode not in ("L", "1", "I;16", "I"):
                return False
    return True


def _tensors(project: "Project", frame, labels: list[str] | None, size: tuple[int, int],
             channels: int):
    """uint8 ImageTensors of the frame's images at ``size`` (decoded in threads, one array)."""
    import torch

    from lookalike.catalogue.images import decode_image
    from lookalike.models.datasets import ImageTensors, encode_labels, image_to_array

    paths = frame["image_path"].tolist()
    array = np.empty((len(paths), channels, size[1], size[0]), dtype=np.uint8)

    def load(row: int) -> None:
        array[row] = image_to_array(decode_image(Path(paths[row])), size, channels)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(load, range(len(paths))))
    codes, classes = (None, ()) if labels is None else encode_labels(labels)
    return ImageTensors(torch.from_numpy(array), codes, classes)


def _base_vectors(project: "Project", embedder, frame, progress: bool) -> np.ndarray:
    """The base embedder's vectors of the frame's items, through the project's cache."""
    from lookalike.catalogue.images import decode_image
    from lookalike.models.cache import EmbeddingCache, embed_with_cache, save_model_once

    cache_dir = project.layout.embeddings(embedder.embedder_id)
    cache = EmbeddingCache(cache_dir, embedder.embedder_id, embedder.dim)
    save_model_once(embedder, cache_dir / "model")
    keys = frame["content_hash"].tolist()
    paths = dict(zip(keys, frame["image_path"]))
    return embed_with_cache(embedder, keys, lambda key: decode_image(Path(paths[key])), cache,
                            progress=progress)


# ---- saving -------------------------------------------------------------------------------------
def _save_atomically(model, folder: Path) -> None:
    """Write the model into a staging folder, then move its files in, ``config.json`` last.

    The old ``config.json`` is removed first, so a reader never pairs it with new weights:
    during the swap ``models/<name>`` is simply "not a saved model yet".
    """
    import secrets

    staging = folder / f".staging-{secrets.token_hex(4)}"
    try:
        model.save(staging)
        (folder / "config.json").unlink(missing_ok=True)
        for name in _MODEL_FILES:
            if (staging / name).is_file():
                os.replace(staging / name, folder / name)
            elif name != "config.json":
                (folder / name).unlink(missing_ok=True)
        for extra in staging.iterdir():  # anything else a model saves
            target = folder / extra.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(extra, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _exclusive(path: Path, name: str) -> Iterator[None]:
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LookalikeError(f"model {name!r} is being trained by another process") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
