"""Load test of the REST service on loopback: many clients mixing more-like-this, search by
photo and a few catalogue updates against the full products catalogue.

    python benchmarks/load_test.py --prepare-only     # first time: ingest + index (minutes)
    python benchmarks/load_test.py                    # 50 clients x 60 s, 1 worker

Phases, each bounded in time, all in one run:

1. **baseline**: one client, one request at a time (unloaded latency of each endpoint);
2. **users**: ``--clients`` concurrent clients that behave like shoppers: a request, then a
   pause (``--think-ms``, uniform 0.5x-1.5x) before the next; a separate client puts a new item
   and deletes the previous one every ``--update-every`` seconds;
3. **saturation**: the same clients with no pause at all, for the peak throughput.

The server is ``lookalike serve`` in a subprocess (uvicorn, ``--workers``), reached only on
127.0.0.1. Reports throughput, p50/p95/p99 latency and errors per endpoint and phase, and writes
``benchmarks/results/load_test.json``. Stops by itself (every phase has a deadline, every
request a timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / ".work"
API_KEY = "load-test-key-" + "0123456789abcdef"
TARGETS_MS = {"similar": 100.0, "search": 400.0}  # p95 targets on 2 cores


# ---- preparation -------------------------------------------------------------------------------

def prepare(project_dir: Path, embedder: str, kind: str) -> dict[str, Any]:
    """Ingest the full products catalogue and index it (incremental: a no-op when done).

    The project's default index uses the automatic index choice; another ``kind`` is built as
    an extra index named after it, from the same cached embeddings (no image is embedded twice).
    """
    from lookalike import Project

    project = Project(project_dir)
    started = time.perf_counter()
    report = project.ingest("products", progress=True)
    ingest_s = time.perf_counter() - started
    started = time.perf_counter()
    summary = project.index(embedder, progress=True)
    if kind != "auto":
        summary = project.index(embedder, kind=kind, name=kind, progress=True)
    index_s = time.perf_counter() - started
    project.close()
    print(f"ingest: {report.summary() if hasattr(report, 'summary') else report} ({ingest_s:.0f} s)")
    print(f"index: {summary.size} items, {summary.kind}, {summary.embedder} ({index_s:.0f} s)")
    return {"items": summary.size, "index": summary.name, "index_kind": summary.kind,
            "embedder": summary.embedder, "ingest_s": ingest_s, "index_s": index_s}


def describe(project_dir: Path, kind: str) -> dict[str, Any]:
    """What an existing project serves (for --no-prepare)."""
    from lookalike import Project

    project = Project(project_dir, create=False, read_only=True)
    name = kind if kind != "auto" else project.default_index_name()
    entry = project.indexes().get(name or "", {})
    facts = {"items": len(project.store), "index": name, "index_kind": entry.get("kind"),
             "embedder": entry.get("embedder")}
    project.close()
    return facts


def query_photos(n: int, size: tuple[int, int] | None, seed: int = 0) -> list[bytes]:
    """Real product photos from the test split, re-encoded at ``size`` like a phone upload."""
    import pandas as pd
    from PIL import Image

    frame = pd.read_parquet(_products_parquet(), columns=["split", "image_jpeg"])
    rows = frame[frame["split"] == "test"].sample(n=n, random_state=seed)["image_jpeg"]
    photos = []
    for raw in rows:
        if size is None:
            photos.append(bytes(raw))
            continue
        image = Image.open(io.BytesIO(raw)).convert("RGB").resize(size, Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=88)
        photos.append(buffer.getvalue())
    return photos


def _products_parquet() -> Path:
    env = os.environ.get("LOOKALIKE_PRODUCTS_PARQUET")
    if env and Path(env).is_file():
        return Path(env)
    for base in [Path.cwd(), *Path.cwd().parents, REPO, *REPO.parents]:
        candidate = base / "shared" / "data" / "fashion-products-small.parquet"
        if candidate.is_file():
            return candidate
    raise SystemExit("products Parquet not found: set LOOKALIKE_PRODUCTS_PARQUET")


# ---- the server --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(project_dir: Path, index: str, port: int, workers: int, torch_threads: int,
                 log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "LOOKALIKE_API_KEY": API_KEY}
    command = [sys.executable, "-m", "lookalike.cli", "serve", "--project", str(project_dir),
               "--index", index, "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--torch-threads", str(torch_threads),
               "--log-level", "warning"]
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(url + "/v1/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not become ready in time")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # our own session: the workers go too
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# ---- the load ----------------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)

    def add(self, endpoint: str, seconds: float, error: str | None) -> None:
        if error is None:
            self.latency[endpoint].append(seconds)
        else:
            self.errors[endpoint].append(error)

    def rows(self, phase: str, elapsed: float) -> list[dict[str, Any]]:
        rows = []
        for endpoint in sorted(set(self.latency) | set(self.errors)):
            ms = np.asarray(self.latency[endpoint]) * 1000.0
            n_ok = len(ms)
            rows.append({
                "phase": phase, "endpoint": endpoint, "requests": n_ok + len(self.errors[endpoint]),
                "errors": len(self.errors[endpoint]), "req_per_s": n_ok / elapsed,
                "p50_ms": float(np.percentile(ms, 50)) if n_ok else None,
                "p95_ms": float(np.percentile(ms, 95)) if n_ok else None,
                "p99_ms": float(np.percentile(ms, 99)) if n_ok else None,
                "max_ms": float(ms.max()) if n_ok else None,
            })
        return rows


async def _timed(recorder: Recorder, endpoint: str, request, expect=(200,)) -> Any:  # noqa: ANN001
    import httpx

    started = time.perf_counter()
    try:
        response = await request()
    except httpx.HTTPError as error:
        recorder.add(endpoint, 0.0, f"{type(error).__name__}: {error}")
        return None
    elapsed = time.perf_counter() - started
    if response.status_code not in expect:
        recorder.add(endpoint, elapsed, f"{response.status_code}: {response.text[:200]}")
        return None
    recorder.add(endpoint, elapsed, None)
    return response


async def run_phase(url: str, *, clients: int, duration: float, think_ms: float,
                    search_share: float, ids: list[str], photos: list[bytes],
                    update_every: float | None, update_photos: list[bytes], seed: int
                    ) -> tuple[Recorder, float]:
    import httpx

    recorder = Recorder()
    deadline = time.monotonic() + duration
    # Idle connections are dropped by the client (2 s) before uvicorn drops them (5 s): a request
    # sent on a connection the server is closing would fail with a ReadError.
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2,
                          keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def shopper(n: int) -> None:
            rng = random.Random(seed * 1000 + n)
            while time.monotonic() < deadline:
                if rng.random() < search_share:
                    photo = photos[rng.randrange(len(photos))]
                    await _timed(recorder, "search", lambda: http.post(
                        "/v1/search", files={"image": ("photo.jpg", photo, "image/jpeg")},
                        data={"k": "5"}))
                else:
                    item_id = ids[rng.randrange(len(ids))]
                    await _timed(recorder, "similar", lambda: http.get(
                        f"/v1/items/{item_id}/similar", params={"k": 5}))
                if think_ms:
                    await asyncio.sleep(think_ms * rng.uniform(0.5, 1.5) / 1000.0)

        async def updater() -> None:
            previous: str | None = None
            n = 0
            headers = {"X-API-Key": API_KEY}
            while time.monotonic() + update_every < deadline:  # type: ignore[operator]
                await asyncio.sleep(update_every)  # type: ignore[arg-type]
                item_id = f"load-test-{seed}-{n}"
                photo = update_photos[n % len(update_photos)]
                await _timed(recorder, "put", lambda: http.put(
                    f"/v1/items/{item_id}", headers=headers,
                    files={"image": ("new.jpg", photo, "image/jpeg")},
                    data={"attributes": json.dumps({"title": "load test item",
                                                    "category": "Tshirts"})}),
                    expect=(200, 201))
                if previous is not None:
                    await _timed(recorder, "delete", lambda: http.delete(
                        f"/v1/items/{previous}", headers=headers))
                previous = item_id
                n += 1
            if previous is not None:  # leave the catalogue as we found it
                await _timed(recorder, "delete", lambda: http.delete(
                    f"/v1/items/{previous}", headers=headers))

        tasks = [shopper(n) for n in range(clients)]
        if update_every:
            tasks.append(updater())
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=duration + 120)
        elapsed = time.monotonic() - started
    return recorder, elapsed


async def run_baseline(url: str, ids: list[str], photos: list[bytes], n: int) -> Recorder:
    import httpx

    recorder = Recorder()
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for i in range(n):
            item_id = ids[(i * 7919) % len(ids)]
            await _timed(recorder, "similar", lambda: http.get(f"/v1/items/{item_id}/similar",
                                                               params={"k": 5}))
            photo = photos[i % len(photos)]
            await _timed(recorder, "search", lambda: http.post(
                "/v1/search", files={"image": ("photo.jpg", photo, "image/jpeg")},
                data={"k": "5"}))
    return recorder


# ---- main --------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=WORK / "products",
                        help="benchmark project directory (built on first use)")
    parser.add_argument("--embedder", default=None, help="embedder (default: lookalike's)")
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--no-prepare", action="store_true",
                        help="serve --project as it is (no ingest / index)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per loaded phase")
    parser.add_argument("--saturation-duration", type=float, default=30.0,
                        help="seconds of the no-pause phase (0 skips it)")
    parser.add_argument("--think-ms", type=float, default=500.0,
                        help="mean pause between a shopper's requests in the users phase")
    parser.add_argument("--search-share", type=float, default=0.3,
                        help="fraction of requests that are search-by-photo")
    parser.add_argument("--update-every", type=float, default=10.0,
                        help="seconds between catalogue updates (0: none)")
    parser.add_argument("--index-kind", default="auto",
                        help="auto (the project's default index) or exact / hnsw (an extra "
                             "index of that kind, built from the cached embeddings)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--photo-size", default="480x640",
                        help="WxH of the uploaded photos ('original' for the 60x80 files)")
    parser.add_argument("--baseline-requests", type=int, default=30)
    parser.add_argument("--results-name", default=None,
                        help="results file name (default load_test[_<kind>])")
    args = parser.parse_args()

    from lookalike.project import DEFAULT_EMBEDDER

    embedder = args.embedder or DEFAULT_EMBEDDER
    args.project.parent.mkdir(parents=True, exist_ok=True)
    if args.no_prepare:
        prepared = describe(args.project, args.index_kind)
    else:
        prepared = prepare(args.project, embedder, args.index_kind)
    if args.prepare_only:
        return

    from lookalike import Project

    project = Project(args.project, create=False, read_only=True)
    ids = [i for i in project.store.ids() if not i.startswith("load-test-")]
    project.close()
    size = None if args.photo_size == "original" else tuple(map(int, args.photo_size.split("x")))
    photos = query_photos(200, size)  # type: ignore[arg-type]
    update_photos = query_photos(20, None, seed=1)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = WORK / "load_test_server.log"
    server = start_server(args.project, prepared["index"], port, args.workers,
                          args.torch_threads, log_path)
    rows: list[dict[str, Any]] = []
    try:
        wait_ready(url, server)
        # Warm every worker (first requests load the index and the model).
        asyncio.run(run_phase(url, clients=args.workers * 4, duration=5, think_ms=0,
                              search_share=0.5, ids=ids, photos=photos, update_every=None,
                              update_photos=[], seed=99))
        baseline = asyncio.run(run_baseline(url, ids, photos, args.baseline_requests))
        rows += baseline.rows("baseline", 1.0)
        for row in rows:
            row["req_per_s"] = None  # sequential: throughput is not meaningful
        users, elapsed = asyncio.run(run_phase(
            url, clients=args.clients, duration=args.duration, think_ms=args.think_ms,
            search_share=args.search_share, ids=ids, photos=photos,
            update_every=args.update_every or None, update_photos=update_photos, seed=1))
        rows += users.rows("users", elapsed)
        errors = {k: v[:3] for k, v in users.errors.items() if v}
        if args.saturation_duration > 0:
            saturated, elapsed_s = asyncio.run(run_phase(
                url, clients=args.clients, duration=args.saturation_duration, think_ms=0,
                search_share=args.search_share, ids=ids, photos=photos, update_every=None,
                update_photos=[], seed=2))
            rows += saturated.rows("saturation", elapsed_s)
            errors.update({f"saturation {k}": v[:3] for k, v in saturated.errors.items() if v})
    finally:
        stop_server(server)

    users_rows = {r["endpoint"]: r for r in rows if r["phase"] == "users"}
    verdict = {
        "zero_errors": all(r["errors"] == 0 for r in rows),
        **{f"{endpoint}_p95_under_{int(limit)}ms": bool(
            users_rows.get(endpoint, {}).get("p95_ms") is not None
            and users_rows[endpoint]["p95_ms"] < limit)
           for endpoint, limit in TARGETS_MS.items()},
    }
    print_table(f"load test: {prepared['items']} items, {prepared['embedder']} / "
                f"{prepared['index_kind']} index, {args.workers} workers", rows)
    print(f"baseline = 1 client, one request at a time; users = {args.clients} clients pausing "
          f"{args.think_ms:.0f} ms (mean) between requests, {args.search_share:.0%} search by "
          f"photo, an update every {args.update_every:.0f} s; saturation = {args.clients} "
          "clients, no pause")
    print("targets (users phase):", verdict)
    if errors:
        print("first errors:", json.dumps(errors, indent=1)[:2000])
    name = args.results_name or (
        "load_test" if args.index_kind == "auto" else f"load_test_{args.index_kind}")
    path = write_results(name, {
        "config": {"clients": args.clients, "duration_s": args.duration,
                   "saturation_duration_s": args.saturation_duration,
                   "think_ms": args.think_ms, "search_share": args.search_share,
                   "update_every_s": args.update_every, "workers": args.workers,
                   "torch_threads": args.torch_threads, "photo_size": args.photo_size,
                   **prepared},
        "targets_ms_p95": TARGETS_MS, "verdict": verdict, "rows": rows,
        "first_errors": errors})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
