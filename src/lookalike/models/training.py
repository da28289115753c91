"""A small, reusable training loop for every learned embedder (CNN, hash layer, fine-tuning, ...).

What it guarantees:

- **Validation is carved from the training data** (a seeded, per-class split); the catalogue's
  test split is never seen.
- **Early stopping** on a validation metric, keeping the best epoch's weights.
- **Checkpoints every epoch**: weights, optimizer state and the RNG state in safetensors, the rest
  (epoch, history, early-stopping counters, optimizer hyper-parameters) in JSON. Nothing is
  pickled. ``resume=True`` continues from the last complete epoch and ends with the same history
  as an uninterrupted run under the same seed.
- **Reproducible and free of global side effects**: shuffling uses its own seeded generator per
  epoch, dropout-style randomness runs inside :func:`torch.random.fork_rng`, and the torch thread
  count is set from ``TrainConfig.threads`` for the run only and restored afterwards.

What is trained is a :class:`Task`: it owns the module, the loss and the validation sums, so the
same loop trains a classifier, a hash layer or an autoencoder. Data is an
:class:`~lookalike.models.datasets.ImageTensors` (uint8); the task turns each batch into floats.

The settings live in :mod:`~lookalike.models.train_config`, the tasks in
:mod:`~lookalike.models.tasks` and the checkpoint files in :mod:`~lookalike.models.checkpoints`;
this module re-exports their public names, so ``from lookalike.models.training import ...``
keeps working.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lookalike.models.checkpoints import (
    BEST_WEIGHTS,
    Checkpoints,
    RunState,
    module_tensors,
    resume_state,
    save_epoch,
)
from lookalike.models.datasets import ImageTensors, stratified_split
from lookalike.models.tasks import ClassificationTask, Task
from lookalike.models.train_config import (
    AUGMENTS,
    OPTIMIZERS,
    SCHEDULES,
    TrainConfig,
    TrainingError,
    augment_batch,
    make_optimizer,
)
from lookalike.threads import torch_threads

#: The old private name of :func:`make_optimizer` (tasks written against it keep working).
_optimizer = make_optimizer

__all__ = [
    "AUGMENTS", "BEST_WEIGHTS", "HISTORY_FILE", "OPTIMIZERS", "SCHEDULES", "Checkpoints",
    "ClassificationTask", "Task", "TrainConfig", "TrainResult", "TrainingError", "augment_batch",
    "make_optimizer", "module_tensors", "train", "validate",
]

HISTORY_FILE = "history.json"


# ---- the result ----------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What a run did: one history row per epoch (``epoch``, ``train_loss``, ``val_*``,
    ``learning_rate``, ``seconds``), the best epoch and why it stopped."""

    history: list[dict[str, float]]
    best_epoch: int
    best_value: float
    monitor: str
    stopped: str  # "epochs", "early-stopping" or "time-budget"
    train_size: int
    validation_size: int
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)



# ---- the loop -----------------------------------------------------------------------------------
def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def _improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best + min_delta if mode == "max" else value < best - min_delta


def _run_signature(config: TrainConfig, data: ImageTensors) -> dict[str, Any]:
    """The settings a resumed run must share with the checkpointed one."""
    keep = {k: v for k, v in asdict(config).items()
            if k not in ("epochs", "threads", "progress", "max_minutes", "eval_batch_size")}
    return {"config": keep, "items": len(data), "shape": list(data.images.shape[1:])}


