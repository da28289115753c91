"""CNN feature maps pooled per window (:class:`FeatureMapWindows`, :class:`EfficientNetMaps`:
one ONNX Runtime pass over the scene, area-weighted means of the map under each window), fused
window features (:class:`FusionWindows`), and :func:`windowed_features`, which picks the fastest
path an embedder has."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from lookalike.caches import ProjectCaches
from lookalike.errors import LookalikeError
from lookalike.models.base import Embedder
from lookalike.recommend.window_features import (
    ColourWindows,
    CropWindows,
    GISTWindows,
    HSVHistogramAdapter,
    PHOGWindows,
    WindowFeatures,
)
from lookalike.recommend.windows import WindowGrid


class FusionWindows(WindowFeatures):
    """A fusion's window features: its parts' windowed features, combined with its weights."""

    def __init__(self, embedder: Embedder, pixels: np.ndarray, block: int = 1,
                 caches: ProjectCaches | None = None) -> None:
        super().__init__(embedder, pixels, block)
        self.parts = [windowed_features(part, pixels, block, caches=caches)
                      for part in embedder.parts]

    def raw(self, width: int, height: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return self.embedder.combine([p.for_windows(width, height, ys, xs) for p in self.parts])

    def raw_grid(self, grid: WindowGrid) -> np.ndarray:
        return self.embedder.combine([p.for_grid(grid) for p in self.parts])


def _coverage(starts: np.ndarray, stops: np.ndarray, cells: int) -> np.ndarray:
    """How much of each unit cell ``[c, c + 1)`` each span ``[start, stop)`` covers: ``[n, cells]``."""
    edges = np.arange(cells, dtype=np.float64)
    low = np.maximum(starts[:, None], edges[None, :])
    high = np.minimum(stops[:, None], edges[None, :] + 1.0)
    return np.clip(high - low, 0.0, None)


class FeatureMapWindows(WindowFeatures):
    """CNN window features: one forward pass over the scene, area-weighted pooling per window.

    The embedder must expose ``feature_map(image, scale) -> (array [h, w, C], stride)``, the
    feature map of the whole image scaled by ``scale`` before the network's global pooling,
    ``stride`` being how many *scene* pixels one map cell spans; and may expose
    ``pool_features(pooled [n, C])`` mapping a region's mean feature to its vector (identity for
    global average pooling). A window's mean is weighted by how much of each cell it covers, so
    windows need not align with cells; that weighting is separable, so a whole grid is two
    matrix products. ``scene_scale`` (default: the embedder's ``window_scene_scale`` or 1.5)
    upsamples the scene first so that small windows still span about a map cell (one cell is
    32 / 1.5 = 21 scene pixels).
    """

    def __init__(self, embedder: Embedder, pixels: np.ndarray, block: int = 1,
                 scene_scale: float | None = None) -> None:
        super().__init__(embedder, pixels, block)
        scale = scene_scale if scene_scale is not None else getattr(
            embedder, "window_scene_scale", 1.5)
        fmap, stride = embedder.feature_map(Image.fromarray(pixels), scale=scale)
        self.map = np.ascontiguousarray(fmap, dtype=np.float32)  # [h, w, C]
        self.stride = float(stride)
        # (grid key, column-weighted map, column areas) of the last grid shape; see raw_grid.
        self._columns: tuple[tuple[int, ...] | None, np.ndarray, np.ndarray] = (
            None, np.zeros((0, 0, 0), dtype=np.float32), np.zeros(0, dtype=np.float32))

    def _pool(self, pooled: np.ndarray) -> np.ndarray:
        hook = getattr(self.embedder, "pool_features", None)
        return hook(pooled) if hook is not None else pooled

    def raw(self, width: int, height: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        rows = _coverage(ys / self.stride, (ys + height) / self.stride, self.map.shape[0])
        cols = _coverage(xs / self.stride, (xs + width) / self.stride, self.map.shape[1])
        sums = np.einsum("nr,nc,rcd->nd", rows, cols, self.map, optimize=True)
        area = rows.sum(axis=1) * cols.sum(axis=1)
        return self._pool((sums / np.maximum(area, 1e-12)[:, None]).astype(np.float32))

    def raw_grid(self, grid: WindowGrid) -> np.ndarray:
        """Pooled map features of a grid (or a band of one) with two matrix products: the
        column weights are applied once per grid shape (``[h, nx, C]``, kept for the next band
        of the same grid), then the row weights of the band, restricted to the map rows the
        band's windows touch. (numpy/BLAS rather than PyTorch here: alternating PyTorch's
        OpenMP threads with the BLAS threads of the scorers made both wait for each other.)

        Bands are scored on several threads (:data:`SCORING_THREADS`), so the cache is one
        tuple read and replaced atomically: a thread never mixes one grid's columns with
        another's areas (it did when they were three attributes -- a shape error).
        """
        key = (grid.width, int(grid.xs[0]), len(grid.xs), grid.stride)
        cached_key, columns, column_area = self._columns
        if cached_key != key:
            cols = _coverage(grid.xs / self.stride, (grid.xs + grid.width) / self.stride,
                             self.map.shape[1]).astype(np.float32)  # [nx, w]
            columns = np.ascontiguousarray(np.matmul(cols[None, :, :], self.map))  # [h, nx, C]
            column_area = cols.sum(axis=1)
            self._columns = (key, columns, column_area)
        rows = _coverage(grid.ys / self.stride, (grid.ys + grid.height) / self.stride,
                         self.map.shape[0]).astype(np.float32)  # [ny, h]
        used = np.flatnonzero(rows.any(axis=0))
        low, high = int(used[0]), int(used[-1]) + 1
        sums = rows[:, low:high] @ columns[low:high].reshape(high - low, -1)
        area = rows.sum(axis=1)[:, None] * column_area[None, :]  # [ny, nx]
        pooled = sums.reshape(len(rows), len(grid.xs), -1)
        pooled /= np.maximum(area, 1e-12)[:, :, None]
        return self._pool(pooled.reshape(len(grid), -1))


class EfficientNetMaps:
    """``feature_map`` for the EfficientNet-Lite embedder: one pass of its network over the
    whole scaled scene, returning the last convolution's output (1,280 channels) before global
    pooling.

    The pass runs in ONNX Runtime (FP32) on a graph exported once per machine from the
    embedder's own PyTorch network with the scene's height and width left dynamic (uint8 pixels
    in, the Lite input scaling inside the graph), cached beside the embedder's ONNX files. On
    a 960 x 720 input it took 0.16 s of CPU against 1.0 s for PyTorch eager (same outputs to
    3e-5), which is most of shop-the-look's CNN budget. ``backend="torch"`` keeps the PyTorch
    pass (batch norm folded, channels-last). The catalogue's vectors may come from the
    embedder's int8 ONNX model; both compute the same features up to quantisation. The network
    and the session are kept in ``caches`` (a project's) when given, else by this object only.
    """

    #: Bump when the exported graph changes (part of the cached file's name).
    BUILD = 1

    def __init__(self, embedder: Embedder, backend: str = "onnx",
                 caches: ProjectCaches | None = None) -> None:
        if backend not in ("onnx", "torch"):
            raise LookalikeError(f"feature-map backend must be 'onnx' or 'torch', got {backend!r}")
        self.embedder = embedder
        self.backend = backend
        self.caches = caches if caches is not None else ProjectCaches()
        self.kind, self.dim = embedder.kind, embedder.dim

    @staticmethod
    def supports(embedder: Embedder) -> bool:
        return hasattr(embedder, "network") and embedder.kind.startswith("efficientnet")

    def _network(self) -> Any:
        return self.caches.feature_nets.get_or_make(self.embedder.embedder_id,
                                                    self._build_network)

    def _build_network(self) -> Any:
        import torch

        net = self.embedder.network()
        try:  # the embedder's own folding (same outputs, ~25% faster on CPU)
            from lookalike.models.efficientnet import _fold_batch_norms

            _fold_batch_norms(net)
        except ImportError:  # pragma: no cover - an older embedder module
            pass
        return net.to(memory_format=torch.channels_last)

    def onnx_path(self) -> Any:
        """The cached feature-map graph: ``<embedder_id>-featuremap-b<BUILD>-ort<version>.onnx``
        in the embedder's ONNX cache folder."""
        import onnxruntime

        from lookalike.models.efficientnet import default_cache_dir

        folder = getattr(self.embedder, "cache_dir", None) or default_cache_dir()
        return folder / (f"{self.embedder.embedder_id}-featuremap-b{self.BUILD}"
                         f"-ort{onnxruntime.__version__}.onnx")

    def _export(self, path: Any) -> None:
        import contextlib
        import io
        import os
        import tempfile
        import warnings

        import torch

        from lookalike.models.efficientnet import scale_pixels

        net = self._network()

        class FeatureMap(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # uint8 [1, H, W, 3]
                return self.net.extract_features(scale_pixels(pixels))

        path.parent.mkdir(parents=True, exist_ok=True)
        example = torch.zeros((1, 224, 224, 3), dtype=torch.uint8)
        with tempfile.TemporaryDirectory(prefix=".build-", dir=path.parent) as work:
            built = os.path.join(work, "featuremap.onnx")
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")  # the TorchScript exporter is chatty
                torch.onnx.export(FeatureMap().eval(), (example,), built, dynamo=False,
                                  opset_version=17, input_names=["pixels"],
                                  output_names=["features"],
                                  dynamic_axes={"pixels": {1: "height", 2: "width"},
                                                "features": {2: "rows", 3: "cols"}})
            os.replace(built, path)  # atomic: a reader sees the whole file or none

    def _session(self) -> Any:
        path = self.onnx_path()
        return self.caches.feature_sessions.get_or_make(str(path),
                                                        lambda: self._build_session(path))

    def _build_session(self, path: Any) -> Any:
        import onnxruntime as ort

        if not path.is_file():
            self._export(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        threads = getattr(self.embedder, "num_threads", None)
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        # Idle workers sleep instead of spinning (as the embedder's own runner does).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def feature_map(self, image: Image.Image, scale: float = 1.5) -> tuple[np.ndarray, float]:
        width, height = image.size
        scaled = image.resize((max(32, round(width * scale)), max(32, round(height * scale))),
                              Image.BILINEAR)
        pixels = np.asarray(scaled.convert("RGB"), dtype=np.uint8)
        if self.backend == "onnx":
            fmap = self._session().run(None, {"pixels": pixels[None]})[0][0]  # [C, h, w]
            fmap = np.ascontiguousarray(fmap.transpose(1, 2, 0))
        else:
            import torch

            net = self._network()
            with torch.inference_mode():
                x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float()
                x = (x * (1.0 / 127.5) - 1.0).contiguous(memory_format=torch.channels_last)
                fmap = net.extract_features(x)[0].permute(1, 2, 0).contiguous().numpy()
        return fmap, width / fmap.shape[1]


def windowed_features(embedder: Embedder, pixels: np.ndarray, block: int = 1,
                      fast: bool = True, caches: ProjectCaches | None = None) -> WindowFeatures:
    """The fastest :class:`WindowFeatures` for ``embedder`` (crop-and-embed when it has none).

    ``caches`` (a project's) keeps what scenes share (GIST filter banks, the EfficientNet
    feature-map network and session) for the next call; without it nothing is kept."""
    if fast:
        kind = embedder.kind
        if kind == "phog":
            return PHOGWindows(embedder, pixels, block)
        if kind == "gist":
            return GISTWindows(embedder, pixels, block, caches=caches)
        if kind == "fusion":
            return FusionWindows(embedder, pixels, block, caches=caches)
        if HSVHistogramAdapter.supports(embedder):
            return ColourWindows(HSVHistogramAdapter(embedder), pixels, block)  # type: ignore[arg-type]
        if EfficientNetMaps.supports(embedder):
            return FeatureMapWindows(EfficientNetMaps(embedder, caches=caches), pixels,  # type: ignore[arg-type]
                                     block)
        if hasattr(embedder, "pixel_bins") and hasattr(embedder, "histogram_features"):
            return ColourWindows(embedder, pixels, block)
        if hasattr(embedder, "feature_map"):
            return FeatureMapWindows(embedder, pixels, block)
    return CropWindows(embedder, pixels, block)


def has_fast_windows(embedder: Embedder) -> bool:
    """Whether ``embedder`` (or every part of a fusion) has a pooled, crop-free window path."""
    if embedder.kind == "fusion":
        return all(has_fast_windows(part) for part in embedder.parts)
    return (embedder.kind in ("phog", "gist") or HSVHistogramAdapter.supports(embedder)
            or EfficientNetMaps.supports(embedder)
            or (hasattr(embedder, "pixel_bins") and hasattr(embedder, "histogram_features"))
            or hasattr(embedder, "feature_map"))


def naive_window_features(embedder: Embedder, pixels: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Crop each box and embed it: the slow reference the fast paths are measured against."""
    return CropWindows(embedder, pixels).for_boxes(boxes)

