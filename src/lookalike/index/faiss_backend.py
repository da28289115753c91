"""The FAISS backends under their old import path (kept for callers of ``faiss_backend``).

The code lives in :mod:`.faiss_common` (shared plumbing), :mod:`.faiss_exact`,
:mod:`.faiss_quantised` (what trained indexes share), :mod:`.faiss_hnsw` and :mod:`.faiss_ivf`.
"""

from lookalike.index.faiss_common import FaissIndex
from lookalike.index.faiss_exact import ExactIndex
from lookalike.index.faiss_hnsw import HNSWIndex
from lookalike.index.faiss_ivf import IVFIndex
from lookalike.index.faiss_quantised import QuantisedIndex

__all__ = ["ExactIndex", "FaissIndex", "HNSWIndex", "IVFIndex", "QuantisedIndex"]
