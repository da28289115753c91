"""``finetune_bench.py --select``: choose the fine-tuning config on validation, then train it
with several seeds on the full train split and read the test split once per seed."""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import peak_rss_mb, print_table, write_results
from _learned_common import LEARNED_CACHE, split_pixels
from _protocol import best, summary, validation
from finetune_bench import CANDIDATES, TARGET_P10, accuracy, retrieval

from lookalike.commands.train import parse_option
from lookalike.evaluate.splits import stratified_sample

LAYERS = ("64", "256", "backbone")


def parse_candidate(text: str) -> dict[str, Any]:
    """``"head=cosine,margin=0.2"`` -> ``{"head": "cosine", "margin": 0.2}``."""
    return dict(parse_option(part) for part in text.split(",") if part.strip())


def front_cache(pixels: np.ndarray, name: str, threads: int) -> np.ndarray:
    """fp32 activations of the frozen front (stem + blocks 0-14, ``trainable_blocks=1``) of
    ``pixels``, computed once in ONNX Runtime and kept as a memory-mapped ``.npy``. The front is
    the same for every candidate and seed (it never trains), so this is the whole network's
    expensive part done once; training and evaluation run only the back from here."""
    import tempfile

    import torch

    from lookalike.models.finetune import FinetuneEmbedder
    from lookalike.models.finetune_network import FrontExport, export_onnx, onnx_session

    path = LEARNED_CACHE / f"protocol-front-{name}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    network = FinetuneEmbedder(classes=("x",))._skeleton(packaged_weights=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work, torch.no_grad():
        onnx = Path(work) / "front.onnx"
        export_onnx(FrontExport(network), onnx, 3, (60, 80), ["activations", "features"])
        session = onnx_session(onnx, threads)
        first = session.run(None, {"pixels": pixels[:2]})[0]
        tmp = path.with_name(path.name + ".tmp.npy")
        out = np.lib.format.open_memmap(tmp, "w+", np.float32, (len(pixels), *first.shape[1:]))
        for s in range(0, len(pixels), 64):
            out[s:s + 64] = session.run(None, {"pixels": pixels[s:s + 64]})[0]
            if s % 6400 == 0:
                print(f"front {name}: {s:,}/{len(pixels):,} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
        out.flush()
        del out
    tmp.replace(path)
    return np.load(path, mmap_mode="r")


def quantiser(train_front: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel uint8 ranges as ``extract_front`` sets them (0.05%/99.95% quantiles of a
    seeded sample of 512 training images): ``low`` and ``step``, shaped ``[1, C, 1, 1]``."""
    n = len(train_front)
    sample = np.sort(np.random.default_rng(seed).permutation(n)[:512])
    sampled = np.asarray(train_front[sample])
    per_channel = np.moveaxis(sampled, 1, 0).reshape(sampled.shape[1], -1)
    low = np.quantile(per_channel, 0.0005, axis=1).astype(np.float32)
    high = np.quantile(per_channel, 0.9995, axis=1).astype(np.float32)
    step = np.maximum((high - low) / np.float32(255.0), np.float32(1e-6))
    return low.reshape(1, -1, 1, 1), step.reshape(1, -1, 1, 1)


def _seed_activations(folder: Path, front: np.ndarray, rows: np.ndarray, codes: Any,
                      quant: tuple[np.ndarray, np.ndarray]) -> None:
    """Write the uint8 activation cache ``fit_tensors`` resumes from, for ``rows``."""
    from lookalike.storage import atomic_write_text

    if (folder / "activations.json").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    low, step = quant
    out = np.empty((len(rows), *front.shape[1:]), dtype=np.uint8)
    for s in range(0, len(rows), 2048):
        part = np.asarray(front[rows[s:s + 2048]])
        out[s:s + len(part)] = np.clip(np.rint((part - low) / step), 0, 255).astype(np.uint8)
    tmp = folder / ".activations.npy.tmp"
    with open(tmp, "wb") as handle:
        np.save(handle, out, allow_pickle=False)
    tmp.replace(folder / "activations.npy")
    signature = {"items": len(rows), "shape": [3, 80, 60],
                 "labels_sha": hashlib.sha256(codes.numpy().tobytes()).hexdigest()[:16],
                 "input_size": [120, 160], "split": 15}
    atomic_write_text(folder / "activations.json", json.dumps(
        {"signature": signature, "low": [float(v) for v in low.ravel()],
         "step": [float(v) for v in step.ravel()], "seconds": 0.0}))


def trained(options: dict[str, Any], front: np.ndarray, rows: np.ndarray, labels: list[str],
            quant: tuple[np.ndarray, np.ndarray], threads: int) -> tuple[Any, float]:
    """A FinetuneEmbedder trained with ``options`` on the train items ``rows`` (their labels
    ``labels``), from the shared front cache; cached by options and rows."""
    import torch

    from lookalike.models import base
    from lookalike.models.datasets import ImageTensors
    from lookalike.models.finetune import FinetuneEmbedder

    model_keys = set(inspect.signature(FinetuneEmbedder.__init__).parameters) - {"self"}
    model_options = {k: v for k, v in options.items() if k in model_keys}
    fit_options = {k: v for k, v in options.items() if k not in model_keys}
    rows_key = hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:12]
    key = hashlib.sha256(json.dumps([model_options, fit_options, rows_key, len(front)],
                                    sort_keys=True).encode()).hexdigest()[:10]
    run = LEARNED_CACHE / f"protocol-{key}"
    model_dir = run / "model"
    if not (model_dir / "config.json").is_file():
        classes = sorted(set(labels))
        code_of = {name: i for i, name in enumerate(classes)}
        codes = torch.tensor([code_of[x] for x in labels])
        _seed_activations(run / "checkpoints", front, rows, codes, quant)
        # the pixels are not read again: the activation cache above stands in for them
        blank = torch.zeros((1, 3, 80, 60), dtype=torch.uint8).expand(len(rows), -1, -1, -1)
        data = ImageTensors(blank, codes, tuple(classes))
        model = FinetuneEmbedder(**model_options)
        model.fit_tensors(data, checkpoint_dir=run / "checkpoints", resume=True,
                          threads=threads, progress=False, **fit_options)
        model.save(model_dir)
    model = base.load(model_dir)
    model.num_threads = threads
    result = json.loads((model_dir / "training.json").read_text())
    return model, float(result["seconds"])


def back_layers(model: Any, front: np.ndarray, rows: np.ndarray, threads: int
                ) -> dict[str, np.ndarray]:
    """Every embedding layer and the logits of ``model`` for cached front activations (fp32,
    the trained back of the network in PyTorch: the same function the embedder computes)."""
    import torch

    from lookalike.threads import torch_threads

    network = model.network.eval()
    widths = [str(layer.out_features) for layer in network.head.layers]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ["backbone", *widths, "logits"]}
    with torch_threads(threads), torch.inference_mode():
        for s in range(0, len(rows), 256):
            x = torch.from_numpy(np.ascontiguousarray(front[rows[s:s + 256]]))
            features = network.back(x.contiguous(memory_format=torch.channels_last))
            hidden = network.head.hidden(features)
            for name, value in zip(["backbone", *widths, "logits"],
                                   [features, *hidden, network.head.classifier(hidden[-1])]):
                parts[name].append(value.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def _parallel(jobs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Train ``jobs`` (``{"options", "rows"}``) in parallel child processes, one thread each
    (under the same nice level), so their models are cached before they are evaluated."""
    import subprocess
    import sys

    if args.jobs <= 1 or len(jobs) <= 1:
        return
    script = str(Path(__file__).resolve().parent / "finetune_bench.py")
    pending = list(jobs)
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            job = pending.pop(0)
            command = [sys.executable, script, "--select", "--threads", "1",
                       "--select-items", str(args.select_items), "--train-one", json.dumps(job)]
            if args.limit:
                command += ["--limit", str(args.limit)]
            running.append(subprocess.Popen(command))
        running[0].wait()
        if running[0].returncode:
            raise SystemExit(f"a training job failed ({running[0].args[-1]})")
        running.pop(0)


def select(args: argparse.Namespace, front: np.ndarray, labels: list[str], split: Any,
           quant: tuple[np.ndarray, np.ndarray]) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Validation P@10 / mAP@100 of every candidate at every layer (trained on a stratified
    sample of train-minus-validation, which is also the gallery)."""
    from lookalike.models.base import l2_normalise

    sample = selection_rows(args, labels, split)
    sample_labels = [labels[i] for i in sample]
    val_labels = [labels[i] for i in split.validation]
    candidates = args.candidate or list(CANDIDATES)
    _parallel([{"options": parse_candidate(t) | {"seed": 0}, "rows": "sample"}
               for t in candidates], args)
    rows = []
    for text in candidates:
        model, seconds = trained(parse_candidate(text) | {"seed": 0}, front, sample,
                                 sample_labels, quant, args.threads)
        queries = back_layers(model, front, split.validation, args.threads)
        gallery = back_layers(model, front, sample, args.threads)
        for layer in LAYERS:
            rows.append({"config": text, "layer": layer,
                         **retrieval(l2_normalise(queries[layer]), val_labels,
                                     l2_normalise(gallery[layer]), sample_labels),
                         "train_s": round(seconds, 1)})
        print(f"candidate {text}: trained in {seconds:.0f} s", flush=True)
    return rows, sample


def selection_rows(args: argparse.Namespace, labels: list[str], split: Any) -> np.ndarray:
    fit_labels = [labels[i] for i in split.fit]
    return split.fit[stratified_sample(fit_labels, args.select_items, seed=0)]


def _digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:8]


def _load(args: argparse.Namespace) -> dict[str, Any]:
    """Train labels, the saved validation split, the train front cache and its quantiser; with
    ``--limit`` all of it restricted to a stratified sample of that many train items (quick)."""
    from lookalike.evaluate.splits import ValidationSplit

    train_pixels, train_ids, train_labels = split_pixels("train")
    split, split_path = validation("products", train_ids, train_labels)
    name = "train"
    if args.limit:
        keep = stratified_sample(train_labels, args.limit, seed=0)
        position = np.full(len(train_labels), -1)
        position[keep] = np.arange(len(keep))
        split = ValidationSplit(position[np.intersect1d(keep, split.fit)],
                                position[np.intersect1d(keep, split.validation)],
                                split.seed, split.fraction)
        train_pixels = train_pixels[keep]
        train_labels = [train_labels[i] for i in keep]
        name = f"train-quick{args.limit}-{_digest(keep)}"
    front = front_cache(train_pixels, name, args.threads)
    del train_pixels
    return {"labels": train_labels, "split": split, "split_path": split_path, "front": front,
            "quant": quantiser(front)}


def train_one(args: argparse.Namespace) -> int:
    """A child of :func:`_parallel`: train one job's model into the cache and exit."""
    job = json.loads(args.train_one)
    data = _load(args)
    labels = data["labels"]
    rows = (selection_rows(args, labels, data["split"]) if job["rows"] == "sample"
            else np.arange(len(labels)))
    trained(job["options"], data["front"], rows, [labels[i] for i in rows], data["quant"],
            args.threads)
    return 0


def run_protocol(args: argparse.Namespace) -> int:
    """Select on validation, train the choice with every seed on train, test once per seed."""
    import torch

    from lookalike.models.base import l2_normalise

    if args.train_one:
        return train_one(args)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = _load(args)
    train_labels, split, split_path, front = (data["labels"], data["split"],
                                              data["split_path"], data["front"])
    test_pixels, _, test_labels = split_pixels("test")
    test_name = "test"
    if args.limit:
        queries = stratified_sample(test_labels, max(1, args.limit // 6), seed=0)
        test_pixels, test_labels = test_pixels[queries], [test_labels[i] for i in queries]
        test_name = f"test-quick{args.limit}-{_digest(queries)}"
    test_front = front_cache(test_pixels, test_name, args.threads)
    print(f"products: {len(split.fit):,} train-minus-validation, {len(split.validation):,} "
          f"validation ({split_path.name}), {len(test_labels):,} test", flush=True)
    rows, sample = select(args, front, train_labels, split, data["quant"])
    print_table("validation (choose here)", rows)
    chosen = best(rows)
    options = parse_candidate(chosen["config"])
    layer = chosen["layer"]
    print(f"chosen on validation: {chosen['config']}, layer {layer}", flush=True)

    classes = sorted(set(train_labels))
    code_of = {name: i for i, name in enumerate(classes)}
    test_codes = np.array([code_of.get(x, -1) for x in test_labels])
    known = test_codes >= 0
    everything = np.arange(len(train_labels))
    _parallel([{"options": options | {"seed": seed}, "rows": "full"} for seed in args.seeds],
              args)
    seeds_rows = []
    for seed in args.seeds:
        model, seconds = trained(options | {"seed": seed}, front, everything, train_labels,
                                 data["quant"], args.threads)
        test = back_layers(model, test_front, np.arange(len(test_labels)), args.threads)
        gallery = back_layers(model, front, everything, args.threads)
        top1, top3 = accuracy(test["logits"][known], test_codes[known])
        seeds_rows.append({"seed": seed, "embedder_id": model.with_layer(layer).embedder_id,
                           **retrieval(l2_normalise(test[layer]), test_labels,
                                       l2_normalise(gallery[layer]), train_labels),
                           "top1": top1, "top3": top3, "train_s": round(seconds, 1)})
        print_table(f"test, seed {seed}", seeds_rows[-1:])
    result = {metric: summary([row[metric] for row in seeds_rows])
              for metric in ("P@10", "mAP@100", "top1", "top3", "train_s")}
    print_table(f"test, {len(args.seeds)} seeds (target P@10 >= {TARGET_P10})",
                [{"metric": k, **{m: v for m, v in s.items() if m != "per_seed"}}
                 for k, s in result.items()])
    path = write_results(args.name, {
        "protocol": "choose on validation (10% of train per class, seeded, saved), train the "
                    "choice on the full train split per seed, test queries vs train gallery "
                    "read once per seed (exact cosine); class article_type",
        "computation": "the frozen front (stem + blocks 0-14) runs once over every image "
                       "(ONNX Runtime, fp32, cached); every candidate and seed trains from its "
                       "uint8-quantised copy (one set of ranges, from 512 seeded train images) "
                       "and is evaluated by running its trained back + head on the fp32 front "
                       "(PyTorch) -- the function the saved embedder computes",
        "validation_split": {"file": str(split_path.relative_to(split_path.parents[3])),
                             "seed": split.seed, "fraction": split.fraction,
                             "validation_items": int(len(split.validation)),
                             "fit_items": int(len(split.fit))},
        "selection": {"split": "validation", "chooses": ["config (head, margin)", "layer"],
                      "candidates_trained_on": f"stratified sample of {len(sample):,} "
                                               "train-minus-validation items (also the gallery)",
                      "metric": "P@10", "rows": rows,
                      "chosen": {"config": chosen["config"], "layer": layer}},
        "quick": None if not args.limit else (
            f"train split cut to a stratified sample of {args.limit:,} items (training set and "
            f"gallery; its share of the saved validation split is the validation), "
            f"{len(test_labels):,} stratified test queries"),
        "test": {"split": "test", "read": "once per seed",
                 "trained_on": "full train split" if not args.limit else "the quick train sample",
                 "per_seed": seeds_rows, **result},
        "target_p10": TARGET_P10, "threads": args.threads, "jobs": args.jobs,
        "seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(peak_rss_mb())},
        quick=bool(args.limit), seeds=list(args.seeds))
    print(f"wrote {path}")
    return 0
