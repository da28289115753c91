"""How ``finetune`` trains (paper 002's two stages on a CPU budget), called by
:meth:`lookalike.models.finetune.FinetuneEmbedder.fit_tensors`:

1. **Extraction (once).** Every training image goes through the frozen front of the network
   (stem + the first ``16 - trainable_blocks`` MBConv blocks) in ONNX Runtime. Its activation
   maps are kept as per-channel-quantised uint8 ``[n, C, h, w]``, and the pooled 1,280-d
   features come out of the same pass.
2. **Stage 1: the head** trains on the cached pooled features with Adam
   (:func:`~lookalike.models.feature_training.train_on_vectors`).
3. **Stage 2: the last block(s) + head** train together at a small learning rate on the cached
   activations through the shared trainer (:func:`~lookalike.models.training.train`).

With a checkpoint folder the activation cache, the stage-1 head and stage-2 epochs are kept
there, and ``resume`` picks up where a run stopped.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lookalike.models.datasets import ImageTensors
from lookalike.models.feature_training import VectorTrainResult, train_on_vectors
from lookalike.models.finetune_network import (
    BACKBONE_DIM,
    FinetuneNetwork,
    FrontExport,
    export_onnx,
    onnx_session,
)
from lookalike.models.heads import margin_loss
from lookalike.models.tasks import ClassificationTask
from lookalike.models.train_config import TrainConfig, TrainingError, make_optimizer
from lookalike.models.training import train
from lookalike.threads import torch_threads

#: Images whose activations set the uint8 ranges of the cache.
_QUANT_SAMPLE = 512
_STAGE1_WEIGHTS = "stage1-head.safetensors"
_STAGE1_JSON = "stage1.json"
_ACTIVATIONS = "activations.npy"
_ACTIVATIONS_JSON = "activations.json"
_STAGE2_DIR = "stage2"
#: Stage-1 (head) options accepted by ``fit`` besides TrainConfig fields (stage 2).
HEAD_OPTIONS = {"head_epochs": 10, "head_learning_rate": 1e-3, "head_batch_size": 256,
                "head_patience": 3, "head_weight_decay": 0.0, "skip_stage2": False}


@dataclass(frozen=True)
class LossSettings:
    """The classifier loss of both stages: CosFace margin (cosine units) x scale, smoothing."""

    margin: float
    cosine_scale: float
    label_smoothing: float

    def margin_logit(self) -> float:
        return self.margin * self.cosine_scale


class BackModel(nn.Module):
    """What stage 2 trains: dequantised front activations -> class logits."""

    def __init__(self, network: FinetuneNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self.network.head(self.network.back(activations))


class FinetuneTask(ClassificationTask):
    """Cross-entropy (optional label smoothing, optional cosine margin) on uint8 activations,
    dequantised per channel; validation adds top-3 accuracy."""

    def __init__(self, module: BackModel, low: Sequence[float], step: Sequence[float],
                 label_smoothing: float, margin: float, scale: float) -> None:
        super().__init__(module, [0.0] * len(low), [1.0] * len(low), label_smoothing,
                         float(margin) * float(scale))
        self.low = torch.tensor(low, dtype=torch.float32).view(1, -1, 1, 1)
        self.step = torch.tensor(step, dtype=torch.float32).view(1, -1, 1, 1)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        # channels-last: PyTorch's CPU depthwise convolutions are several times faster in NHWC
        x = images.to(torch.float32).mul_(self.step).add_(self.low)
        return x.contiguous(memory_format=torch.channels_last)

    def validation_sums(self, inputs: torch.Tensor, labels: torch.Tensor | None
                        ) -> dict[str, float]:
        sums = super().validation_sums(inputs, labels)
        logits = self.module(inputs)
        k = min(3, logits.shape[1])
        sums["top3"] = float((logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum())
        return sums

    def make_optimizers(self, config: TrainConfig) -> list[torch.optim.Optimizer]:
        return [make_optimizer([p for p in self.module.parameters() if p.requires_grad], config)]


def clear_checkpoints(folder: Path) -> None:
    """Remove an earlier run's files, so a fresh run does not mix with them."""
    import shutil

    shutil.rmtree(folder / _STAGE2_DIR, ignore_errors=True)
    for name in (_STAGE1_JSON, _STAGE1_WEIGHTS, _ACTIVATIONS_JSON, _ACTIVATIONS):
        (folder / name).unlink(missing_ok=True)


