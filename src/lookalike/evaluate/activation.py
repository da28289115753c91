"""Paper 000's activation study (Table 2 / Fig. 5) for the report: read it, or re-run it bounded.

The study trains the same CNN (:class:`lookalike.models.cnn.ConvNet`, no batch norm, the tested
activation in every layer) with the same budget and seed for each of the six activations and
records validation accuracy per epoch. ``benchmarks/activation_study.py`` is the full
benchmark; :func:`load_activation_results` reads its JSON, and :func:`run_activation_study` runs
the same protocol in-process with a fixed budget (epochs x images, and a wall-clock cap per
training) so ``lookalike report --activation-study`` always ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lookalike.errors import LookalikeError

DATASETS = ("mnist", "fashion-mnist", "products")
#: (epochs, images per dataset) of a re-run; the full budget is the published run's.
QUICK_BUDGET = (2, 600)
FULL_BUDGET = (5, 3000)
#: Wall-clock cap of each training (it stops after the epoch that crosses it).
MAX_MINUTES_PER_RUN = 3.0


def load_activation_results(path: str | Path) -> dict[str, Any]:
    """The JSON written by ``benchmarks/activation_study.py`` (or by :func:`run_activation_study`)
    as ``{"source", "settings", "table", "winners", "curves"}``; a clear error when it is not."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LookalikeError(f"{path}: no such activation study results file") from None
    except (OSError, ValueError) as error:
        raise LookalikeError(f"{path}: not readable as JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("table"), list):
        raise LookalikeError(f"{path}: not activation study results (no 'table' list)")
    return {"source": str(path), "settings": data.get("settings", {}), "table": data["table"],
            "winners": data.get("winners") or _winners(data["table"]),
            "curves": _curves(data.get("runs", []), data["table"]),
            "when": (data.get("machine") or {}).get("when")}


def _winners(table: Sequence[dict[str, Any]]) -> dict[str, str]:
    best: dict[str, dict[str, Any]] = {}
    for row in table:
        if row["dataset"] not in best or row["best"] > best[row["dataset"]]["best"]:
            best[row["dataset"]] = row
    return {dataset: row["activation"] for dataset, row in best.items()}


def _curves(runs: Sequence[dict[str, Any]], table: Sequence[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """(dataset, activation, epoch, val_accuracy) points, from the runs' histories or, when the
    file has none, from the table's ``epoch N`` columns."""
    if runs:
        return [{"dataset": r["dataset"], "activation": r["activation"], "epoch": h["epoch"],
                 "val_accuracy": h["val_accuracy"]} for r in runs for h in r["history"]]
    return [{"dataset": row["dataset"], "activation": row["activation"],
             "epoch": int(key.split()[1]), "val_accuracy": value}
            for row in table for key, value in row.items() if key.startswith("epoch ")]


def run_activation_study(datasets: Sequence[str] = DATASETS,
                         activations: Sequence[str] | None = None, quick: bool = False,
                         threads: int = 2, seed: int = 0, epochs: int | None = None,
                         limit: int | None = None,
                         log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train the study's CNN once per (dataset, activation) with the same budget and seed.

    Budget: ``QUICK_BUDGET`` or ``FULL_BUDGET`` (epochs, images per dataset) unless ``epochs``
    / ``limit`` are given, each training capped at ``MAX_MINUTES_PER_RUN``. Returns what
    :func:`load_activation_results` returns.
    """
    import torch

    from lookalike.models.activations import ACTIVATIONS
    from lookalike.models.cnn import ConvNet
    from lookalike.models.datasets import channel_stats
    from lookalike.models.training import ClassificationTask, TrainConfig, train

    budget = QUICK_BUDGET if quick else FULL_BUDGET
    epochs, limit = epochs or budget[0], limit or budget[1]
    activations = tuple(activations or ACTIVATIONS)
    settings = {"datasets": list(datasets), "activations": list(activations), "epochs": epochs,
                "limit": limit, "top_classes": 10, "batch_size": 64, "learning_rate": 1e-3,
                "channels": [32, 64, 128], "hidden": 256, "embedding_dim": 128, "dropout": 0.3,
                "batch_norm": False, "seed": seed, "threads": threads,
                "max_minutes_per_run": MAX_MINUTES_PER_RUN}
    table: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for dataset in datasets:
        data = _study_data(dataset, limit, seed)
        mean, std = channel_stats(data.images, seed=seed)
        for activation in activations:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # the same initial weights for every activation
                module = ConvNet(data.channels, data.size, len(data.classes),
                                 conv_channels=(32, 64, 128), hidden=256, embedding_dim=128,
                                 activation=activation, batch_norm=False, dropout=0.3)
            config = TrainConfig(epochs=epochs, batch_size=64, learning_rate=1e-3, patience=0,
                                 seed=seed, threads=threads, max_minutes=MAX_MINUTES_PER_RUN,
                                 progress=False)
            started = time.perf_counter()
            result = train(ClassificationTask(module, mean, std), data, config)
            seconds = time.perf_counter() - started
            accuracies = [row["val_accuracy"] for row in result.history]
            runs.append({"dataset": dataset, "activation": activation,
                         "history": result.history, "seconds": seconds})
            table.append({"dataset": dataset, "activation": activation,
                          **{f"epoch {row['epoch']}": row["val_accuracy"]
                             for row in result.history},
                          "best": max(accuracies), "seconds": round(seconds, 1)})
            if log:
                log(f"activation study {dataset} {activation}: best {max(accuracies):.3f} "
                    f"({seconds:.0f} s)")
    return {"source": "lookalike report --activation-study", "settings": settings,
            "table": table, "winners": _winners(table), "curves": _curves(runs, table),
            "when": time.strftime("%Y-%m-%d %H:%M:%S")}


def _study_data(dataset: str, limit: int, seed: int) -> Any:
    from lookalike.models import datasets as d

    if dataset == "fashion-mnist":
        return d.fashion_mnist_tensors("train", limit=limit, seed=seed)
    if dataset == "mnist":
        return d.mnist_digits_tensors(limit=limit, seed=seed)
    if dataset == "products":
        from lookalike.catalogue.sources import load_products_frame

        frame = d.top_classes_frame(load_products_frame(split="train"), "article_type", 10)
        if limit < len(frame):
            frame = frame.sample(n=limit, random_state=seed)
        return d.frame_tensors(frame, "article_type")
    raise LookalikeError(f"unknown activation study dataset {dataset!r}; use "
                         f"{', '.join(DATASETS)}")
