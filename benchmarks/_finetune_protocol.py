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
from finetune_bench import CANDIDATES, TARGET_P10, accuracy, all_layers, retrieval

from lookalike.commands.train import parse_option
from lookalike.evaluate.splits import stratified_sample

LAYERS = ("64", "256", "backbone")


def parse_candidate(text: str) -> dict[str, Any]:
    """``"head=cosine,margin=0.2"`` -> ``{"head": "cosine", "margin": 0.2}``."""
    return dict(parse_option(part) for part in text.split(",") if part.strip())


def trained(options: dict[str, Any], pixels: np.ndarray, labels: list[str], threads: int,
            fresh: bool) -> tuple[Any, Path, float]:
    """A FinetuneEmbedder trained with ``options`` on ``pixels``/``labels``, cached by both."""
    import torch

    from lookalike.models import base
    from lookalike.models.datasets import ImageTensors
    from lookalike.models.finetune import FinetuneEmbedder

    model_keys = set(inspect.signature(FinetuneEmbedder.__init__).parameters) - {"self"}
    model_options = {k: v for k, v in options.items() if k in model_keys}
    fit_options = {k: v for k, v in options.items() if k not in model_keys}
    data_key = hashlib.sha256("\n".join(labels).encode() + pixels[:, :, ::7, ::7].tobytes()
                              ).hexdigest()[:12]
    key = hashlib.sha256(json.dumps([model_options, fit_options, data_key, len(labels)],
                                    sort_keys=True).encode()).hexdigest()[:10]
    run = LEARNED_CACHE / f"protocol-{key}"
    model_dir = run / "model"
    if (model_dir / "config.json").is_file() and not fresh:
        model = base.load(model_dir)
    else:
        classes = sorted(set(labels))
        code_of = {name: i for i, name in enumerate(classes)}
        data = ImageTensors(torch.from_numpy(pixels),
                            torch.tensor([code_of[x] for x in labels]), tuple(classes))
        model = FinetuneEmbedder(**model_options)
        model.fit_tensors(data, checkpoint_dir=run / "checkpoints", resume=not fresh,
                          threads=threads, progress=False, **fit_options)
        model.save(model_dir)
    model.num_threads = threads
    result = json.loads((model_dir / "training.json").read_text())
    return model, run, float(result["seconds"])


def select(args: argparse.Namespace, pixels: np.ndarray, labels: list[str], split: Any
           ) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Validation P@10 / mAP@100 of every candidate at every layer (trained on a stratified
    sample of train-minus-validation, which is also the gallery)."""
    from lookalike.models.base import l2_normalise

    fit_labels = [labels[i] for i in split.fit]
    sample = split.fit[stratified_sample(fit_labels, args.select_items, seed=0)]
    sample_labels = [labels[i] for i in sample]
    val_labels = [labels[i] for i in split.validation]
    rows = []
    for text in args.candidate or CANDIDATES:
        started = time.perf_counter()
        model, run, seconds = trained(parse_candidate(text) | {"seed": 0}, pixels[sample],
                                      sample_labels, args.threads, args.fresh)
        queries = all_layers(model, pixels[split.validation], run / "validation.npz")
        gallery = all_layers(model, pixels[sample], run / "gallery.npz")
        for layer in LAYERS:
            rows.append({"config": text, "layer": layer,
                         **retrieval(l2_normalise(queries[layer]), val_labels,
                                     l2_normalise(gallery[layer]), sample_labels),
                         "train_s": round(seconds, 1)})
        print(f"candidate {text}: {time.perf_counter() - started:.0f} s", flush=True)
    return rows, sample


def run_protocol(args: argparse.Namespace) -> int:
    """Select on validation, train the choice with every seed on train, test once per seed."""
    import torch

    from lookalike.models.base import l2_normalise

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    train_pixels, train_ids, train_labels = split_pixels("train")
    test_pixels, _, test_labels = split_pixels("test")
    split, split_path = validation("products", train_ids, train_labels)
    print(f"products: {len(split.fit):,} train-minus-validation, {len(split.validation):,} "
          f"validation ({split_path.name}), {len(test_labels):,} test", flush=True)
    rows, sample = select(args, train_pixels, train_labels, split)
    print_table("validation (choose here)", rows)
    chosen = best(rows)
    options = parse_candidate(chosen["config"])
    print(f"chosen on validation: {chosen['config']}, layer {chosen['layer']}", flush=True)

    classes = sorted(set(train_labels))
    code_of = {name: i for i, name in enumerate(classes)}
    test_codes = np.array([code_of.get(x, -1) for x in test_labels])
    known = test_codes >= 0
    seeds_rows = []
    for seed in args.seeds:
        model, run, seconds = trained(options | {"seed": seed}, train_pixels, train_labels,
                                      args.threads, args.fresh)
        test = all_layers(model, test_pixels, run / "test.npz")
        gallery = all_layers(model, train_pixels, run / "train.npz")
        top1, top3 = accuracy(test["logits"][known], test_codes[known])
        layer = chosen["layer"]
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
        "validation_split": {"file": str(split_path.relative_to(split_path.parents[2])),
                             "seed": split.seed, "fraction": split.fraction,
                             "validation_items": int(len(split.validation)),
                             "fit_items": int(len(split.fit))},
        "selection": {"split": "validation", "chooses": ["config (head, margin)", "layer"],
                      "candidates_trained_on": f"stratified sample of {len(sample):,} "
                                               "train-minus-validation items (also the gallery)",
                      "metric": "P@10", "rows": rows,
                      "chosen": {"config": chosen["config"], "layer": chosen["layer"]}},
        "test": {"split": "test", "read": "once per seed", "per_seed": seeds_rows, **result},
        "target_p10": TARGET_P10, "threads": args.threads,
        "seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(peak_rss_mb())},
        quick=False, seeds=list(args.seeds))
    print(f"wrote {path}")
    return 0
