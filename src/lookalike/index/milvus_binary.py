"""The ``milvus-binary`` index: hash codes in Milvus, Hamming search there, float re-rank here.

The same two steps as the in-process ``binary`` kind (:mod:`lookalike.index.binary_backend`,
paper 000), with the codes and the floats in a Milvus collection:

1. Vectors arriving at :meth:`~MilvusIndex.add` are L2-normalised and hashed by a
   :class:`~lookalike.models.hashing.HyperplaneCoder` -- the learned hash layer of a ``cnn-hash``
   embedder (``create_index("milvus-binary", dim, coder=embedder.coder(), uri=...)``) or, by
   default, seeded random-hyperplane LSH. The code goes to the BINARY_VECTOR field ``vector``
   (index ``BIN_FLAT``, an exhaustive popcount scan, or ``BIN_IVF_FLAT`` with ``nlist`` /
   ``nprobe``; metric HAMMING), the unit vector to the ARRAY field ``floats`` (Milvus 2.3 has one
   vector field per collection).
2. A query's code takes the ``candidates`` nearest codes (at least ``k``) among those passing the
   filter -- the filter runs inside Milvus' search, as in the ``milvus`` kind -- and the same
   search call returns their floats.
3. With ``rerank=True`` (default) the candidates are re-ordered by cosine with the query (the
   Euclidean order of unit vectors, as the ``binary`` kind) and the score is that cosine; without
   it the order is Hamming's and the score ``1 - 2 * hamming / bits``. ``store_vectors=False``
   keeps only the codes in Milvus (no ``floats`` field; Milvus loads every field of a loaded
   collection, so this is what makes the codes small in memory): no re-ranking, no
   ``get_vectors``.

The coder is saved beside ``index.json`` as ``coder.safetensors`` (planes and offsets); the
vectors and codes stay in Milvus. Everything else (consistency, excludes, save/load checks) is
the ``milvus`` kind's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError, ModelMismatchError
from lookalike.index.base import Hits, register
from lookalike.index.milvus_backend import MAX_LIMIT, MilvusIndex
from lookalike.index.milvus_schema import FLOATS_FIELD, VECTOR_FIELD, make_rows, make_schema
from lookalike.models.hashing import HyperplaneCoder, check_bits
from lookalike.storage import atomic_write_bytes

CODER_FILE = "coder.safetensors"
INDEX_TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")


@register("milvus-binary")
class MilvusBinaryIndex(MilvusIndex):
    """Hash codes + floats in a Milvus collection (see the module docstring).

    Parameters: those of the ``milvus`` kind that concern the connection and reads (``uri``,
    ``collection``, ``timeout``, ``batch_size``, ``consistency``), plus ``bits`` (taken from
    ``coder`` when given), ``seed`` (of the random LSH planes), ``candidates``, ``rerank``,
    ``index_type`` (``BIN_FLAT`` or ``BIN_IVF_FLAT``), ``nlist`` and ``nprobe`` (IVF only),
    ``store_vectors`` (keep the floats; needed by ``rerank``).
    """

    DEFAULTS: dict[str, Any] = {"bits": 64, "seed": 0, "candidates": 100, "rerank": True,
                                "store_vectors": True,
                                "index_type": "BIN_FLAT", "nlist": 128, "nprobe": 16,
                                "timeout": 10.0, "batch_size": 1000,
                                "consistency": MilvusIndex.DEFAULTS["consistency"]}
    _FLOATS_FIELD = FLOATS_FIELD

    def __init__(self, dim: int, embedder_id: str = "", coder: HyperplaneCoder | None = None,
                 **params: Any) -> None:
        bits = coder.bits if coder is not None else params.get("bits", self.DEFAULTS["bits"])
        params["bits"] = check_bits(bits)
        if params.get("index_type", self.DEFAULTS["index_type"]) not in INDEX_TYPES:
            raise LookalikeError(f"milvus-binary index: index_type must be one of "
                                 f"{', '.join(INDEX_TYPES)}, got {params['index_type']!r}")
        if int(params.get("candidates", self.DEFAULTS["candidates"])) < 1:
            raise LookalikeError("milvus-binary index: candidates must be >= 1")
        if params.get("rerank", True) and not params.get("store_vectors", True):
            raise LookalikeError("milvus-binary index: rerank=True needs store_vectors=True "
                                 "(re-ranking reads the float vectors)")
        seed = int(params.get("seed", self.DEFAULTS["seed"]))
        self.coder = coder or HyperplaneCoder.random(int(dim), params["bits"], seed)
        if self.coder.dim != int(dim):
            raise LookalikeError(f"milvus-binary index: the coder hashes {self.coder.dim}-d "
                                 f"vectors but the index holds {dim}-d ones")
        super().__init__(dim, embedder_id, **params)

    @property
    def bits(self) -> int:
        return int(self.params["bits"])

    # ---- the hooks of MilvusIndex ---------------------------------------------------------
    def _schema(self, meta: str) -> Any:
        return make_schema(self.dim, meta, binary_bits=self.bits,
                           floats=bool(self.params["store_vectors"]))

    def _add_vector_index(self, index_params: Any) -> None:
        kind = str(self.params["index_type"])
        options = {"nlist": int(self.params["nlist"])} if kind == "BIN_IVF_FLAT" else {}
        index_params.add_index(field_name=VECTOR_FIELD, index_type=kind, metric_type="HAMMING",
                               params=options)

    def _make_rows(self, ids: Sequence[str], vectors: np.ndarray,
                   attributes: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
        rows = make_rows(ids, vectors, attributes)
        codes = self.coder.codes(vectors)
        for row, code, vector in zip(rows, codes, vectors):
            row[VECTOR_FIELD] = code.tobytes()
            if self.params["store_vectors"]:
                row[FLOATS_FIELD] = vector.tolist()
        return rows

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The stored unit vectors of ``ids`` (needs ``store_vectors=True``)."""
        if not self.params["store_vectors"]:
            raise LookalikeError("milvus-binary index built with store_vectors=False keeps no "
                                 "vectors")
        return super().get_vectors(ids)

    def _vector_dim(self) -> int:
        return self.bits

    @classmethod
    def _load_extras(cls, folder: Path) -> dict[str, Any]:
        from safetensors.numpy import load_file

        path = folder / CODER_FILE
        if not path.is_file():
            raise ModelMismatchError(f"{folder}: {CODER_FILE} is missing (the index's hash)")
        tensors = load_file(str(path))
        return {"coder": HyperplaneCoder(tensors["planes"], tensors["offsets"])}

    def save(self, folder: str | Path) -> Path:
        """Write the coder, then ``index.json`` (the commit point)."""
        from safetensors.numpy import save

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / CODER_FILE, save(self.coder.tensors()))
        return super().save(folder)

    # ---- search ---------------------------------------------------------------------------
    def _search(self, queries: np.ndarray, limit: int, where: str) -> list[Hits]:
        rerank = bool(self.params["rerank"])
        depth = max(limit, int(self.params["candidates"])) if rerank else limit
        if depth > MAX_LIMIT:
            raise LookalikeError(f"milvus-binary index: at most {MAX_LIMIT} candidates per "
                                 f"query (k plus excluded ids, or candidates), asked for {depth}")
        codes = self.coder.codes(queries)
        found = self._call("search", "search", self.collection,
                           data=[code.tobytes() for code in codes], limit=depth, filter=where,
                           anns_field=VECTOR_FIELD, output_fields=[FLOATS_FIELD] if rerank else [],
                           search_params={"metric_type": "HAMMING",
                                          "params": {"nprobe": int(self.params["nprobe"])}},
                           consistency_level=self._read_level())
        out = []
        for query, hits in zip(queries, found):
            ids = [str(hit["id"]) for hit in hits]
            if not rerank or not ids:
                scores = [1.0 - 2.0 * float(hit["distance"]) / self.bits for hit in hits]
                out.append(Hits(ids[:limit], scores[:limit]))
                continue
            floats = np.asarray([hit["entity"][FLOATS_FIELD] for hit in hits], np.float32)
            cosines = floats @ query
            order = np.argsort(-cosines, kind="stable")[:limit]
            out.append(Hits([ids[n] for n in order], [float(cosines[n]) for n in order]))
        return out
