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
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lookalike.errors import LookalikeError
from lookalike.models.datasets import ImageTensors, stratified_split, to_float
from lookalike.models.heads import margin_loss
from lookalike.threads import torch_threads

HISTORY_FILE = "history.json"
BEST_WEIGHTS = "best.safetensors"


class TrainingError(LookalikeError):
    """A training run cannot start or continue (bad settings, incompatible checkpoint)."""


AUGMENTS = ("none", "flip", "shift", "flip+shift")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
#: Fields the run sets itself (the model's seed, the CLI's progress display), not user settings.
_RUN_FIELDS = ("seed", "progress")


@dataclass
class TrainConfig:
    """Settings of one training run. Every field is JSON-able and saved with checkpoints."""

    #: Allowed values of the fields that take a name.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "mode": ("max", "min"),
        "augment": AUGMENTS}

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    #: ``adam``, ``adamw`` or ``sgd`` (with ``momentum``).
    optimizer: str = "adamw"
    momentum: float = 0.9
    #: ``cosine`` (decay to 0 over ``epochs``, computed from the epoch number) or ``constant``.
    schedule: str = "cosine"
    #: Share of the training data held out (per class) for validation.
    validation_fraction: float = 0.1
    #: The validation number early stopping watches (a key of the history rows) and its goal.
    monitor: str = "val_accuracy"
    mode: str = "max"
    #: Epochs without improvement before stopping; 0 never stops early.
    patience: int = 3
    min_delta: float = 0.0
    seed: int = 0
    #: torch threads for this run (restored afterwards); None leaves the current setting.
    threads: int | None = 2
    #: ``flip`` mirrors half of every batch left-right; ``shift`` moves every image by up to
    #: ``shift_pixels`` in x and y (edges repeated); ``flip+shift`` does both; ``none`` trains on
    #: the pixels as given.
    augment: str = "none"
    shift_pixels: int = 2
    #: Wall-clock budget of this call (None: none). Checked after every batch: when it runs out
    #: mid-epoch the epoch ends there, is validated, and training stops ("time-budget"), so a
    #: run overshoots by one batch and one validation pass at most.
    max_minutes: float | None = None
    eval_batch_size: int = 512
    #: Rich progress display: None shows it only on a terminal.
    progress: bool | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.optimizer in OPTIMIZERS,
             f"optimizer must be adam, adamw or sgd, got {self.optimizer!r}"),
            (self.schedule in SCHEDULES,
             f"schedule must be cosine or constant, got {self.schedule!r}"),
            (self.mode in ("max", "min"), f"mode must be max or min, got {self.mode!r}"),
            (self.augment in AUGMENTS,
             f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}"),
            (self.shift_pixels >= 0, f"shift_pixels must be >= 0, got {self.shift_pixels}"),
            (0.0 < self.validation_fraction < 1.0,
             f"validation_fraction must be in (0, 1), got {self.validation_fraction}"),
            (self.patience >= 0, f"patience must be >= 0, got {self.patience}"),
            (self.max_minutes is None or self.max_minutes > 0,
             f"max_minutes must be > 0 (or None for no budget), got {self.max_minutes}"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingError(message)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainingError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def settings(cls, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every field a user sets, with its default after ``overrides`` (a method's
        ``default_training``); ``seed`` and ``progress`` are left out (the run sets them)."""
        values = {f.name: f.default for f in fields(cls) if f.name not in _RUN_FIELDS}
        values.update({k: v for k, v in (overrides or {}).items() if k not in _RUN_FIELDS})
        return values

    def learning_rate_at(self, epoch: int) -> float:
        """The learning rate of 0-based ``epoch`` (a pure function, so resuming needs no state)."""
        if self.schedule == "constant":
            return self.learning_rate
        return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))



def augment_batch(inputs: torch.Tensor, config: TrainConfig,
                  generator: torch.Generator) -> torch.Tensor:
    """The batch as ``config.augment`` says: mirrored and/or shifted per image, seeded."""
    if "flip" in config.augment:
        flip = torch.rand(len(inputs), generator=generator) < 0.5
        inputs[flip] = inputs[flip].flip(-1)
    pad = config.shift_pixels
    if "shift" in config.augment and pad > 0:
        # One padded copy, then each image is cut at its own offset; replicate padding keeps a
        # product photo's white border white.
        padded = F.pad(inputs, (pad, pad, pad, pad), mode="replicate")
        offsets = torch.randint(0, 2 * pad + 1, (len(inputs), 2), generator=generator)
        height, width = inputs.shape[-2:]
        inputs = torch.stack([padded[i, :, dy:dy + height, dx:dx + width]
                              for i, (dy, dx) in enumerate(offsets.tolist())])
    return inputs


# ---- what is trained ----------------------------------------------------------------------------
class Task:
    """A module plus how to train and validate it. Subclass and override :meth:`loss`.

    ``mean``/``std`` normalise uint8 batches per channel (see :meth:`prepare`).
    """

    def __init__(self, module: nn.Module, mean: list[float], std: list[float]) -> None:
        self.module = module
        self.mean = list(mean)
        self.std = list(std)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> the float input of the module."""
        return to_float(images, self.mean, self.std)

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The training loss of one batch."""
        raise NotImplementedError

    def validation_sums(self, inputs: torch.Tensor, labels: torch.Tensor | None
                        ) -> dict[str, float]:
        """Per-batch *sums* (e.g. summed loss, correct predictions); the trainer divides by the
        number of validation items and names them ``val_<key>``."""
        return {"loss": float(self.loss(inputs, labels)) * len(inputs)}

    def make_optimizers(self, config: TrainConfig) -> list[torch.optim.Optimizer]:
        """One optimizer over all parameters; tasks with several (GANs) override this."""
        return [_optimizer(self.module.parameters(), config)]

    def training_step(self, inputs: torch.Tensor, labels: torch.Tensor | None,
                      optimizers: list[torch.optim.Optimizer]) -> float:
        """One update; returns the batch's loss. Multi-optimizer tasks override this."""
        loss = self.loss(inputs, labels)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        return float(loss.detach())


class ClassificationTask(Task):
    """Cross-entropy on the module's logits; validation reports loss and accuracy.

    The module's ``forward`` must return logits ``[n, classes]``.
    """

    def __init__(self, module: nn.Module, mean: list[float], std: list[float],
                 label_smoothing: float = 0.0, margin_logit: float = 0.0) -> None:
        super().__init__(module, mean, std)
        self.label_smoothing = label_smoothing
        #: CosFace margin in logit units (margin x scale of a cosine head; 0: plain softmax).
        self.margin_logit = float(margin_logit)

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise TrainingError("classification needs labels")
        return margin_loss(self.module(inputs), labels, self.margin_logit, self.label_smoothing)

    def validation_sums(self, inputs: torch.Tensor, labels: torch.Tensor | None
                        ) -> dict[str, float]:
        if labels is None:
            raise TrainingError("classification needs labels")
        logits = self.module(inputs)
        return {"loss": float(F.cross_entropy(logits, labels, reduction="sum")),
                "accuracy": float((logits.argmax(dim=1) == labels).sum())}


def _optimizer(parameters: Any, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.learning_rate, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.learning_rate,
                                weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.learning_rate,
                             weight_decay=config.weight_decay)


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


# ---- checkpoints ----------------------------------------------------------------------------------
def _checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


def _flatten_optimizer(optimizer: torch.optim.Optimizer, prefix: str
                       ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state_dict into tensors (for safetensors) and JSON-able rest."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{param_id}.{key}"] = value.detach().clone().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, prefix: str,
                       tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            param_id, key = name[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(param_id), {})[key] = value
    for param_id, values in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def module_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's parameters and buffers as contiguous CPU tensors (copies)."""
    return {name: value.detach().cpu().clone().contiguous()
            for name, value in module.state_dict().items()}


class Checkpoints:
    """Per-epoch checkpoint files in one folder: ``epoch-NNNN.safetensors`` + ``epoch-NNNN.json``.

    The JSON is written last (atomically), so an epoch counts as saved only when its JSON exists.
    The best weights so far are kept in ``best.safetensors``; older epochs beyond ``keep`` are
    deleted.
    """

    def __init__(self, folder: str | Path, keep: int = 2) -> None:
        self.folder = Path(folder)
        self.keep = max(1, keep)

    def latest(self) -> int | None:
        epochs = sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("epoch-*.json")
                        if (self.folder / f"{p.stem}.safetensors").is_file())
        return epochs[-1] if epochs else None

    def save(self, epoch: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        from lookalike.storage import atomic_write_text

        self.folder.mkdir(parents=True, exist_ok=True)
        name = _checkpoint_name(epoch)
        tmp = self.folder / f".{name}.safetensors.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(self.folder / f"{name}.safetensors")
        atomic_write_text(self.folder / f"{name}.json", json.dumps(meta, indent=1))
        for old in sorted(self.folder.glob("epoch-*.json"))[:-self.keep]:
            old.unlink(missing_ok=True)
            old.with_suffix(".safetensors").unlink(missing_ok=True)

    def save_best(self, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        tmp = self.folder / f".{BEST_WEIGHTS}.tmp"
        self.folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp))
        tmp.replace(self.folder / BEST_WEIGHTS)

    def load(self, epoch: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        from safetensors.torch import load_file

        name = _checkpoint_name(epoch)
        meta = json.loads((self.folder / f"{name}.json").read_text())
        return load_file(str(self.folder / f"{name}.safetensors")), meta

    def load_best(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        path = self.folder / BEST_WEIGHTS
        if not path.is_file():
            raise TrainingError(f"{path}: missing; the checkpoint folder is incomplete")
        return load_file(str(path))


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

    history: list[dict[str, float]] = []
    best_value: float | None = None
    best_epoch = 0
    bad_epochs = 0
    best_weights: dict[str, torch.Tensor] | None = None
    stopped = "epochs"
    elapsed_before = 0.0
    start_epoch = 0
    if resume and checkpoints is not None and (last := checkpoints.latest()) is not None:
        tensors, meta = checkpoints.load(last)
        if meta["signature"] != signature:
            raise TrainingError(f"{checkpoints.folder}: the checkpoint was made with other "
                                "settings or data; use a new checkpoint folder or resume=False")
        task.module.load_state_dict({k[len("module."):]: v for k, v in tensors.items()
                                     if k.startswith("module.")})
        for i, optimizer in enumerate(optimizers):
            _restore_optimizer(optimizer, f"optim{i}", tensors, meta["optimizers"][i])
        torch.set_rng_state(tensors["rng.torch"])
        history, best_value, best_epoch = meta["history"], meta["best_value"], meta["best_epoch"]
        bad_epochs, elapsed_before = meta["bad_epochs"], meta["seconds"]
        start_epoch = last
        best_weights = checkpoints.load_best()
        if meta.get("stopped") == "early-stopping":
            stopped, start_epoch = meta["stopped"], config.epochs  # that run had finished

    show = sys.stderr.isatty() if config.progress is None else config.progress
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                        disable=not show, transient=True)
    with progress:
        bar = progress.add_task("training", total=config.epochs * len(train_index),
                                completed=start_epoch * len(train_index), status="")
        for epoch in range(start_epoch, config.epochs):
            epoch_started = time.perf_counter()
            learning_rate = config.learning_rate_at(epoch)
            for optimizer in optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            task.module.train()
            loss_sum, seen = 0.0, 0
            for batch in _batches(len(train_index), config.batch_size, generator):
                rows = train_index[batch]
                inputs = task.prepare(data.images[rows])
                inputs = augment_batch(inputs, config, generator)
                labels = None if data.labels is None else data.labels[rows]
                loss = task.training_step(inputs, labels, optimizers)
                if not math.isfinite(loss):
                    raise TrainingError(f"the training loss became {loss} in epoch {epoch + 1}; "
                                        "lower the learning rate")
                loss_sum += loss * len(rows)
                seen += len(rows)
                progress.update(bar, advance=len(rows),
                                status=f"epoch {epoch + 1} loss {loss_sum / seen:.4f}")
                if time.perf_counter() > deadline:
                    break  # the budget is a promise: finish this epoch early, then stop
            row = {"epoch": epoch + 1, "train_loss": loss_sum / seen,
                   **validate(task, val_part, config.eval_batch_size),
                   "learning_rate": learning_rate,
                   "seconds": round(time.perf_counter() - epoch_started, 3)}
            if seen < len(train_index):
                row["trained_fraction"] = round(seen / len(train_index), 4)
            history.append(row)
            if config.monitor not in row:
                raise TrainingError(f"monitor {config.monitor!r} is not measured; available: "
                                    f"{', '.join(k for k in row if k.startswith('val_'))}")
            value = float(row[config.monitor])
            if _improved(value, best_value, config.mode, config.min_delta):
                best_value, best_epoch, bad_epochs = value, epoch + 1, 0
                best_weights = module_tensors(task.module)
                if checkpoints is not None:
                    checkpoints.save_best(best_weights)
            else:
                bad_epochs += 1
            elapsed = elapsed_before + time.perf_counter() - started
            if config.patience and bad_epochs >= config.patience:
                stopped = "early-stopping"
            elif time.perf_counter() > deadline:
                stopped = "time-budget"  # of this call: a resumed run gets a fresh budget
            if checkpoints is not None:
                _save_epoch(checkpoints, task, optimizers, epoch + 1, signature, history,
                            best_value, best_epoch, bad_epochs, elapsed, stopped, config)
            progress.update(bar, status=f"epoch {epoch + 1} {config.monitor} {value:.4f}")
            if on_epoch is not None:
                on_epoch(dict(row))
            if stopped != "epochs":
                break

    if best_weights is not None:
        task.module.load_state_dict(best_weights)
    task.module.eval()
    result = TrainResult(history=history, best_epoch=best_epoch,
                         best_value=float("nan") if best_value is None else float(best_value),
                         monitor=config.monitor, stopped=stopped, train_size=len(train_index),
                         validation_size=len(val_part),
                         seconds=round(elapsed_before + time.perf_counter() - started, 3),
                         config=asdict(config))
    if checkpoints is not None:
        from lookalike.storage import atomic_write_text

        atomic_write_text(checkpoints.folder / HISTORY_FILE,
                          json.dumps(result.to_json(), indent=1))
    return result


def _save_epoch(checkpoints: Checkpoints, task: Task, optimizers: list[torch.optim.Optimizer],
                epoch: int, signature: dict[str, Any], history: list[dict[str, float]],
                best_value: float | None, best_epoch: int, bad_epochs: int, elapsed: float,
                stopped: str, config: TrainConfig) -> None:
    tensors = {f"module.{k}": v for k, v in module_tensors(task.module).items()}
    optimizer_meta = []
    for i, optimizer in enumerate(optimizers):
        optimizer_tensors, meta = _flatten_optimizer(optimizer, f"optim{i}")
        tensors.update(optimizer_tensors)
        optimizer_meta.append(meta)
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"epoch": epoch, "signature": signature, "history": history,
            "best_value": best_value, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
            "seconds": elapsed, "stopped": stopped, "optimizers": optimizer_meta,
            "config": asdict(config)}
    checkpoints.save(epoch, tensors, meta)


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

