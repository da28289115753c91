"""Fine-tuned EfficientNet-Lite0 (method ``finetune``): paper 002's recipe on a CPU budget.

Paper 002 (Hnot) fine-tunes an ImageNet ResNet50: cut the 1000-way output, add two ReLU layers
(256, 64) and a softmax over the shop's classes, train only the new layers with Adam (10
epochs), then unfreeze and fine-tune everything at a small learning rate; embeddings come from
the layers before the classifier. Here the backbone is the packaged ImageNet EfficientNet-Lite0
(:mod:`lookalike.models.efficientnet`) and the same two stages run in minutes on two CPU cores:

1. **Extraction (once).** Every training image goes through the frozen front of the network
   (stem + the first ``16 - trainable_blocks`` MBConv blocks) in ONNX Runtime. Its activation
   maps are kept as per-channel-quantised uint8 ``[n, C, h, w]`` (3,840 bytes an image with the
   defaults: 192 x 5 x 4 at 120x160 input), and the pooled 1,280-d features come out of the
   same pass.
2. **Stage 1: the head.** ``1280 -> 256 -> 64`` (ReLU) ``-> classes`` trains on the cached
   pooled features with Adam (:func:`~lookalike.models.feature_training.train_on_vectors`).
3. **Stage 2: the last block(s) + head.** The last ``trainable_blocks`` MBConv blocks (default
   1), the 1x1 head convolution and the new head train together at a small learning rate on the
   cached activations, through the shared trainer (:func:`~lookalike.models.training.train`:
   checkpoints, resume, early stopping, time budget). *Why not all blocks:* PyTorch's CPU
   depthwise convolutions are slow, backwards especially: a training step through all of Lite0,
   or recomputing a frozen front every epoch, costs tens of times more per image than block 15 +
   the head convolution from the cache (step timings: benchmarks/RESULTS.md#training). They hold 30% of the
   backbone's weights (the last five blocks 79%). Batch norm keeps its ImageNet statistics
   throughout (small CPU batches would give noisy ones), so frozen and trained parts see the
   inputs they were trained on.

Input: the catalogue's uint8 pixels at ``image_size`` (60x80 products, 28x28 Fashion-MNIST),
upsampled inside the network (bilinear) to ``input_size`` (default: the smallest whole
multiple whose short side is >= 112, so 120x160 for products and 112x112 for Fashion-MNIST)
and scaled to [-1, 1]; grey images are repeated to three channels.

Embedding: ``embedding_layer`` ``"64"`` (default: the second head layer, the paper's "layer
before the classifier"), ``"256"`` (the first) or ``"backbone"`` (the pooled 1,280 features),
after ReLU, L2-normalised. The classifier is a cosine softmax with a CosFace margin by default
(``head="softmax"``, ``margin=0`` is the paper's plain softmax). Inference exports the whole network (pixels in, embedding out) to ONNX and
runs it in ONNX Runtime (``backend="onnx"``, cached by embedder id) or in PyTorch
(``backend="torch"``, channels-last, ``inference_mode``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lookalike.errors import LookalikeError, ModelMismatchError
from lookalike.models.base import Embedder, l2_normalise
from lookalike.models.cnn import NotTrainedError
from lookalike.models.datasets import (
    PRODUCT_SIZE,
    ImageTensors,
    encode_labels,
    image_to_array,
    images_to_tensor,
)
from lookalike.models.feature_training import VectorTrainResult, train_on_vectors
from lookalike.models.heads import HEADS, make_classifier, margin_loss
from lookalike.models.training import (
    ClassificationTask,
    TrainConfig,
    TrainingError,
    train,
)
from lookalike.threads import torch_threads

VARIANT = "efficientnet-lite0"
BACKBONE_DIM = 1280
N_BLOCKS = 16  # MBConv blocks of Lite0
BACKENDS = ("onnx", "torch")
TRAINING_FILE = "training.json"
#: Bump when the inference export changes, so cached ONNX files are rebuilt.
ONNX_BUILD_VERSION = 1
#: Short side the default input size reaches by whole-number upsampling.
MIN_INPUT_SIDE = 112
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


# ---- the network -----------------------------------------------------------------------------
class Head(nn.Module):
    """Paper 002's new layers: ``1280 -> hidden[0] -> hidden[1]`` with ReLU, then a classifier."""

    def __init__(self, classes: int, hidden: Sequence[int] = (256, 64), dropout: float = 0.2,
                 kind: str = "softmax", scale: float = 16.0) -> None:
        super().__init__()
        sizes = [BACKBONE_DIM, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.dropout = nn.Dropout(dropout)
        self.classifier = make_classifier(kind, sizes[-1], classes, scale)

    def hidden(self, features: torch.Tensor) -> list[torch.Tensor]:
        """The ReLU output of every hidden layer."""
        out = []
        x = features
        for layer in self.layers:
            x = F.relu(layer(self.dropout(x)))
            out.append(x)
        return out

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(features)[-1])


