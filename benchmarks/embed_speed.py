"""Embedding speed and int8 quality: real product photos, JPEG decode included.

    python benchmarks/embed_speed.py                 # N=512 photos, all variants, P@10 on the
                                                     # full split (4,469 test x 39,603 train)
    python benchmarks/embed_speed.py --quick         # N=128, fewer variants, P@10 on 500 x 5k
    python benchmarks/embed_speed.py --no-speed      # P@10 and cosines only
    python benchmarks/embed_speed.py --n 1024 --threads 2 --policies
    python benchmarks/embed_speed.py --no-quality    # speed only (~5 min on an idle machine)

Every variant runs in its own subprocess (so its peak RSS is its own) with ``--threads`` threads
(default 2), and is timed three ways on the same N photos (JPEG bytes from the products Parquet):

* ``batch 1``      decode + embed one photo at a time: latency per photo;
* ``batched``      decode 64 photos (512 for the baselines), embed them, repeat: serial;
* ``pipelined``    decode + resize in 2 reader threads while the model runs (the reader ->
                   mapper pieces of ``lookalike.models.cache``, without the disk writes).
                   Its process CPU time per photo is reported too, with ``bound img/s`` =
                   threads / CPU time: what the run would reach with the cores to itself, a
                   figure that stays meaningful when other jobs share the machine.

Variants: ``torch-plain`` (the baseline: the package's network as is, NCHW float input, no_grad),
``torch`` (the library's torch backend: batch norm folded, channels-last, inference_mode),
``onnx-fp32`` and ``onnx-int8`` (ONNX Runtime, uint8 pixels in), at 224 and 112 px; plus the
``pixels`` and ``hsv-histogram`` baselines. ``setup_s`` is the one-time cost of the first embed
(weights, ONNX export and int8 quantisation into a fresh cache folder).

Quality: P@10 (relevant = same article_type, also sub_category) of each precision option with
the test photos as queries and the train photos as gallery (the whole split by default; the first
Q and G with ``--queries``/``--gallery``), to check that the default stays within 0.5 point of
fp32 on the CPU it runs on (resize policy: the default, stretch). Rows: ``fp32``; ``int8`` forced
(the quantised model whatever this CPU's self-check says: what int8 itself costs here); and
``default`` (what ``precision="int8"`` resolves to after the self-check, with its verdict). Each
row has the cosine of its vectors to fp32's (min / 1st and 5th percentile / mean).
``--policies`` adds int8 runs of the other resize policies (pad on white, centre crop).
Results: benchmarks/results/embed_speed.json (``embed_speed-quick.json`` with ``--quick``,
``-speed`` added with ``--no-quality``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import peak_rss_mb, print_table, write_results  # noqa: E402



# ---- data -----------------------------------------------------------------------------------
def load_rows(split: str, count: int, columns: tuple[str, ...] = ()) -> Any:
    import pandas as pd

    from lookalike.catalogue.sources import require_products_parquet

    table = pd.read_parquet(require_products_parquet(), columns=["split", "image_jpeg", *columns])
    table = table[table["split"] == split]
    return (table.head(count) if count else table).reset_index(drop=True)


def decode(blob: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(blob)).convert("RGB")


# ---- embedders under test -------------------------------------------------------------------
class PlainTorch:
    """The baseline: the package's network as published, eager, NCHW float input, no_grad."""

    batch_size = 64

    def __init__(self, image_size: int) -> None:
        from lookalike.models.efficientnet import EfficientNetLite0Embedder

        self.reference = EfficientNetLite0Embedder(image_size=image_size, backend="torch",
                                                   precision="fp32")
        self.net = self.reference.network()
        self.prepare = self.reference.prepare
        self.dim = 1280

    def embed_prepared(self, items: list[np.ndarray]) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.stack(items).astype(np.float32).transpose(0, 3, 1, 2).copy())
        with torch.no_grad():
            features = self.net.extract_features(x / 127.5 - 1.0).mean(dim=(2, 3)).numpy()
        return features / np.linalg.norm(features, axis=1, keepdims=True)

    def embed(self, images: list, batch_size: int = 64) -> np.ndarray:
        return self.embed_prepared([self.prepare(image) for image in images])


def make(variant: str, size: int, threads: int, cache_dir: str):
    from lookalike.models.base import create

    if variant == "torch-plain":
        return PlainTorch(size)
    if variant in ("pixels", "hsv-histogram"):
        return create(variant)
    backend, precision = {"torch": ("torch", "fp32"), "onnx-fp32": ("onnx", "fp32"),
                          "onnx-int8": ("onnx", "int8")}[variant]
    # onnx-int8 is the quantised model whatever this CPU's self-check says: what is measured
    return create("efficientnet-lite0", image_size=size, backend=backend, precision=precision,
                  num_threads=threads, cache_dir=cache_dir, check_int8=False)


