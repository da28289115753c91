"""Does a shorter Milvus time tick shorten Strong reads? (LocalMilvus ``time_tick_ms``.)

For each proxy time-tick interval, a fresh local Milvus 2.3 server, a 2,000 x 64 collection
(seeded random unit vectors) and 40 single-vector searches at Strong and at Session consistency,
one client thread; the median latency of each.

    python benchmarks/milvus_tick.py    # -> benchmarks/results/milvus_tick.json
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

SEED = 0
TICKS_MS = (200, 50)


def measure(tick_ms: int) -> dict[str, float]:
    from lookalike.index.base import create_index
    from lookalike.index.milvus_server import LocalMilvus

    vectors = np.random.default_rng(SEED).standard_normal((2000, 64)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="milvus-tick-") as tmp:
        server = LocalMilvus(tmp, time_tick_ms=tick_ms).start()
        try:
            index = create_index("milvus", 64, "bench", uri=server.uri, collection="tick")
            index.add([str(i) for i in range(len(vectors))], vectors)
            index.search(vectors[:1], k=10)  # warm up
            out = {}
            for level in ("Strong", "Session"):
                index.params["consistency"] = level
                times = []
                for query in vectors[:40]:
                    start = time.perf_counter()
                    index.search(query[None], k=10)
                    times.append(time.perf_counter() - start)
                out[f"{level.lower()}_p50_ms"] = round(float(np.median(times)) * 1000, 1)
            index.close()
            return out
        finally:
            server.stop()


def main() -> None:
    rows = []
    for tick in TICKS_MS:
        rows.append({"time_tick_ms": tick, **measure(tick)})
        print(rows[-1], flush=True)
    print(write_results("milvus_tick", {"command": "python benchmarks/milvus_tick.py",
                                        "collection": "2,000 x 64", "queries": 40,
                                        "rows": rows}, quick=True, seeds=[SEED]))


if __name__ == "__main__":
    main()
