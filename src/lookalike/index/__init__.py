"""Vector indexes: the interface and registry (:mod:`.base`), the FAISS backends
(:mod:`.faiss_exact`, :mod:`.faiss_hnsw`, :mod:`.faiss_ivf`, imported on first use) and the
index choice (:mod:`.choose`)."""

from lookalike.index.base import (
    Filters,
    Hits,
    VectorIndex,
    available,
    create_index,
    index_class,
    load_index,
    register,
)
from lookalike.index.choose import IndexChoice, choose_index

__all__ = ["Filters", "Hits", "IndexChoice", "VectorIndex", "available", "choose_index",
           "create_index", "index_class", "load_index", "register"]
