"""The fine-tuning network (method ``finetune``): ImageNet EfficientNet-Lite0 without its classifier
plus paper 002's head, split into a frozen ``front`` and a trained ``back``; its ONNX export and
the inference runners (ONNX Runtime or PyTorch) the embedder uses."""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lookalike.errors import LookalikeError
from lookalike.models.heads import make_classifier
from lookalike.threads import torch_threads

VARIANT = "efficientnet-lite0"
BACKBONE_DIM = 1280
N_BLOCKS = 16  # MBConv blocks of Lite0
#: Short side the default input size reaches by whole-number upsampling.
MIN_INPUT_SIDE = 112


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


class FrontExport(nn.Module):
    """pixels -> (front activations, pooled features): one ONNX pass gives both."""

    def __init__(self, network: FinetuneNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        activations = self.network.front(pixels)
        return activations, self.network.back(activations)


class LayerExport(nn.Module):
    def __init__(self, network: FinetuneNetwork, layer: str) -> None:
        super().__init__()
        self.network = network
        self.layer_name = layer

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network.layer(pixels, self.layer_name)




def default_input_size(image_size: Sequence[int]) -> tuple[int, int]:
    """The catalogue size times the smallest whole factor that makes the short side >= 112."""
    width, height = int(image_size[0]), int(image_size[1])
    factor = max(1, math.ceil(MIN_INPUT_SIDE / max(1, min(width, height))))
    return width * factor, height * factor



def size_pair(name: str, value: Any) -> tuple[int, int]:
    """``[width, height]`` (or one number for both) as two ints in 8..1024."""
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


def onnx_session(path: Path, threads: int | None):
    """An ONNX Runtime CPU session: all graph optimisations, ``threads`` intra-op threads, no
    spinning (the machine is shared)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])



class OnnxLayerRunner:
    """uint8 pixels -> the exported layer, in ONNX Runtime."""

    def __init__(self, path: Path, threads: int | None) -> None:
        self.session = onnx_session(path, threads)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"pixels": pixels})[0]


class TorchLayerRunner:
    """uint8 pixels -> one layer of the network, in PyTorch (channels-last, inference mode)."""

    def __init__(self, network: FinetuneNetwork, layer: str, threads: int | None) -> None:
        self.module = LayerExport(network, layer).eval()
        self.module = self.module.to(memory_format=torch.channels_last)
        self.num_threads = threads

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        with torch_threads(self.num_threads), torch.inference_mode():
            return self.module(torch.from_numpy(pixels)).numpy()
