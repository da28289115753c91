"""Per-epoch training checkpoints: weights, optimizer state and the RNG state in safetensors, the
rest (epoch, history, early-stopping counters, optimizer hyper-parameters) in JSON. Nothing is
pickled; a checkpoint counts only once its JSON is written (atomically, last)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lookalike.models.tasks import Task
from lookalike.models.train_config import TrainConfig, TrainingError

BEST_WEIGHTS = "best.safetensors"


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



@dataclass
class RunState:
    """Where a run stands after an epoch: what a checkpoint restores."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    stopped: str = "epochs"
    elapsed_before: float = 0.0
    start_epoch: int = 0


def resume_state(checkpoints: Checkpoints, task: Task, optimizers: list[torch.optim.Optimizer],
                 signature: dict[str, Any], epochs: int) -> RunState:
    """Load the last saved epoch into ``task``/``optimizers``/the torch RNG and return where that
    run stood (a fresh :class:`RunState` when nothing is saved)."""
    last = checkpoints.latest()
    if last is None:
        return RunState()
    tensors, meta = checkpoints.load(last)
    if meta["signature"] != signature:
        raise TrainingError(f"{checkpoints.folder}: the checkpoint was made with other "
                            "settings or data; use a new checkpoint folder or resume=False")
    task.module.load_state_dict({k[len("module."):]: v for k, v in tensors.items()
                                 if k.startswith("module.")})
    for i, optimizer in enumerate(optimizers):
        _restore_optimizer(optimizer, f"optim{i}", tensors, meta["optimizers"][i])
    torch.set_rng_state(tensors["rng.torch"])
    state = RunState(history=meta["history"], best_value=meta["best_value"],
                     best_epoch=meta["best_epoch"], bad_epochs=meta["bad_epochs"],
                     elapsed_before=meta["seconds"], start_epoch=last,
                     best_weights=checkpoints.load_best())
    if meta.get("stopped") == "early-stopping":
        state.stopped, state.start_epoch = meta["stopped"], epochs  # that run had finished
    return state


def save_epoch(checkpoints: Checkpoints, task: Task, optimizers: list[torch.optim.Optimizer],
               epoch: int, signature: dict[str, Any], state: RunState, elapsed: float,
               config: TrainConfig) -> None:
    """Checkpoint the run after ``epoch`` (1-based): module, optimizers, RNG, ``state``."""
    tensors = {f"module.{k}": v for k, v in module_tensors(task.module).items()}
    optimizer_meta = []
    for i, optimizer in enumerate(optimizers):
        optimizer_tensors, meta = _flatten_optimizer(optimizer, f"optim{i}")
        tensors.update(optimizer_tensors)
        optimizer_meta.append(meta)
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"epoch": epoch, "signature": signature, "history": state.history,
            "best_value": state.best_value, "best_epoch": state.best_epoch,
            "bad_epochs": state.bad_epochs, "seconds": elapsed, "stopped": state.stopped,
            "optimizers": optimizer_meta, "config": asdict(config)}
    checkpoints.save(epoch, tensors, meta)
