"""Settings of a training run (:class:`TrainConfig`), its error type, the optimizer it builds and
the seeded batch augmentation; shared by the loop (:mod:`lookalike.models.training`), the tasks
(:mod:`lookalike.models.tasks`) and the checkpoints (:mod:`lookalike.models.checkpoints`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from lookalike.errors import LookalikeError

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



def make_optimizer(parameters: Any, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``config`` names over ``parameters``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.learning_rate, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.learning_rate,
                                weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.learning_rate,
                             weight_decay=config.weight_decay)

