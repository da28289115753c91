"""The embedding cache and the embedding pipeline, under their historical name.

The cache lives in :mod:`lookalike.models.embedding_cache` and the pipeline (reader -> embedder
-> writer) in :mod:`lookalike.models.embed_pipeline`; this module re-exports both so callers can
keep importing from ``lookalike.models.cache``.
"""

from __future__ import annotations

from lookalike.models.embed_pipeline import (ChunkWriter, EmbedMapper, ItemFailed, ProgressBar,
                                             embed_with_cache, read_items)
from lookalike.models.embedding_cache import (META_FILE, MODEL_DIR, EmbeddingCache,
                                              save_model_once)

__all__ = ["META_FILE", "MODEL_DIR", "ChunkWriter", "EmbedMapper", "EmbeddingCache", "ItemFailed",
           "ProgressBar", "embed_with_cache", "read_items", "save_model_once"]