# ---- one worker = one variant in a fresh process --------------------------------------------
def time_variant(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from lookalike.models.cache import EmbedMapper, read_items

    torch.set_num_threads(spec["threads"])  # benchmarks set threads explicitly; the library never
    blobs = list(load_rows("train", spec["n"])["image_jpeg"])
    start = time.perf_counter()
    model = make(spec["variant"], spec["size"], spec["threads"], spec["cache_dir"])
    model.embed([decode(b) for b in blobs[:2]])  # weights, ONNX export / quantisation, warm-up
    setup = time.perf_counter() - start
    batch = spec.get("batch", 64)

    start = time.perf_counter()
    for i in range(0, len(blobs), batch):
        model.embed([decode(b) for b in blobs[i:i + batch]], batch_size=batch)
    serial = time.perf_counter() - start

    singles = blobs[: spec["n_single"]]
    start = time.perf_counter()
    for blob in singles:
        model.embed([decode(blob)])
    single = time.perf_counter() - start

    keys = [str(i) for i in range(len(blobs))]
    mapper = EmbedMapper(model)
    cpu_start = time.process_time()  # all threads of this process: robust on a busy machine
    start = time.perf_counter()
    pending_keys, pending_items = [], []
    for key, item in read_items(keys, lambda k: decode(blobs[int(k)]), model.prepare, workers=2,
                                prefetch=2 * batch):
        pending_keys.append(key)
        pending_items.append(item)
        if len(pending_keys) == batch:
            mapper({"key": pending_keys, "item": pending_items})
            pending_keys, pending_items = [], []
    if pending_keys:
        mapper({"key": pending_keys, "item": pending_items})
    piped = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    n = len(blobs)
    return {"variant": spec["variant"], "size": spec["size"] or None, "n": n,
            "batch1_ms": 1000 * single / len(singles), "batch1_img_s": len(singles) / single,
            "batch": batch, "batched_img_s": n / serial, "batched_ms": 1000 * serial / n,
            "pipelined_img_s": n / piped, "pipelined_cpu_ms": 1000 * cpu / n,
            "cpu_bound_img_s": spec["threads"] * n / cpu if cpu else None,
            "setup_s": setup, "peak_rss_mb": peak_rss_mb()}


def quality_variant(spec: dict[str, Any]) -> dict[str, Any]:
    """P@10 of one efficientnet setting on Q test queries x G train gallery photos."""
    import torch

    from lookalike.models.base import create
    from lookalike.models.cache import EmbedMapper, read_items

    torch.set_num_threads(spec["threads"])
    columns = ("article_type", "sub_category")
    queries = load_rows("test", spec["queries"], columns)
    gallery = load_rows("train", spec["gallery"], columns)
    option = spec["precision"]
    model = create("efficientnet-lite0", image_size=spec["size"],
                   precision="fp32" if option == "fp32" else "int8",
                   resize=spec["resize"], num_threads=spec["threads"], cache_dir=spec["cache_dir"])
    verdict = model.int8_verdict() if option != "fp32" else None
    if option == "int8":  # forced: the quantised model whatever the self-check says
        model = create("efficientnet-lite0", image_size=spec["size"], precision="int8",
                       resize=spec["resize"], num_threads=spec["threads"],
                       cache_dir=spec["cache_dir"], check_int8=False)
    if spec.get("resolve_only"):
        return {"embedder_id": model.embedder_id, "effective_precision": model.effective_precision,
                "self_check": verdict.to_json() if verdict else None}
    blobs = list(queries["image_jpeg"]) + list(gallery["image_jpeg"])
    model.embed([decode(blobs[0])])  # build the ONNX file outside the timing
    mapper = EmbedMapper(model)
    start = time.perf_counter()
    out, keys, items = [], [], []
    for key, item in read_items([str(i) for i in range(len(blobs))],
                                lambda k: decode(blobs[int(k)]), model.prepare, workers=2):
        keys.append(key)
        items.append(item)
        if len(keys) == 64:
            out.append(mapper({"key": keys, "item": items})["vector"])
            keys, items = [], []
    if keys:
        out.append(mapper({"key": keys, "item": items})["vector"])
    seconds = time.perf_counter() - start
    vectors = np.concatenate(out)
    q, g = vectors[: len(queries)], vectors[len(queries):]
    row = {"size": spec["size"], "precision": option, "resize": spec["resize"],
           "effective_precision": model.effective_precision, "embedder_id": model.embedder_id,
           "self_check": verdict.to_json() if verdict else None,
           "queries": len(queries), "gallery": len(gallery), "img_s": len(blobs) / seconds}
    for column in columns:
        row[f"P@10 {column}"] = precision_at_10(q, g, queries[column].to_numpy(),
                                                gallery[column].to_numpy())
    np.save(Path(spec["cache_dir"]) / f"vectors-{spec['size']}-{spec['precision']}-"
            f"{spec['resize']}.npy", vectors)
    return row


def quality_row(spec: dict[str, Any], done: list[dict[str, Any]], cache_dir: Path
                ) -> dict[str, Any]:
    """Run one quality setting, or copy an earlier row whose embedder makes the same vectors
    (same embedder id and resize: e.g. ``default`` where the self-check chose int8)."""
    import shutil

    resolved = run_worker("quality", {**spec, "resolve_only": True})
    same = next((r for r in done if r["embedder_id"] == resolved["embedder_id"]
                 and r["resize"] == spec["resize"]), None)
    if same is None:
        return run_worker("quality", spec)
    shutil.copyfile(cache_dir / f"vectors-{spec['size']}-{same['precision']}-{spec['resize']}.npy",
                    cache_dir / f"vectors-{spec['size']}-{spec['precision']}-{spec['resize']}.npy")
    return {**same, **resolved, "precision": spec["precision"], "same_vectors_as": same["precision"]}


def add_agreement(row: dict[str, Any], quality: list[dict[str, Any]], cache_dir: Path) -> None:
    """Cosine of ``row``'s vectors to fp32's (same size and resize) and its P@10 drop."""
    base = next((r for r in quality if (r["size"], r["precision"], r["resize"]) ==
                 (row["size"], "fp32", row["resize"])), None)
    if base is None or row is base:
        return
    fp32 = np.load(cache_dir / f"vectors-{row['size']}-fp32-{row['resize']}.npy")
    vectors = np.load(cache_dir / f"vectors-{row['size']}-{row['precision']}-{row['resize']}.npy")
    cosine = (fp32 * vectors).sum(axis=1)
    row.update(cos_vs_fp32_min=float(cosine.min()), cos_vs_fp32_mean=float(cosine.mean()),
               cos_vs_fp32_p1=float(np.percentile(cosine, 1)),
               cos_vs_fp32_p5=float(np.percentile(cosine, 5)))
    row["P@10 drop vs fp32 (points)"] = 100 * (base["P@10 article_type"] -
                                               row["P@10 article_type"])


def precision_at_10(queries: np.ndarray, gallery: np.ndarray, query_labels: np.ndarray,
                    gallery_labels: np.ndarray, block: int = 1024) -> float:
    """Mean share of same-label photos among each query's 10 nearest (cosine) gallery photos."""
    hits = []
    for start in range(0, len(queries), block):
        scores = queries[start:start + block] @ gallery.T
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        hits.append((gallery_labels[top] == query_labels[start:start + block, None]).mean(axis=1))
    return float(np.concatenate(hits).mean())


def run_worker(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    # A private shared-cache folder, so setup_s includes building the ONNX files.
    env = dict(os.environ, LOOKALIKE_CACHE_DIR=spec["cache_dir"])
    done = subprocess.run([sys.executable, __file__, "--worker", kind, json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"worker {kind} {spec.get('variant', '')} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(speed: list[dict[str, Any]], quality: list[dict[str, Any]], threads: int,
           queries: int, gallery: int) -> None:
    """Print the two tables; adds ``x_vs_torch_plain`` to ``speed``: pipelined img/s over plain
    torch's pipelined img/s at the same size, in the same run (like against like)."""
    os.environ.setdefault("COLUMNS", "150")  # Rich wraps at 80 columns when not on a terminal
    plain = {r["size"]: r["pipelined_img_s"] for r in speed if r["variant"] == "torch-plain"}
    for row in speed:
        row["x_vs_torch_plain"] = (row["pipelined_img_s"] / plain[row["size"]]
                                   if row["size"] in plain else None)
    print_table(f"Embedding speed, {threads} threads, JPEG decode included (baseline: "
                "torch-plain, same run)",
                [{"variant": r["variant"], "px": r["size"], "n": r["n"],
                  "batch1 ms": r["batch1_ms"], "batch1 img/s": r["batch1_img_s"],
                  "batch": r["batch"], "batched img/s": r["batched_img_s"],
                  "pipelined img/s": r["pipelined_img_s"],
                  "CPU ms/img": r.get("pipelined_cpu_ms"),
                  "bound img/s": r.get("cpu_bound_img_s"), "x plain": r["x_vs_torch_plain"],
                  "setup s": r["setup_s"], "peak RSS MB": r["peak_rss_mb"]} for r in speed])
    print_table(f"P@10 on {queries} test queries x {gallery} train photos",
                [{"px": r["size"], "precision": r["precision"], "resize": r["resize"],
                  "P@10 article_type": r["P@10 article_type"],
                  "P@10 sub_category": r["P@10 sub_category"],
                  "drop vs fp32 (points)": r.get("P@10 drop vs fp32 (points)"),
                  "used": r.get("effective_precision"),
                  "cos vs fp32 min/p1/p5/mean": (
                      f"{r['cos_vs_fp32_min']:.3f} / {r['cos_vs_fp32_p1']:.3f} / "
                      f"{r['cos_vs_fp32_p5']:.3f} / {r['cos_vs_fp32_mean']:.4f}"
                      if "cos_vs_fp32_min" in r else None),
                  "img/s": r["img_s"]} for r in quality])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=None, help="photos per speed run (default 512)")
    parser.add_argument("--quick", action="store_true", help="N=128, fewer variants, 500 queries")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=None,
                        help="test photos for P@10 (default: all; 500 with --quick)")
    parser.add_argument("--gallery", type=int, default=None,
                        help="train photos for P@10 (default: all; 5,000 with --quick)")
    parser.add_argument("--sizes", default="224,112", help="input sizes, e.g. 112")
    parser.add_argument("--no-speed", action="store_true", help="P@10 only, no speed runs")
    parser.add_argument("--policies", action="store_true", help="also int8 P@10 with pad and crop")
    parser.add_argument("--no-quality", action="store_true", help="speed only, no P@10 runs")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, spec = args.worker[0], json.loads(args.worker[1])
        print(json.dumps((time_variant if kind == "speed" else quality_variant)(spec)))
        return

    n = args.n or (128 if args.quick else 512)
    queries = args.queries if args.queries is not None else (500 if args.quick else 0)
    gallery = args.gallery if args.gallery is not None else (5000 if args.quick else 0)
    sizes = [int(size) for size in args.sizes.split(",")]
    variants = ["torch-plain", "torch", "onnx-fp32", "onnx-int8"]
    speed: list[dict[str, Any]] = []
    quality: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lookalike-embed-speed-") as cache_dir:
        for size in sizes if not args.no_speed else ():
            for variant in variants:
                if args.quick and variant == "torch-plain" and size == 112:
                    continue
                slow = variant.startswith("torch")
                spec = {"variant": variant, "size": size, "threads": args.threads,
                        "n": min(n, 128) if slow and size == 224 else n,
                        "n_single": 16 if slow else 64, "cache_dir": cache_dir}
                speed.append(run_worker("speed", spec))
                print(json.dumps(speed[-1]), flush=True)
        for variant in ("pixels", "hsv-histogram") if not args.no_speed else ():
            spec = {"variant": variant, "size": 0, "threads": args.threads, "n": max(n, 1024),
                    "n_single": 64, "cache_dir": cache_dir, "batch": 512}
            speed.append(run_worker("speed", spec))
            print(json.dumps(speed[-1]), flush=True)

        settings = [(size, precision, "stretch") for size in sizes
                    for precision in ("fp32", "int8", "default")]
        if args.policies:
            settings += [(size, "default", policy) for size in sizes
                         for policy in ("pad", "crop")]
        if args.no_quality:
            settings = []
        for size, precision, resize in settings:
            spec = {"size": size, "precision": precision, "resize": resize, "queries": queries,
                    "gallery": gallery, "threads": args.threads, "cache_dir": cache_dir}
            quality.append(quality_row(spec, quality, Path(cache_dir)))
            print(json.dumps(quality[-1]), flush=True)
        for row in quality:
            add_agreement(row, quality, Path(cache_dir))

    report(speed, quality, args.threads, queries or "all", gallery or "all")
    name = "embed_speed" + ("-quick" if args.quick else "") + ("-speed" if args.no_quality else "")
    name += "-quality" if args.no_speed else ""
    name += "" if args.sizes == "224,112" else "-" + args.sizes.replace(",", "-")
    path = write_results(name, {
        "command": " ".join(["python", "benchmarks/embed_speed.py", *sys.argv[1:]]),
        "threads": args.threads, "n": n, "speed": speed, "quality": quality},
        quick=args.quick, seeds=[])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
