"""Which index to build for a catalogue: a pure function of its size, dimension and limits.

The thresholds come from ``benchmarks/index_bench.py`` (numbers in benchmarks/RESULTS.md#index):

* below ``EXACT_MAX_ITEMS`` vectors and ``EXACT_MAX_FLOATS`` floats scanned per query, exact
  search is fast enough on two cores and perfect, so ``exact``;
* above, a rotated-SQ8 HNSW graph (about half the resident memory of raw float vectors)
  reaches recall@10 0.95 at 1M x 256 with ef_search 56 (efConstruction 160); ``ef_search`` is
  picked from the recall target;
* ``ivf`` (IVF + 4-bit PQ fast-scan, re-ranked on rotated SQ8 codes) is never chosen by itself
  (``IVF_MIN_ITEMS`` is None): in the one-protocol run of ``benchmarks/index_bench.py`` at 200k x
  256 its best validation recall@10 was far below 0.95 (benchmarks/RESULTS.md#index). Setting
  ``IVF_MIN_ITEMS`` turns the branch on for catalogues from that size;
* a recall target beyond what 8-bit codes allow moves to 16-bit or float storage; a memory budget
  too small for SQ8 moves down to 6- or 4-bit codes (recall drops: the reason says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError

#: Below this many vectors ``exact`` is chosen (unless it would not fit the memory budget) ...
EXACT_MAX_ITEMS = 50_000
#: ... and only while a query scans at most this many floats (64 MB): exact search is bound by
#: memory bandwidth, so 44k x 1,280-d (225 MB scanned a query) is far slower than HNSW
#: (benchmarks/load_test.py; numbers in benchmarks/RESULTS.md#serving-load-test).
EXACT_MAX_FLOATS = 16_777_216

#: HNSW storage options, most compact first: (factory code, bytes per dimension, the recall@10
#: of exact search over the codes after rotation, on 200k jittered real vectors:
#: benchmarks/index_codes_bench.py).
STORAGE_OPTIONS: tuple[tuple[str, float, float], ...] = (
    ("SQ4", 0.5, 0.735),
    ("SQ6", 0.75, 0.927),
    ("SQ8", 1.0, 0.980),
    ("SQfp16", 2.0, 0.999),
    ("Flat", 4.0, 1.0),
)

#: The graph must lose at most this much recall on top of the codes' own ceiling.
_GRAPH_MARGIN = 0.02

#: ef_search for a recall target (rotated SQ8, M=16, efConstruction=160), read off the 1M x 256
#: ef_search sweep of ``benchmarks/index_bench.py`` (benchmarks/RESULTS.md#index; smaller
#: indexes do better at the same ef). Entries: (target recall up to, ef_search).
_EF_FOR_TARGET: tuple[tuple[float, int], ...] = (
    (0.89, 16), (0.93, 32), (0.95, 56), (0.955, 64), (0.96, 96), (0.965, 160), (0.97, 256),
    (1.0, 384))

#: Build beam. 160 instead of FAISS's 40 costs a little more build time at 1M x 256 and gives a
#: graph that needs half the search beam for the same recall (benchmarks/RESULTS.md#index).
EF_CONSTRUCTION = 160

#: From this many vectors ``ivf`` would be chosen (when its size fits and the target allows it);
#: None: never (it did not reach recall@10 0.95 on the benchmark data, see the module docstring).
IVF_MIN_ITEMS: int | None = None
#: (target recall up to, nprobe, k_factor) for the ``ivf`` index (PQ ``dim/4`` x 4-bit, SQ8
#: re-rank), read off the 200k x 256 validation sweep (benchmarks/RESULTS.md#index): the re-rank
#: must see ``k * k_factor`` = 320-1,280 fast-scan candidates, because 4-bit PQ cannot order the
#: near-identical neighbours itself (with k_factor 16 recall stayed below 0.9 at any nprobe).
_IVF_FOR_TARGET: tuple[tuple[float, int, int], ...] = (
    (0.92, 16, 32), (0.95, 16, 64), (0.97, 16, 128))
IVF_MAX_RECALL = _IVF_FOR_TARGET[-1][0]

#: Id/attribute table bytes per item (ids, lookup, liveness, a few attribute columns).
_TABLE_BYTES_PER_ITEM = 64


@dataclass(frozen=True)
class IndexChoice:
    """An index kind, the parameters to build it with, and why."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    estimated_bytes: int = 0


def graph_bytes_per_item(M: int) -> int:
    """HNSW graph bytes per item: 2*M level-0 links, ~1 link list above, level and offset."""
    return 8 * M + 4 + 4 + 8


def exact_bytes(n_vectors: int, dim: int) -> int:
    """Estimated resident bytes of an ``exact`` index (floats, id map and its hash, table)."""
    return n_vectors * (4 * dim + 8 + 32 + _TABLE_BYTES_PER_ITEM)


def hnsw_bytes(n_vectors: int, dim: int, storage: str, M: int = 16) -> int:
    """Estimated resident bytes of an ``hnsw`` index with ``storage`` codes."""
    per_dim = {code: size for code, size, _ in STORAGE_OPTIONS}[storage]
    return int(n_vectors * (per_dim * dim + graph_bytes_per_item(M) + _TABLE_BYTES_PER_ITEM))


