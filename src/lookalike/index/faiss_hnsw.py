"""The ``hnsw`` backend: a FAISS HNSW graph over (optionally rotated) scalar-quantised codes.

Training, removal (dead nodes, compaction) and exact subsets are shared with ``ivf``
(:mod:`.faiss_quantised`). A filtered HNSW walk still only meets the items near the query, so a
filter passing more than ``exact_below`` items widens the beam to ``ef_search / sqrt(share
passing)`` (at most ``MAX_FILTERED_EF``); measured in benchmarks/RESULTS.md#index.
"""

from __future__ import annotations

from typing import Any, ClassVar

import faiss
import numpy as np

from lookalike.errors import LookalikeError
from lookalike.index.base import register
from lookalike.index.faiss_common import bitmap_selector
from lookalike.index.faiss_quantised import QuantisedIndex


@register("hnsw")
class HNSWIndex(QuantisedIndex):
    """Approximate cosine search on a FAISS HNSW graph over quantised codes.

    The FAISS structure is ``IndexPreTransform(RandomRotation) -> IndexHNSW -> codes``.
    Parameters:

    * ``M`` — graph degree (level 0 keeps ``2*M`` neighbours: ~``8*M + 12`` bytes an item);
    * ``ef_search`` / ``ef_construction`` — beam widths at query / build time;
    * ``storage`` — how vectors are stored in the graph: ``SQ8`` (1 byte a dimension), ``SQ6``,
      ``SQ4``, ``SQfp16`` (2 bytes) or ``Flat`` (4 bytes, no quantisation);
    * ``rotate`` — apply a fixed random rotation (FAISS ``RandomRotationMatrix``) first. Scalar
      quantisers spend their levels per dimension; embeddings put most variance in a few
      dimensions, and rotating spreads it evenly, which cuts the inner-product error of SQ8
      several-fold (see docs/index.md);
    * ``train_size`` — vectors to collect before training the quantiser and building the graph;
    * ``compact_ratio`` — rebuild when this share of graph nodes is dead (None: never by itself);
    * ``exact_below`` — a filter (or set of live items) passing at most this many items is
      searched exactly over just those items' codes.
    """

    DEFAULTS: ClassVar[dict[str, Any]] = {
        "M": 16, "ef_search": 56, "ef_construction": 160, "storage": "SQ8", "rotate": True,
        "train_size": 10_000, "compact_ratio": 0.2, "exact_below": 50_000,
    }
    #: Filtered searches widen the beam to ``ef_search / sqrt(share passing)``, at most this.
    MAX_FILTERED_EF = 1024

    def _factory(self) -> str:
        factory = f"HNSW{int(self.params['M'])},{self.params['storage']}"
        return f"RR{self.dim},{factory}" if self.params["rotate"] else factory

    def _untrained(self) -> Any:
        if int(self.params["M"]) < 2 or int(self.params["ef_search"]) < 1:
            raise LookalikeError("hnsw index: M must be >= 2, ef_search and train_size >= 1")
        storage = str(self.params["storage"])
        if storage != "Flat" and not storage.startswith("SQ"):
            raise LookalikeError(f"hnsw index: storage {storage!r} is not Flat, SQ8, SQ6, SQ4, "
                                 "SQfp16 or SQbf16 (FAISS HNSW over PQ codes is L2-only)")
        try:
            return faiss.index_factory(self.dim, self._factory(), faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as error:
            raise LookalikeError(f"hnsw index: FAISS cannot build {self._factory()!r} "
                                 f"({str(error).strip().splitlines()[-1]})") from None

    def _configure(self, index: Any) -> None:
        self._inner(index).hnsw.efConstruction = int(self.params["ef_construction"])

    def _code_store(self) -> Any:
        return faiss.downcast_index(self._inner().storage)

    def _search_trained(self, queries: np.ndarray, k: int, mask: np.ndarray | None,
                        n_pass: int) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.SearchParametersHNSW()
        ef = max(int(self.params["ef_search"]), k)
        selector = bitmap = None
        if mask is not None:
            # A filter hides nodes from the results but not from the walk: widen the beam so
            # enough passing nodes are met (benchmarks/RESULTS.md#index).
            share = n_pass / max(self._index.ntotal, 1)
            ef = max(ef, min(int(np.ceil(ef / np.sqrt(share))), self.MAX_FILTERED_EF))
            selector, bitmap = bitmap_selector(mask)
            params.sel = selector
        params.efSearch = ef
        scores, labels = self._index.search(queries, k, params=self._search_params(params))
        del selector, bitmap  # (kept alive until here on purpose)
        return scores, labels

    def memory_bytes(self) -> int:
        total = self._code_bytes()
        if self.trained:
            hnsw = self._inner().hnsw
            total += hnsw.neighbors.size() * 4 + hnsw.levels.size() * 4 + hnsw.offsets.size() * 8
        return int(total)