def fine_tune(network: FinetuneNetwork, data: ImageTensors, folder: Path | None, resume: bool,
              config: TrainConfig, head_options: dict[str, Any], loss: LossSettings,
              seed: int, show: bool, started: float) -> dict[str, Any]:
    """Run extraction, stage 1 and (unless ``skip_stage2``) stage 2 on ``network`` in place;
    returns the run's ``training_result`` (``started``: when the caller began the run)."""
    activations, low, step, features, extract_seconds = cached_front(
        network, data, folder, resume, config, seed, show)

    # Stage 1: the head on pooled features (skipped when a resumed run already has it).
    stage1_started = time.perf_counter()
    stage1 = load_stage1(network, folder) if resume and folder is not None else None
    if stage1 is None:
        if features is None:  # activations came from the cache: pool them once
            features = pool(network, activations, low, step, config)
        stage1 = train_head(network, features, data.labels, head_options, config, loss)
        if folder is not None:
            save_stage1(network, folder, stage1)
    del features
    stage1_seconds = round(time.perf_counter() - stage1_started, 3)

    # Stage 2: last blocks + head together, through the shared trainer.
    stage2 = None
    if not head_options["skip_stage2"]:
        for name, parameter in network.named_parameters():
            parameter.requires_grad_(name.startswith("head.")
                                     or in_trained_blocks(name, network.split))
        network.to(memory_format=torch.channels_last)
        task = FinetuneTask(BackModel(network), low, step, loss.label_smoothing, loss.margin,
                            loss.cosine_scale)
        stage2 = train(task, ImageTensors(activations, data.labels, data.classes), config,
                       checkpoint_dir=None if folder is None else folder / _STAGE2_DIR,
                       resume=resume)
        network.to(memory_format=torch.contiguous_format)
        for parameter in network.parameters():
            parameter.requires_grad_(False)
    return {
        "extraction_seconds": extract_seconds,
        "stage1": {**asdict(stage1), "options": head_options, "seconds": stage1_seconds},
        "stage2": None if stage2 is None else stage2.to_json(),
        "seconds": round(time.perf_counter() - started, 3),
        "activation_bytes_per_item": int(activations[0].numel()) if len(activations) else 0,
    }


def in_trained_blocks(name: str, split: int) -> bool:
    """Whether parameter ``name`` of the network trains in stage 2 (blocks from ``split`` on,
    the head convolution and its batch norm)."""
    if name.startswith(("backbone._conv_head.", "backbone._bn1.")):
        return True
    parts = name.split(".")
    return parts[1] == "_blocks" and int(parts[2]) >= split


def cached_front(network: FinetuneNetwork, data: ImageTensors, folder: Path | None,
                 resume: bool, config: TrainConfig, seed: int, show: bool
                 ) -> tuple[torch.Tensor, list[float], list[float], torch.Tensor | None, float]:
    """uint8 front activations (+ their dequantisation) and pooled features of ``data``."""
    signature = {"items": len(data), "shape": list(data.images.shape[1:]),
                 "labels_sha": hashlib.sha256(data.labels.numpy().tobytes()).hexdigest()[:16],
                 "input_size": list(network.input_size), "split": network.split}
    if resume and folder is not None and (folder / _ACTIVATIONS_JSON).is_file():
        meta = json.loads((folder / _ACTIVATIONS_JSON).read_text())
        if meta["signature"] != signature:
            raise TrainingError(f"{folder}: the checkpoint was made with other data or "
                                "settings; train without --resume")
        activations = torch.from_numpy(np.load(folder / _ACTIVATIONS, allow_pickle=False))
        return activations, meta["low"], meta["step"], None, meta["seconds"]
    started = time.perf_counter()
    activations, low, step, features = extract_front(
        network, data.images, threads=config.threads, seed=seed, progress=show)
    seconds = round(time.perf_counter() - started, 3)
    if folder is not None:
        from lookalike.storage import atomic_write_text

        tmp = folder / f".{_ACTIVATIONS}.tmp"
        with open(tmp, "wb") as handle:
            np.save(handle, activations.numpy(), allow_pickle=False)
        tmp.replace(folder / _ACTIVATIONS)
        atomic_write_text(folder / _ACTIVATIONS_JSON, json.dumps(
            {"signature": signature, "low": low, "step": step, "seconds": seconds}))
    return activations, low, step, features, seconds


@torch.no_grad()
def pool(network: FinetuneNetwork, activations: torch.Tensor, low: list[float],
         step: list[float], config: TrainConfig) -> torch.Tensor:
    """The pooled 1,280-d features of cached uint8 activations."""
    task = FinetuneTask(BackModel(network), low, step, 0.0, 0.0, 1.0)
    with torch_threads(config.threads):
        return torch.cat([network.back(task.prepare(activations[s:s + 256]))
                          for s in range(0, len(activations), 256)])