def ivf_params(n_vectors: int, dim: int, target_recall: float = 0.95) -> dict[str, Any]:
    """``ivf`` parameters for ``n_vectors`` of dimension ``dim``: about ``2 * sqrt(n)`` cells (a
    power of two), ``dim / 4`` four-bit sub-quantisers (``dim / 8`` bytes an item: at ``dim / 8``
    sub-quantisers the candidate list had to be twice as long for the same recall), trained on
    the first ``train_size`` vectors; ``nprobe`` and ``k_factor`` from the recall target."""
    nlist = int(2 ** round(np.log2(max(2 * np.sqrt(max(n_vectors, 1)), 64))))
    pq = max(d for d in range(1, dim // 4 + 1) if dim % d == 0 and d % 2 == 0) if dim >= 8 else dim
    nprobe, k_factor = next(((p, f) for up_to, p, f in _IVF_FOR_TARGET if target_recall <= up_to),
                            _IVF_FOR_TARGET[-1][1:])
    return {"nlist": nlist, "nprobe": nprobe, "pq": pq, "refine": "SQ8", "k_factor": k_factor,
            "coarse": "hnsw", "rotate": True, "exact_below": 50_000,
            "train_size": min(max(50_000, 40 * nlist), 200_000, max(n_vectors // 2, 40 * nlist))}


def ivf_bytes(n_vectors: int, dim: int, params: dict[str, Any]) -> int:
    """Estimated resident bytes of an ``ivf`` index: SQ8 + fast-scan codes, list ids, table,
    centroids."""
    per_item = dim + params["pq"] / 2 + 8 + _TABLE_BYTES_PER_ITEM
    return int(n_vectors * per_item + params["nlist"] * dim * 4)


def _ef_search(target: float) -> int:
    for up_to, ef in _EF_FOR_TARGET:
        if target <= up_to:
            return ef
    return _EF_FOR_TARGET[-1][1]


def choose_index(n_vectors: int, dim: int, memory_budget_bytes: int | None = None,
                 target_recall: float = 0.95) -> IndexChoice:
    """Pick ``exact`` or ``hnsw`` (and its parameters) for ``n_vectors`` of dimension ``dim``.

    ``memory_budget_bytes`` caps the estimated resident size of the index; ``target_recall`` is
    the wanted recall@10 against exact search. Pure: no I/O, same answer for the same input.
    """
    if n_vectors < 0 or dim <= 0:
        raise LookalikeError(f"choose_index: need n_vectors >= 0 and dim > 0, got {n_vectors}, {dim}")
    if not 0.0 < target_recall <= 1.0:
        raise LookalikeError(f"choose_index: target_recall must be in (0, 1], got {target_recall}")
    if memory_budget_bytes is not None and memory_budget_bytes <= 0:
        raise LookalikeError(f"choose_index: memory budget must be positive, got {memory_budget_bytes}")
    budget = memory_budget_bytes if memory_budget_bytes is not None else float("inf")
    raw_mb = n_vectors * dim * 4 / 1e6

    exact_size = exact_bytes(n_vectors, dim)
    small = n_vectors < EXACT_MAX_ITEMS and n_vectors * dim <= EXACT_MAX_FLOATS
    if exact_size <= budget and (small or target_recall >= 0.999):
        why = (f"{n_vectors:,} vectors: exact search is fast enough and perfect"
               if small else
               f"recall target {target_recall} needs exact search ({raw_mb:,.0f} MB of floats)")
        return IndexChoice("exact", {}, why, exact_size)

    if IVF_MIN_ITEMS is not None and n_vectors >= IVF_MIN_ITEMS and target_recall <= IVF_MAX_RECALL:
        params = ivf_params(n_vectors, dim, target_recall)
        size = ivf_bytes(n_vectors, dim, params)
        if size <= budget:
            why = (f"{n_vectors:,} vectors: IVF{params['nlist']} + PQ{params['pq']}x4 fast-scan "
                   f"re-ranked on SQ8 codes ({size / 1e6:,.0f} MB, {size / max(exact_size, 1):.2f}x "
                   f"exact) reaches recall ~{target_recall} with nprobe={params['nprobe']}")
            return IndexChoice("ivf", params, why, size)
    M = 16
    ef = _ef_search(min(target_recall, 0.999))
    sized = [(code, hnsw_bytes(n_vectors, dim, code, M), ceiling)
             for code, _, ceiling in STORAGE_OPTIONS]
    fitting = [option for option in sized if option[1] <= budget]
    good_enough = [option for option in fitting if option[2] - _GRAPH_MARGIN >= target_recall
                   or option[0] == "Flat"]
    if good_enough:
        storage, size, ceiling = good_enough[0]  # the most compact one reaching the target
        why = (f"{n_vectors:,} vectors: HNSW over {storage} codes ({size / 1e6:,.0f} MB, "
               f"{size / max(exact_size, 1):.2f}x exact) reaches recall ~{target_recall} "
               f"with ef_search={ef}")
    elif fitting:
        storage, size, ceiling = fitting[-1]  # the most precise one that fits
        why = (f"memory budget {budget / 1e6:,.0f} MB allows at most {storage} codes "
               f"({size / 1e6:,.0f} MB): expect recall@10 below {ceiling:.2f}, short of "
               f"the target {target_recall}")
    else:
        storage, size, ceiling = sized[0]
        why = (f"no index fits {budget / 1e6:,.0f} MB; the smallest ({storage} codes) needs "
               f"~{size / 1e6:,.0f} MB and reaches recall@10 below {ceiling:.2f}")
    params = {"M": M, "ef_search": ef, "ef_construction": EF_CONSTRUCTION, "storage": storage,
              "rotate": storage != "Flat", "exact_below": 50_000,
              "train_size": min(max(10_000, n_vectors // 100), 100_000)}
    return IndexChoice("hnsw", params, why, size)
