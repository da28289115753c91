"""How quickly `lookalike watch` reflects a folder: real demo product photos, a real watcher thread.

* single: one photo written at a time; seconds from the write to the batch that has it in the
  index (by design at least ``--settle``: a file must stay unchanged that long).
* bulk: ``--bulk`` photos dropped at once; seconds until all are in the index, and items/s.
* restart: a new watcher over the same (unchanged) folder; seconds of its start-up reconcile.

    python benchmarks/watch_latency.py --quick                  # 5 singles, 200 bulk, pixels
    python benchmarks/watch_latency.py --embedder efficientnet-lite0 --settle 0.5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_results  # noqa: E402

from lookalike.catalogue.sources import demo_parquet  # noqa: E402
from lookalike.project import Project  # noqa: E402
from lookalike.watch import FolderWatcher, WatchBatch  # noqa: E402


class Timeline:
    """When each id first reached the index (the batch report comes after the index update)."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.starts: list[float] = []
        self.changed = threading.Condition()

    def record(self, batch: WatchBatch) -> None:
        with self.changed:
            now = time.perf_counter()
            for item_id in batch.added + batch.updated:
                self.seen.setdefault(item_id, now)
            if batch.reason == "start":
                self.starts.append(batch.seconds)
            self.changed.notify_all()

    def wait(self, condition, timeout: float = 600.0) -> None:  # noqa: ANN001
        with self.changed:
            if not self.changed.wait_for(condition, timeout):
                raise TimeoutError("the watcher did not catch up")


def watch_in_thread(project: Project, folder: Path, timeline: Timeline,
                    args: argparse.Namespace) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    watcher = FolderWatcher(project, folder, embedder=args.embedder, settle=args.settle,
                            poll=args.poll, on_batch=timeline.record)
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    count = len(timeline.starts)
    timeline.wait(lambda: len(timeline.starts) > count)
    return thread, stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--embedder", default="pixels")
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--poll", action="store_true")
    parser.add_argument("--singles", type=int, default=None)
    parser.add_argument("--bulk", type=int, default=None)
    args = parser.parse_args()
    singles = args.singles or (5 if args.quick else 20)
    bulk = args.bulk or (200 if args.quick else 1500)
    frame = pd.read_parquet(demo_parquet(), columns=["id", "image_jpeg"])
    photos = [(str(i), bytes(b)) for i, b in zip(frame["id"], frame["image_jpeg"], strict=True)]
    photos = photos[:singles + bulk + 1]

    with tempfile.TemporaryDirectory() as tmp:
        folder, project = Path(tmp) / "photos", Project(Path(tmp) / "project")
        folder.mkdir()
        (folder / f"{photos[0][0]}.jpg").write_bytes(photos[0][1])  # so the index exists
        timeline = Timeline()
        thread, stop = watch_in_thread(project, folder, timeline, args)
        timeline.wait(lambda: photos[0][0] in timeline.seen)

        latencies = []
        for name, data in photos[1:1 + singles]:
            written = time.perf_counter()
            (folder / f"{name}.jpg").write_bytes(data)
            timeline.wait(lambda name=name: name in timeline.seen)
            latencies.append(timeline.seen[name] - written)

        dropped = time.perf_counter()
        for name, data in photos[1 + singles:]:
            (folder / f"{name}.jpg").write_bytes(data)
        names = [name for name, _ in photos[1 + singles:]]
        timeline.wait(lambda: all(name in timeline.seen for name in names))
        bulk_seconds = max(timeline.seen[name] for name in names) - dropped
        stop.set()
        thread.join()

        restart = Timeline()
        thread, stop = watch_in_thread(project, folder, restart, args)
        stop.set()
        thread.join()

    rows = [{"measure": "single photo: write -> indexed, median s",
             "value": statistics.median(latencies)},
            {"measure": "single photo: write -> indexed, max s", "value": max(latencies)},
            {"measure": f"bulk {bulk} photos: drop -> all indexed, s", "value": bulk_seconds},
            {"measure": "bulk items/s", "value": bulk / bulk_seconds},
            {"measure": f"restart reconcile of {len(photos)} unchanged files, s",
             "value": restart.starts[0]}]
    print_table(f"watch latency ({args.embedder}, settle {args.settle:g} s, "
                f"{'polling' if args.poll else 'inotify'})", rows)
    name = "watch_latency" + ("-poll" if args.poll else "") + \
        ("" if args.embedder == "pixels" else f"-{Path(args.embedder).name}")
    write_results(name, {
        "command": " ".join(["python", "benchmarks/watch_latency.py", *sys.argv[1:]]),
        "embedder": args.embedder, "settle": args.settle, "poll": args.poll,
        "singles": singles, "bulk": bulk, "single_latencies": latencies,
        "single_median": statistics.median(latencies), "single_max": max(latencies),
        "bulk_seconds": bulk_seconds, "bulk_items_per_second": bulk / bulk_seconds,
        "restart_files": len(photos), "restart_seconds": restart.starts[0]},
        quick=args.quick, seeds=[])


if __name__ == "__main__":
    main()