class FinetuneNetwork(nn.Module):
    """Lite0 backbone (ImageNet classifier removed) + :class:`Head`, on uint8 pixels.

    ``front(pixels)`` runs the frozen part (up to block ``split``), ``back(activations)`` the
    rest up to the pooled features. The backbone always stays in eval mode (frozen batch-norm
    statistics, no drop-connect); only the head's dropout follows ``train()``.
    """

    def __init__(self, backbone: nn.Module, head: Head, channels: int,
                 input_size: tuple[int, int], split: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.channels = channels
        self.input_size = input_size  # width, height
        self.split = split

    def train(self, mode: bool = True) -> "FinetuneNetwork":
        super().train(mode)
        self.backbone.eval()
        return self

    def scale(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW at the catalogue size -> float NCHW at ``input_size`` in [-1, 1]."""
        x = pixels.float()
        if self.channels == 1:
            x = x.repeat(1, 3, 1, 1)
        width, height = self.input_size
        if tuple(x.shape[-2:]) != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        return x * (1.0 / 127.5) - 1.0

    def front(self, pixels: torch.Tensor) -> torch.Tensor:
        net = self.backbone
        x = net._swish(net._bn0(net._conv_stem(self.scale(pixels))))
        for block in net._blocks[:self.split]:
            x = block(x)
        return x

    def back(self, activations: torch.Tensor) -> torch.Tensor:
        net = self.backbone
        x = activations
        for block in net._blocks[self.split:]:
            x = block(x)
        return net._swish(net._bn1(net._conv_head(x))).mean(dim=(2, 3))

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.back(self.front(pixels))

    def layer(self, pixels: torch.Tensor, name: str) -> torch.Tensor:
        """The (raw) embedding layer ``name``: ``backbone`` or a hidden width such as ``256``."""
        features = self.features(pixels)
        if name == "backbone":
            return features
        widths = [layer.out_features for layer in self.head.layers]
        return self.head.hidden(features)[widths.index(int(name))]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))


class _FrontExport(nn.Module):
    """pixels -> (front activations, pooled features): one ONNX pass gives both."""

    def __init__(self, network: FinetuneNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        activations = self.network.front(pixels)
        return activations, self.network.back(activations)


class _LayerExport(nn.Module):
    def __init__(self, network: FinetuneNetwork, layer: str) -> None:
        super().__init__()
        self.network = network
        self.layer_name = layer

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network.layer(pixels, self.layer_name)


class _BackModel(nn.Module):
    """What stage 2 trains: dequantised front activations -> class logits."""

    def __init__(self, network: FinetuneNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self.network.head(self.network.back(activations))


class FinetuneTask(ClassificationTask):
    """Cross-entropy (optional label smoothing, optional cosine margin) on uint8 activations,
    dequantised per channel; validation adds top-3 accuracy."""

    def __init__(self, module: _BackModel, low: Sequence[float], step: Sequence[float],
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
        from lookalike.models.training import _optimizer

        return [_optimizer([p for p in self.module.parameters() if p.requires_grad], config)]


# ---- the embedder ------------------------------------------------------------------------------
def default_input_size(image_size: Sequence[int]) -> tuple[int, int]:
    """The catalogue size times the smallest whole factor that makes the short side >= 112."""
    width, height = int(image_size[0]), int(image_size[1])
    factor = max(1, math.ceil(MIN_INPUT_SIDE / max(1, min(width, height))))
    return width * factor, height * factor


def _pair(name: str, value: Any) -> tuple[int, int]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    try:
        width, height = (int(v) for v in value)
    except (TypeError, ValueError):
        raise LookalikeError(f"{name} must be a size [width, height] or one number, "
                             f"not {value!r}") from None
    if not (8 <= width <= 1024 and 8 <= height <= 1024):
        raise LookalikeError(f"{name} {width}x{height} is out of range (8..1024)")
    return width, height


class FinetuneEmbedder(Embedder):
    """Paper 002's fine-tuned classifier on ImageNet EfficientNet-Lite0 (method ``finetune``).

    Options (saved in the config, part of the embedder id): ``image_size`` (catalogue pixels,
    width x height), ``channels``, ``input_size`` (network input; default
    :func:`default_input_size`), ``hidden`` (head widths, paper: 256, 64), ``head``
    (``softmax`` or ``cosine``), ``cosine_scale``, ``margin`` (cosine head only),
    ``label_smoothing``, ``dropout``, ``trainable_blocks`` (last MBConv blocks fine-tuned in
    stage 2, 0..16), ``embedding_layer`` (``"64"``, ``"256"`` or ``"backbone"``),
    ``label_column``, ``seed``, ``backend`` (``onnx`` or ``torch``). ``num_threads`` and
    ``cache_dir`` (where the inference ONNX file goes) only affect speed.

    Defaults: a cosine classifier with margin 0.2 and the 64-d layer, which retrieved better
    than paper 002's plain softmax (``benchmarks/finetune_bench.py``: P@10 +2.7 points,
    mAP@100 +10 points in a 6,000-photo run).
    """

    kind = "finetune"
    needs_fit = True
    batch_size = 128

    #: Stage-2 TrainConfig defaults. With the defaults the whole run (extraction, stage 1,
    #: stage 2) fits 15 minutes on two cores: ``max_minutes`` bounds stage 2.
    default_training: dict[str, Any] = {"epochs": 6, "batch_size": 64, "learning_rate": 3e-4,
                                        "optimizer": "adam", "weight_decay": 0.0,
                                        "schedule": "cosine", "patience": 2, "augment": "none",
                                        "max_minutes": 7.0}
    option_choices = {"head": HEADS, "backend": BACKENDS, **TrainConfig.CHOICES}

    @classmethod
    def training_options(cls) -> dict[str, Any]:
        """Stage-2 :class:`TrainConfig` fields with this method's defaults, then the stage-1
        (head) options."""
        return {**TrainConfig.settings(cls.default_training), **HEAD_OPTIONS}

    def __init__(self, image_size: Sequence[int] = PRODUCT_SIZE, channels: int = 3,
                 input_size: Sequence[int] | int | None = None,
                 hidden: Sequence[int] = (256, 64), head: str = "cosine",
                 cosine_scale: float = 16.0, margin: float = 0.2, label_smoothing: float = 0.0,
                 dropout: float = 0.2, trainable_blocks: int = 1,
                 embedding_layer: str | int = "64", label_column: str = "article_type",
                 classes: Sequence[str] = (), seed: int = 0, backend: str = "onnx",
                 num_threads: int | None = None, cache_dir: str | Path | None = None) -> None:
        self.image_size = _pair("image_size", image_size)
        if channels not in (1, 3):
            raise ModelMismatchError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        self.channels = int(channels)
        self.input_size = (_pair("input_size", input_size) if input_size is not None
                           else default_input_size(self.image_size))
        self.hidden = tuple(int(h) for h in hidden)
        if not self.hidden or min(self.hidden) < 1:
            raise LookalikeError(f"hidden must list positive layer widths, got {list(hidden)}")
        if head not in HEADS:
            raise LookalikeError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        self.head = head
        self.cosine_scale = float(cosine_scale)
        self.margin = float(margin)
        if self.margin and head != "cosine":
            raise LookalikeError("margin needs head='cosine'")
        self.label_smoothing = float(label_smoothing)
        self.dropout = float(dropout)
        self.trainable_blocks = int(trainable_blocks)
        if not 0 <= self.trainable_blocks <= N_BLOCKS:
            raise LookalikeError(f"trainable_blocks must be 0..{N_BLOCKS}, got {trainable_blocks}")
        self.embedding_layer = str(embedding_layer)
        allowed = [str(h) for h in self.hidden] + ["backbone"]
        if self.embedding_layer not in allowed:
            raise LookalikeError(f"embedding_layer must be one of {', '.join(allowed)}, got "
                                 f"{embedding_layer!r}")
        self.label_column = label_column
        self.classes = tuple(str(c) for c in classes)
        self.seed = int(seed)
        if backend not in BACKENDS:
            raise LookalikeError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend = backend
        self.num_threads = None if num_threads is None else max(1, int(num_threads))
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.training_result: dict[str, Any] | None = None
        self._network: FinetuneNetwork | None = None
        self._fingerprint: str | None = None
        self._runner: Any = None

    # ---- identity ----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return BACKBONE_DIM if self.embedding_layer == "backbone" else int(self.embedding_layer)

    def config(self) -> dict[str, Any]:
        return {"image_size": list(self.image_size), "channels": self.channels,
                "input_size": list(self.input_size), "hidden": list(self.hidden),
                "head": self.head, "cosine_scale": self.cosine_scale, "margin": self.margin,
                "label_smoothing": self.label_smoothing, "dropout": self.dropout,
                "trainable_blocks": self.trainable_blocks,
                "embedding_layer": self.embedding_layer, "label_column": self.label_column,
                "classes": list(self.classes), "seed": self.seed, "backend": self.backend}

    def _weights_fingerprint(self) -> dict[str, str]:
        if self._network is None:
            return {"weights": "untrained"}
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for name, array in sorted(self.state_tensors().items()):
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(array).tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return {"weights": self._fingerprint}

    def with_layer(self, embedding_layer: str | int) -> "FinetuneEmbedder":
        """The same trained network embedding from another layer (shares the weights)."""
        other = type(self)(**{**self.config(), "embedding_layer": str(embedding_layer)},
                           num_threads=self.num_threads, cache_dir=self.cache_dir)
        other._network = self._network
        other.training_result = self.training_result
        return other

    # ---- the network ---------------------------------------------------------------------------
    @property
    def network(self) -> FinetuneNetwork:
        if self._network is None:
            raise NotTrainedError(f"{self.name}: not trained yet; call fit() or load a saved model")
        return self._network

    def _skeleton(self, pretrained: bool) -> FinetuneNetwork:
        """The network for this config: ImageNet backbone weights when ``pretrained``, and a
        freshly initialised head (seeded, the caller's RNG untouched)."""
        from efficientnet_lite_pytorch import EfficientNet

        width, height = self.input_size
        backbone = EfficientNet.from_name(VARIANT, image_size=[height, width])
        if pretrained:
            from lookalike.models.efficientnet import (_packaged_weights_path, check_state,
                                                       read_state_dict)

            state = read_state_dict(_packaged_weights_path())
            check_state(state, VARIANT, "packaged EfficientNet-Lite0 weights")
            backbone.load_state_dict(state, strict=True)
        backbone._fc = nn.Identity()  # the ImageNet classifier is cut off (paper 002, step 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            head = Head(len(self.classes), self.hidden, self.dropout, self.head,
                        self.cosine_scale)
        network = FinetuneNetwork(backbone, head, self.channels, self.input_size,
                                  N_BLOCKS - self.trainable_blocks)
        return network.eval()

    # ---- learning ---------------------------------------------------------------------------
    def fit(self, images: Sequence[Image.Image], labels: Sequence[Any] | None = None,
            **options: Any) -> "FinetuneEmbedder":
        """Fine-tune on PIL images and their labels; ``options`` as :meth:`fit_tensors`."""
        if labels is None:
            raise LookalikeError(f"{self.name}: fit needs labels (e.g. the {self.label_column} "
                                 "of each image)")
        codes, classes = encode_labels(labels)
        data = ImageTensors(images_to_tensor(images, self.image_size, self.channels), codes,
                            classes)
        return self.fit_tensors(data, **options)

    def fit_tensors(self, data: ImageTensors, checkpoint_dir: str | Path | None = None,
                    resume: bool = False, **options: Any) -> "FinetuneEmbedder":
        """Fine-tune on uint8 :class:`ImageTensors` at ``image_size`` with labels.

        ``options``: stage-2 :class:`TrainConfig` fields (``epochs``, ``learning_rate``,
        ``max_minutes``, ``progress``, ...) and the stage-1 ``head_epochs``,
        ``head_learning_rate``, ``head_batch_size``, ``head_patience``, ``head_weight_decay``.
        With ``checkpoint_dir`` the activation cache, the stage-1 head and stage-2 epochs are
        kept there and ``resume=True`` picks up where a run stopped.
        """
        if data.labels is None:
            raise LookalikeError(f"{self.name}: fit needs labelled data")
        if data.channels != self.channels or data.size != self.image_size:
            raise ModelMismatchError(
                f"{self.name}: data is {data.channels}x{data.size[0]}x{data.size[1]} but the model "
                f"expects {self.channels}x{self.image_size[0]}x{self.image_size[1]}; create it "
                f"with image_size={list(data.size)}, channels={data.channels}")
        head_options = {k: options.pop(k) for k in list(options) if k in HEAD_OPTIONS}
        head_options = {**HEAD_OPTIONS, **head_options}
        config = TrainConfig.from_dict({"seed": self.seed, **self.default_training, **options})
        self.classes = tuple(data.classes) or tuple(
            str(i) for i in range(int(data.labels.max()) + 1))
        folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            if not resume:  # a fresh run must not mix with an earlier run's files
                import shutil

                shutil.rmtree(folder / _STAGE2_DIR, ignore_errors=True)
                for name in (_STAGE1_JSON, _STAGE1_WEIGHTS, _ACTIVATIONS_JSON, _ACTIVATIONS):
                    (folder / name).unlink(missing_ok=True)
        started = time.perf_counter()
        network = self._skeleton(pretrained=True)
        show = sys.stderr.isatty() if config.progress is None else config.progress

        activations, low, step, features, extract_seconds = self._cached_front(
            network, data, folder, resume, config, show)

        # Stage 1: the head on pooled features (skipped when a resumed run already has it).
        stage1_started = time.perf_counter()
        stage1 = self._load_stage1(network, folder) if resume and folder is not None else None
        if stage1 is None:
            if features is None:  # activations came from the cache: pool them once
                features = self._pool(network, activations, low, step, config)
            stage1 = self._train_head(network, features, data.labels, head_options, config)
            if folder is not None:
                self._save_stage1(network, folder, stage1)
        del features
        stage1_seconds = round(time.perf_counter() - stage1_started, 3)

        # Stage 2: last blocks + head together, through the shared trainer.
        stage2 = None
        if not head_options["skip_stage2"]:
            for name, parameter in network.named_parameters():
                parameter.requires_grad_(name.startswith("head.")
                                         or self._in_trained_blocks(name, network.split))
            network.to(memory_format=torch.channels_last)
            task = FinetuneTask(_BackModel(network), low, step, self.label_smoothing,
                                self.margin, self.cosine_scale)
            stage2 = train(task, ImageTensors(activations, data.labels, data.classes), config,
                           checkpoint_dir=None if folder is None else folder / _STAGE2_DIR,
                           resume=resume)
            network.to(memory_format=torch.contiguous_format)
            for parameter in network.parameters():
                parameter.requires_grad_(False)
        self._network = network.eval()
        self._fingerprint, self._runner = None, None
        self.training_result = {
            "extraction_seconds": extract_seconds,
            "stage1": {**asdict(stage1), "options": head_options, "seconds": stage1_seconds},
            "stage2": None if stage2 is None else stage2.to_json(),
            "seconds": round(time.perf_counter() - started, 3),
            "activation_bytes_per_item": int(activations[0].numel()) if len(activations) else 0,
        }
        return self

    @staticmethod
    def _in_trained_blocks(name: str, split: int) -> bool:
        if name.startswith(("backbone._conv_head.", "backbone._bn1.")):
            return True
        parts = name.split(".")
        return parts[1] == "_blocks" and int(parts[2]) >= split

    def _cached_front(self, network: FinetuneNetwork, data: ImageTensors, folder: Path | None,
                      resume: bool, config: TrainConfig, show: bool
                      ) -> tuple[torch.Tensor, list[float], list[float], torch.Tensor | None,
                                 float]:
        """uint8 front activations (+ their dequantisation) and pooled features of ``data``."""
        signature = {"items": len(data), "shape": list(data.images.shape[1:]),
                     "labels_sha": hashlib.sha256(data.labels.numpy().tobytes()).hexdigest()[:16],
                     "input_size": list(self.input_size), "split": network.split}
        if resume and folder is not None and (folder / _ACTIVATIONS_JSON).is_file():
            meta = json.loads((folder / _ACTIVATIONS_JSON).read_text())
            if meta["signature"] != signature:
                raise TrainingError(f"{folder}: the checkpoint was made with other data or "
                                    "settings; train without --resume")
            activations = torch.from_numpy(np.load(folder / _ACTIVATIONS, allow_pickle=False))
            return activations, meta["low"], meta["step"], None, meta["seconds"]
        started = time.perf_counter()
        activations, low, step, features = extract_front(
            network, data.images, threads=config.threads, seed=self.seed, progress=show)
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
    def _pool(self, network: FinetuneNetwork, activations: torch.Tensor, low: list[float],
              step: list[float], config: TrainConfig) -> torch.Tensor:
        task = FinetuneTask(_BackModel(network), low, step, 0.0, 0.0, 1.0)
        with torch_threads(config.threads):
            return torch.cat([network.back(task.prepare(activations[s:s + 256]))
                              for s in range(0, len(activations), 256)])

    def _train_head(self, network: FinetuneNetwork, features: torch.Tensor,
                    labels: torch.Tensor, options: dict[str, Any], config: TrainConfig
                    ) -> VectorTrainResult:
        margin_logit = self.margin * self.cosine_scale

        def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return margin_loss(logits, target, margin_logit, self.label_smoothing)

        return train_on_vectors(
            network.head, features, labels, epochs=int(options["head_epochs"]),
            batch_size=int(options["head_batch_size"]),
            learning_rate=float(options["head_learning_rate"]),
            weight_decay=float(options["head_weight_decay"]),
            validation_fraction=config.validation_fraction,
            patience=int(options["head_patience"]), seed=config.seed, threads=config.threads,
            loss_function=loss)

    def _save_stage1(self, network: FinetuneNetwork, folder: Path,
                     result: VectorTrainResult) -> None:
        from safetensors.torch import save_file

        from lookalike.storage import atomic_write_text

        tmp = folder / f".{_STAGE1_WEIGHTS}.tmp"
        save_file({k: v.contiguous() for k, v in network.head.state_dict().items()}, str(tmp))
        tmp.replace(folder / _STAGE1_WEIGHTS)
        atomic_write_text(folder / _STAGE1_JSON, json.dumps(asdict(result)))

    def _load_stage1(self, network: FinetuneNetwork, folder: Path) -> VectorTrainResult | None:
        if not (folder / _STAGE1_JSON).is_file():
            return None
        from safetensors.torch import load_file

        network.head.load_state_dict(load_file(str(folder / _STAGE1_WEIGHTS)))
        return VectorTrainResult(**json.loads((folder / _STAGE1_JSON).read_text()))

    # ---- inference --------------------------------------------------------------------------
    def prepare(self, image: Image.Image) -> np.ndarray:
        """One photo as uint8 ``[channels, height, width]`` at ``image_size`` (as in training)."""
        return image_to_array(image, self.image_size, self.channels)

    def embed_prepared(self, items: list[Any]) -> np.ndarray:
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalise(self._run(np.stack(items)))

    def _embed_batch(self, images: list[Image.Image]) -> np.ndarray:
        return self._run(np.stack([self.prepare(image) for image in images]))

    def embed_tensors(self, images: torch.Tensor | np.ndarray,
                      batch_size: int | None = None) -> np.ndarray:
        """Unit rows of uint8 ``[n, c, h, w]`` tensors already at ``image_size``."""
        pixels = np.asarray(images)
        size = batch_size or self.batch_size
        out = [self._run(pixels[s:s + size]) for s in range(0, len(pixels), size)]
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalise(np.concatenate(out))

    @torch.no_grad()
    def logits_tensors(self, images: torch.Tensor | np.ndarray,
                       batch_size: int | None = None) -> np.ndarray:
        """Class logits ``[n, classes]`` of uint8 tensors (PyTorch; names: ``self.classes``)."""
        network = self.network.eval()
        pixels = torch.as_tensor(np.asarray(images))
        size = batch_size or self.batch_size
        with torch_threads(self.num_threads), torch.inference_mode():
            out = [network(pixels[s:s + size]).numpy() for s in range(0, len(pixels), size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        if self._runner is None:
            self.network  # noqa: B018 - a clear NotTrainedError before any export
            self._runner = (_OnnxLayerRunner(self) if self.backend == "onnx"
                            else _TorchLayerRunner(self))
        return self._runner(np.ascontiguousarray(pixels, dtype=np.uint8))

    def onnx_path(self) -> Path:
        """The cached inference ONNX file of this model (named by embedder id)."""
        import onnxruntime

        from lookalike.models.efficientnet import default_cache_dir

        folder = self.cache_dir if self.cache_dir is not None else default_cache_dir()
        return folder / f"{self.embedder_id}-b{ONNX_BUILD_VERSION}-ort{onnxruntime.__version__}.onnx"

    def build_onnx(self) -> Path:
        """Export pixels -> embedding layer to ONNX (fp32) unless the file already exists."""
        target = self.onnx_path()
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".build-", dir=target.parent) as work:
                path = Path(work) / "model.onnx"
                export_onnx(_LayerExport(self.network, self.embedding_layer), path,
                            self.channels, self.image_size, ["embedding"])
                os.replace(path, target)
        return target

    # ---- persistence ------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, np.ndarray]:
        if self._network is None:
            return {}
        return {name: value.detach().cpu().numpy()
                for name, value in self._network.state_dict().items()}

    def load_state_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        if not tensors:
            return
        network = self._skeleton(pretrained=False)
        expected = network.state_dict()
        if set(expected) != set(tensors):
            missing = sorted(set(expected) - set(tensors))[:3]
            extra = sorted(set(tensors) - set(expected))[:3]
            raise ModelMismatchError(f"{self.name}: saved weights do not fit the config "
                                     f"(missing {missing}, unexpected {extra})")
        restored = {}
        for name, array in tensors.items():
            shape = tuple(expected[name].shape)
            if tuple(array.shape) != shape and not (shape == () and array.size == 1):
                raise ModelMismatchError(f"{self.name}: weight {name} has shape {array.shape}, "
                                         f"the config needs {shape}")
            restored[name] = torch.from_numpy(np.array(array).reshape(shape))
        network.load_state_dict(restored)
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        self._network = network.eval()
        self._fingerprint, self._runner = None, None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "FinetuneEmbedder":
        return cls(**config)

    def save(self, folder: str | Path) -> Path:
        """``config.json`` + ``weights.safetensors`` (+ ``training.json``, the run's history)."""
        folder = super().save(folder)
        if self.training_result is not None:
            from lookalike.storage import atomic_write_text

            atomic_write_text(Path(folder) / TRAINING_FILE,
                              json.dumps(self.training_result, indent=1))
        return folder


# ---- extraction and export ---------------------------------------------------------------------
def export_onnx(module: nn.Module, path: Path, channels: int, size: tuple[int, int],
                outputs: list[str]) -> None:
    """Export ``module`` (uint8 NCHW pixels at ``size`` in) to ONNX with a dynamic batch."""
    width, height = size
    example = torch.zeros((2, channels, height, width), dtype=torch.uint8)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter is chatty and deprecated
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["pixels"], output_names=outputs,
                          dynamic_axes={"pixels": {0: "batch"},
                                        **{name: {0: "batch"} for name in outputs}})


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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
        export_onnx(_FrontExport(network), path, int(images.shape[1]),
                    (int(images.shape[3]), int(images.shape[2])), ["activations", "features"])
        session = _session(path, threads)

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


class _OnnxLayerRunner:
    def __init__(self, embedder: FinetuneEmbedder) -> None:
        self.session = _session(embedder.build_onnx(), embedder.num_threads)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"pixels": pixels})[0]


class _TorchLayerRunner:
    def __init__(self, embedder: FinetuneEmbedder) -> None:
        self.module = _LayerExport(embedder.network, embedder.embedding_layer).eval()
        self.module = self.module.to(memory_format=torch.channels_last)
        self.num_threads = embedder.num_threads

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        with torch_threads(self.num_threads), torch.inference_mode():
            return self.module(torch.from_numpy(pixels)).numpy()