def train(task: Task, data: ImageTensors, config: TrainConfig | None = None,
          checkpoint_dir: str | Path | None = None, resume: bool = False,
          keep_checkpoints: int = 2,
          on_epoch: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train ``task.module`` on ``data`` (a validation share is held out from it).

    With ``checkpoint_dir`` every epoch is checkpointed there and ``history.json`` is written;
    ``resume=True`` continues from the last saved epoch (a fresh start when there is none).
    ``on_epoch`` is called with each epoch's history row after its checkpoint is written.
    At the end the module holds the weights of the best validation epoch.
    """
    config = config or TrainConfig()
    if len(data) < 2:
        raise TrainingError(f"need at least 2 training items, got {len(data)}")
    if resume and checkpoint_dir is None:
        raise TrainingError("resume=True needs a checkpoint_dir")
    with torch_threads(config.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return _train(task, data, config, checkpoint_dir, resume, keep_checkpoints, on_epoch)



def _train(task: Task, data: ImageTensors, config: TrainConfig,
           checkpoint_dir: str | Path | None, resume: bool, keep: int,
           on_epoch: Callable[[dict[str, float]], None] | None) -> TrainResult:
    started = time.perf_counter()
    deadline = math.inf if config.max_minutes is None else started + 60.0 * config.max_minutes
    train_rows, val_rows = stratified_split(data.labels, len(data), config.validation_fraction,
                                            config.seed)
    if len(val_rows) == 0:
        raise TrainingError(f"{len(data)} items are too few to hold out a validation share of "
                            f"{config.validation_fraction}")
    # Training batches index the full uint8 tensor (no copy of 90% of it); validation is small.
    train_index = torch.as_tensor(train_rows, dtype=torch.int64)
    val_part = data.subset(val_rows)
    optimizers = task.make_optimizers(config)
    checkpoints = Checkpoints(checkpoint_dir, keep) if checkpoint_dir is not None else None
    signature = _run_signature(config, data)
    state = RunState()
    if resume and checkpoints is not None:
        state = resume_state(checkpoints, task, optimizers, signature, config.epochs)

    show = sys.stderr.isatty() if config.progress is None else config.progress
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                        disable=not show, transient=True)
    with progress:
        bar = progress.add_task("training", total=config.epochs * len(train_index),
                                completed=state.start_epoch * len(train_index), status="")
        epoch_run = _EpochRun(task, data, train_index, optimizers, config, deadline,
                              lambda advance, status: progress.update(bar, advance=advance,
                                                                      status=status))
        for epoch in range(state.start_epoch, config.epochs):
            epoch_started = time.perf_counter()
            learning_rate = config.learning_rate_at(epoch)
            loss_mean, seen = epoch_run(epoch, learning_rate)
            row = {"epoch": epoch + 1, "train_loss": loss_mean,
                   **validate(task, val_part, config.eval_batch_size),
                   "learning_rate": learning_rate,
                   "seconds": round(time.perf_counter() - epoch_started, 3)}
            if seen < len(train_index):
                row["trained_fraction"] = round(seen / len(train_index), 4)
            value = _record(state, row, task, checkpoints, config)
            elapsed = state.elapsed_before + time.perf_counter() - started
            if config.patience and state.bad_epochs >= config.patience:
                state.stopped = "early-stopping"
            elif time.perf_counter() > deadline:
                state.stopped = "time-budget"  # of this call: a resumed run gets a fresh budget
            if checkpoints is not None:
                save_epoch(checkpoints, task, optimizers, epoch + 1, signature, state, elapsed,
                           config)
            progress.update(bar, status=f"epoch {epoch + 1} {config.monitor} {value:.4f}")
            if on_epoch is not None:
                on_epoch(dict(row))
            if state.stopped != "epochs":
                break
    return _finish(task, state, config, len(train_index), len(val_part), checkpoints,
                   state.elapsed_before + time.perf_counter() - started)


@dataclass
class _EpochRun:
    """One pass over the training rows (seeded order and augmentation): the mean training loss
    and how many rows were seen (fewer when the time budget ran out mid-epoch)."""

    task: Task
    data: ImageTensors
    train_index: torch.Tensor
    optimizers: list[torch.optim.Optimizer]
    config: TrainConfig
    deadline: float
    update: Callable[[int, str], Any]

    def __call__(self, epoch: int, learning_rate: float) -> tuple[float, int]:
        config, data = self.config, self.data
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        self.task.module.train()
        loss_sum, seen = 0.0, 0
        for batch in _batches(len(self.train_index), config.batch_size, generator):
            rows = self.train_index[batch]
            inputs = self.task.prepare(data.images[rows])
            inputs = augment_batch(inputs, config, generator)
            labels = None if data.labels is None else data.labels[rows]
            loss = self.task.training_step(inputs, labels, self.optimizers)
            if not math.isfinite(loss):
                raise TrainingError(f"the training loss became {loss} in epoch {epoch + 1}; "
                                    "lower the learning rate")
            loss_sum += loss * len(rows)
            seen += len(rows)
            self.update(len(rows), f"epoch {epoch + 1} loss {loss_sum / seen:.4f}")
            if time.perf_counter() > self.deadline:
                break  # the budget is a promise: finish this epoch early, then stop
        return loss_sum / seen, seen


def _record(state: RunState, row: dict[str, float], task: Task, checkpoints: Checkpoints | None,
            config: TrainConfig) -> float:
    """Append the epoch's row and update the early-stopping state; returns the monitored value."""
    state.history.append(row)
    if config.monitor not in row:
        raise TrainingError(f"monitor {config.monitor!r} is not measured; available: "
                            f"{', '.join(k for k in row if k.startswith('val_'))}")
    value = float(row[config.monitor])
    if _improved(value, state.best_value, config.mode, config.min_delta):
        state.best_value, state.best_epoch, state.bad_epochs = value, row["epoch"], 0
        state.best_weights = module_tensors(task.module)
        if checkpoints is not None:
            checkpoints.save_best(state.best_weights)
    else:
        state.bad_epochs += 1
    return value


def _finish(task: Task, state: RunState, config: TrainConfig, train_size: int,
            validation_size: int, checkpoints: Checkpoints | None, seconds: float
            ) -> TrainResult:
    """Load the best epoch's weights, write ``history.json`` and return the result."""
    if state.best_weights is not None:
        task.module.load_state_dict(state.best_weights)
    task.module.eval()
    best = state.best_value
    result = TrainResult(history=state.history, best_epoch=state.best_epoch,
                         best_value=float("nan") if best is None else float(best),
                         monitor=config.monitor, stopped=state.stopped, train_size=train_size,
                         validation_size=validation_size, seconds=round(seconds, 3),
                         config=asdict(config))
    if checkpoints is not None:
        from lookalike.storage import atomic_write_text

        atomic_write_text(checkpoints.folder / HISTORY_FILE,
                          json.dumps(result.to_json(), indent=1))
    return result


@torch.no_grad()
def validate(task: Task, data: ImageTensors, batch_size: int = 512) -> dict[str, float]:
    """Mean validation numbers (``val_<key>``) of ``task`` over ``data``, in eval mode."""
    was_training = task.module.training
    task.module.eval()
    sums: dict[str, float] = {}
    for rows in _batches(len(data), batch_size, None):
        labels = None if data.labels is None else data.labels[rows]
        for key, value in task.validation_sums(task.prepare(data.images[rows]), labels).items():
            sums[key] = sums.get(key, 0.0) + value
    task.module.train(was_training)
    return {f"val_{key}": value / max(1, len(data)) for key, value in sums.items()}