def train_head(network: FinetuneNetwork, features: torch.Tensor, labels: torch.Tensor,
               options: dict[str, Any], config: TrainConfig, loss: LossSettings
               ) -> VectorTrainResult:
    """Stage 1: the head alone on the pooled features."""
    margin_logit = loss.margin_logit()

    def loss_function(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return margin_loss(logits, target, margin_logit, loss.label_smoothing)

    return train_on_vectors(
        network.head, features, labels, epochs=int(options["head_epochs"]),
        batch_size=int(options["head_batch_size"]),
        learning_rate=float(options["head_learning_rate"]),
        weight_decay=float(options["head_weight_decay"]),
        validation_fraction=config.validation_fraction,
        patience=int(options["head_patience"]), seed=config.seed, threads=config.threads,
        loss_function=loss_function)


def save_stage1(network: FinetuneNetwork, folder: Path, result: VectorTrainResult) -> None:
    from safetensors.torch import save_file

    from lookalike.storage import atomic_write_text

    tmp = folder / f".{_STAGE1_WEIGHTS}.tmp"
    save_file({k: v.contiguous() for k, v in network.head.state_dict().items()}, str(tmp))
    tmp.replace(folder / _STAGE1_WEIGHTS)
    atomic_write_text(folder / _STAGE1_JSON, json.dumps(asdict(result)))


def load_stage1(network: FinetuneNetwork, folder: Path) -> VectorTrainResult | None:
    if not (folder / _STAGE1_JSON).is_file():
        return None
    from safetensors.torch import load_file

    network.head.load_state_dict(load_file(str(folder / _STAGE1_WEIGHTS)))
    return VectorTrainResult(**json.loads((folder / _STAGE1_JSON).read_text()))


def extract_front(network: FinetuneNetwork, images: torch.Tensor, threads: int | None = 2,
                  seed: int = 0, batch_size: int = 64, progress: bool = False
                  ) -> tuple[torch.Tensor, list[float], list[float], torch.Tensor]:
    """Run the frozen front of ``network`` over uint8 ``images`` once (ONNX Runtime, fp32).

    Returns the front's activations quantised per channel to uint8 (ranges from the 0.05% and
    99.95% quantiles of a seeded sample; ``value = low + code * step``), ``low``, ``step`` and
    the pooled 1,280-d features ``[n, 1280]`` from the same pass.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    n = len(images)
    with tempfile.TemporaryDirectory(prefix="lookalike-front-") as work:
        path = Path(work) / "front.onnx"
        export_onnx(FrontExport(network), path, int(images.shape[1]),
                    (int(images.shape[3]), int(images.shape[2])), ["activations", "features"])
        session = onnx_session(path, threads)

        def run(rows: torch.Tensor | slice) -> tuple[np.ndarray, np.ndarray]:
            acts, feats = session.run(None, {"pixels": np.ascontiguousarray(images[rows].numpy())})
            return acts, feats

        sample = np.sort(np.random.default_rng(seed).permutation(n)[:_QUANT_SAMPLE])
        sampled = np.concatenate([run(torch.as_tensor(sample[s:s + batch_size]))[0]
                                  for s in range(0, len(sample), batch_size)])
        per_channel = np.moveaxis(sampled, 1, 0).reshape(sampled.shape[1], -1)
        low_t = torch.from_numpy(np.quantile(per_channel, 0.0005, axis=1).astype(np.float32))
        high_t = torch.from_numpy(np.quantile(per_channel, 0.9995, axis=1).astype(np.float32))
        step_t = ((high_t - low_t) / 255.0).clamp_min(1e-6)
        low, step = low_t.view(1, -1, 1, 1).numpy(), step_t.view(1, -1, 1, 1).numpy()
        activations = np.empty((n, *sampled.shape[1:]), dtype=np.uint8)
        features = np.empty((n, BACKBONE_DIM), dtype=np.float32)
        bar = Progress(TextColumn("extracting features"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), disable=not progress, transient=True)
        with bar:
            task = bar.add_task("extract", total=n)
            for start in range(0, n, batch_size):
                acts, feats = run(slice(start, start + batch_size))
                codes = np.rint((acts - low) / step)
                activations[start:start + len(acts)] = np.clip(codes, 0, 255).astype(np.uint8)
                features[start:start + len(acts)] = feats
                bar.update(task, advance=len(acts))
    return (torch.from_numpy(activations), [float(v) for v in low_t], [float(v) for v in step_t],
            torch.from_numpy(features))

