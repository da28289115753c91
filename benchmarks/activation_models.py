"""The ``cnn`` embedder once per activation, saved for ``lookalike report`` (its comparison rows).

The activation study (``benchmarks/activation_study.py``) compares validation accuracy curves;
the comparison report needs the trained *embedders* of each activation too, measured for
retrieval like every other model. Same architecture, budget and seed for all six activations:
the default ``cnn`` (three conv blocks 32/64/128, 256 -> 128 dense, dropout 0.3, batch norm,
plain softmax head), trained ``--epochs`` epochs on ``--limit`` train images per dataset,
each capped at ``--max-minutes``. Models are saved (safetensors + JSON) under
``benchmarks/.cache/activation_models/<dataset>/cnn-<activation>/`` (existing ones are kept;
``--retrain`` replaces them), then:

    python benchmarks/activation_models.py                                   # both datasets
    python benchmarks/activation_models.py --datasets fashion-mnist --threads 1   # what we ran,
    python benchmarks/activation_models.py --datasets products --limit 8000 --threads 1  # twice
    lookalike report --models-dir benchmarks/.cache/activation_models ...

Writes ``benchmarks/results/activation_models.json`` (training time, epochs and best validation
accuracy per model).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_results  # noqa: E402
from hash_bench import load  # noqa: E402

from lookalike.models.activations import ACTIVATIONS  # noqa: E402
from lookalike.models.cnn import CNNEmbedder  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache" / "activation_models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist", "products"])
    parser.add_argument("--activations", nargs="+", default=list(ACTIVATIONS))
    parser.add_argument("--limit", type=int, default=12000, help="train images per dataset")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-minutes", type=float, default=4.0, help="cap per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for dataset in args.datasets:
        train, _, _, _, options = load(dataset, args.limit)
        for activation in args.activations:
            folder = CACHE / dataset / f"cnn-{activation}"
            if not (folder / "training.json").is_file() or args.retrain:
                shutil.rmtree(folder, ignore_errors=True)
                model = CNNEmbedder(activation=activation, seed=0, **options)
                model.fit_tensors(train, epochs=args.epochs, max_minutes=args.max_minutes,
                                  threads=args.threads, patience=0, progress=False)
                model.save(folder)
            record = json.loads((folder / "training.json").read_text())
            history = record.get("history", [])
            rows.append({"dataset": dataset, "activation": activation, "folder": str(folder),
                         "train_images": record.get("train_size"),
                         "validation_images": record.get("validation_size"),
                         "epochs": len(history), "stopped": record.get("stopped"),
                         "best_val_accuracy": record.get("best_value"),
                         "train_seconds": round(record.get("seconds", 0.0), 1)})
            print(f"{dataset} {activation}: {rows[-1]['epochs']} epochs, best val accuracy "
                  f"{rows[-1]['best_val_accuracy']}", flush=True)
    print_table("cnn per activation", rows)
    write_results("activation_models", {"settings": vars(args), "models": rows})


if __name__ == "__main__":
    main()
