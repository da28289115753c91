"""The ``ivf`` backend: inverted lists of 4-bit PQ fast-scan codes, re-ranked on SQ8 codes.

The FAISS structure is ``IndexPreTransform(RandomRotation) -> IndexRefine(base, refine)``:

* ``base`` — ``IndexIVFPQFastScan``: ``nlist`` k-means cells (found through a small HNSW graph
  over the centroids, or a flat scan of them), each holding ``pq``-byte/2 codes that SIMD
  registers compare 32 at a time. A query scans the ``nprobe`` nearest cells;
* ``refine`` — ``IndexScalarQuantizer`` (SQ8: one byte a dimension): the ``k * k_factor`` best
  fast-scan candidates are re-scored on these finer codes and the best ``k`` returned.

So memory is about ``dim + pq/2 + 8`` bytes an item (SQ8 codes, fast-scan codes, the list's
int64 id) plus the id table, versus ``4 * dim`` for raw floats, and a query touches a few
thousand tiny codes plus ``k * k_factor`` SQ8 rows. Training (coarse k-means, PQ codebooks, SQ8
ranges) happens once, on the first ``train_size`` vectors (see :mod:`.faiss_quantised`); later adds
are encoded with those. Filters: a selector in the cell scan, with ``nprobe`` widened to
``nprobe / sqrt(share passing)`` so enough passing items are met.
"""

from __future__ import annotations

from typing import Any, ClassVar

import faiss
import numpy as np

from lookalike.errors import LookalikeError
from lookalike.index.base import register
from lookalike.index.faiss_common import bitmap_selector
from lookalike.index.faiss_quantised import QuantisedIndex

_COARSE = {"flat": "", "hnsw": "_HNSW32"}
_REFINE = ("SQ8", "SQ6", "SQ4", "SQfp16", "Flat")


@register("ivf")
class IVFIndex(QuantisedIndex):
    """Approximate cosine search: IVF + 4-bit PQ fast-scan, re-ranked on SQ8 codes.

    Parameters (``lookalike.index.choose.ivf_params`` gives them for a catalogue size):

    * ``nlist`` — number of k-means cells; ``nprobe`` — cells scanned a query;
    * ``pq`` — PQ sub-quantisers (4 bits each: ``pq / 2`` bytes an item; must divide ``dim``);
    * ``refine`` — the re-rank codes: ``SQ8`` (default), ``SQ6``, ``SQ4``, ``SQfp16`` or ``Flat``;
    * ``k_factor`` — fast-scan candidates re-ranked, as a multiple of ``k``. 4-bit codes cannot
      order near-identical neighbours, so the re-rank needs long lists (64: 640 SQ8 rows for
      ``k=10``, a fraction of the cost of the cell scan);
    * ``coarse`` — how a query finds its cells: ``hnsw`` (a graph over the centroids) or ``flat``;
    * ``rotate`` — random rotation first (spreads variance over dimensions: better SQ/PQ codes);
    * ``train_size`` — vectors collected (searched exactly) before training; at least
      ``39 * nlist`` keeps FAISS's k-means well fed;
    * ``compact_ratio``, ``exact_below`` — as for ``hnsw`` (dead-node rebuilds, exact filters).
    """

    DEFAULTS: ClassVar[dict[str, Any]] = {
        "nlist": 1024, "nprobe": 16, "pq": 64, "refine": "SQ8", "k_factor": 64, "coarse": "hnsw",
        "rotate": True, "train_size": 50_000, "compact_ratio": 0.2, "exact_below": 50_000,
    }

    def _untrained(self) -> Any:
        p = self.params
        if int(p["nlist"]) < 1 or int(p["nprobe"]) < 1 or float(p["k_factor"]) < 1:
            raise LookalikeError("ivf index: nlist and nprobe must be >= 1, k_factor >= 1")
        if p["coarse"] not in _COARSE or p["refine"] not in _REFINE:
            raise LookalikeError(f"ivf index: coarse must be one of {', '.join(_COARSE)} and "
                                 f"refine one of {', '.join(_REFINE)}")
        if int(p["pq"]) < 1 or self.dim % int(p["pq"]):
            raise LookalikeError(f"ivf index: pq={p['pq']} must divide the dimension {self.dim}")
        metric = faiss.METRIC_INNER_PRODUCT
        try:
            base = faiss.index_factory(
                self.dim, f"IVF{int(p['nlist'])}{_COARSE[p['coarse']]},PQ{int(p['pq'])}x4fs", metric)
            refine = faiss.index_factory(self.dim, str(p["refine"]), metric)
        except RuntimeError as error:
            raise LookalikeError(f"ivf index: FAISS cannot build it "
                                 f"({str(error).strip().splitlines()[-1]})") from None
        index = faiss.IndexRefine(base, refine)
        if p["rotate"]:
            index = faiss.IndexPreTransform(faiss.RandomRotationMatrix(self.dim, self.dim), index)
        return index

    def _refined(self, index: Any = None) -> Any:
        return faiss.downcast_index(self._inner(index))

    def _ivf(self, index: Any = None) -> Any:
        return faiss.extract_index_ivf(self._refined(index).base_index)

    def _code_store(self) -> Any:
        return faiss.downcast_index(self._refined().refine_index)

    def _search_trained(self, queries: np.ndarray, k: int, mask: np.ndarray | None,
                        n_pass: int) -> tuple[np.ndarray, np.ndarray]:
        nlist = int(self.params["nlist"])
        nprobe = min(int(self.params["nprobe"]), nlist)
        ivf = faiss.SearchParametersIVF()
        selector = bitmap = None
        if mask is not None:
            # Cells hold passing and hidden items alike: scan more of them the fewer pass.
            share = n_pass / max(self._index.ntotal, 1)
            nprobe = min(nlist, int(np.ceil(nprobe / np.sqrt(share))))
            selector, bitmap = bitmap_selector(mask)
            ivf.sel = selector
        ivf.nprobe = nprobe
        coarse = None
        if self.params["coarse"] == "hnsw":
            coarse = faiss.SearchParametersHNSW()
            coarse.efSearch = max(2 * nprobe, 32)
            ivf.quantizer_params = coarse
        refine = faiss.IndexRefineSearchParameters()
        refine.k_factor = float(self.params["k_factor"])
        refine.base_index_params = ivf
        if selector is not None:
            refine.sel = selector
        scores, labels = self._index.search(queries, k, params=self._search_params(refine))
        del selector, bitmap, coarse, ivf  # (kept alive until here on purpose)
        return scores, labels

    def memory_bytes(self) -> int:
        total = self._code_bytes()
        if self.trained:
            ivf = self._ivf()
            lists = ivf.invlists
            sizes = np.array([lists.list_size(i) for i in range(ivf.nlist)], dtype=np.int64)
            block = getattr(ivf, "bbs", 1)  # fast-scan stores codes in blocks of 32
            total += int((-(-sizes // block) * block).sum() * ivf.code_size + sizes.sum() * 8)
            total += ivf.nlist * self.dim * 4  # centroids (the HNSW links over them are small)
        return int(total)
