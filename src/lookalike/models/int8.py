"""int8 quantisation of the EfficientNet-Lite ONNX graph, and the self-check that guards it.

The recipe (:data:`RECIPE`): static QDQ quantisation, per-channel symmetric int8 weights, uint8
activations calibrated by MinMax on real catalogue photos, with the stem convolution left in
fp32. The stem sees the raw pixels, whose uint8 codes fill 0..255; with it quantised, x86 CPUs
without VNNI (whose ``vpmaddubsw`` kernel adds two uint8 x int8 products into a saturating
16-bit lane) drift far from fp32. Keeping it in fp32 costs no measurable speed.

Saturation can still bite deeper in the network on such CPUs, and a CPU we never met may have
kernels of its own, so every machine checks the int8 model before trusting it
(:func:`check_agreement`): the same photos are embedded with int8 and fp32, and int8 is used only
when the cosines clear :data:`MIN_MEAN_COSINE` and :data:`MIN_P1_COSINE`. The verdict is kept
per model and per CPU in a small JSON file (:func:`cached_verdict`), so the check runs once per
machine. The thresholds and the measurements behind them are in ``docs/embedders.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np



@dataclass(frozen=True)
class Recipe:
    """One way to quantise: activation and weight types, 7-bit weights or not, fp32 nodes."""

    name: str
    activations: str = "uint8"
    weights: str = "int8"
    reduce_range: bool = False
    fp32_nodes: tuple[str, ...] = ()


#: The recipes measured against each other (``benchmarks/int8_cpus.py --recipes``); the first is
#: the one the embedder uses.
RECIPES = (
    Recipe("u8s8-stem-fp32", fp32_nodes=("/_conv_stem/Conv",)),
    Recipe("u8s8"),
    Recipe("u8s8-reduce-range", reduce_range=True),
    Recipe("s8s8", activations="int8"),
    Recipe("u8u8", weights="uint8"),
    Recipe("u8s8-stem-fp32-reduce-range", reduce_range=True, fp32_nodes=("/_conv_stem/Conv",)),
)
#: Names the quantisation recipe in use; part of an int8 embedder's id, so vectors of two
#: recipes never share a cache or an index.
RECIPE = "qdq-perchannel-minmax-" + RECIPES[0].name
#: The self-check passes when the mean cosine to fp32 is at least this ...
MIN_MEAN_COSINE = 0.985
#: ... and so is the 1st percentile of the cosines at least this.
MIN_P1_COSINE = 0.95
#: Photos the self-check embeds twice (train photos of the bundled catalogue, not the
#: calibration ones).
CHECK_IMAGES = 64
#: CPU flags that decide which int8 kernels ONNX Runtime picks; part of the verdict's key.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
                "asimd", "asimddp", "i8mm", "sve")
#: Photos per calibration run: MinMax ranges do not depend on it, memory does (the calibration
#: graph runs unoptimised, so a few photos per run keep an int8 build's peak memory low).
_CALIBRATION_BATCH = 4


@dataclass(frozen=True)
class Verdict:
    """The outcome of one self-check: cosine statistics of int8 against fp32, and the CPU.

    ``passed`` is judged against the thresholds in force, not stored, so a release with other
    thresholds re-judges a cached verdict."""

    mean: float
    p1: float
    minimum: float
    images: int
    cpu: str

    @property
    def passed(self) -> bool:
        return self.mean >= MIN_MEAN_COSINE and self.p1 >= MIN_P1_COSINE

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed}

    def describe(self) -> str:
        return (f"cosine to fp32 mean {self.mean:.3f}, 1st percentile {self.p1:.3f}, "
                f"min {self.minimum:.3f} over {self.images} photos on {self.cpu}")


def cpu_description() -> tuple[str, list[str]]:
    """The CPU model name and which of :data:`KERNEL_FLAGS` it has (Linux; elsewhere a guess)."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu model") and value.strip():
                model = value.strip()
            elif key in ("flags", "features"):
                flags.update(value.split())
    return model, [flag for flag in KERNEL_FLAGS if flag in flags]


def cpu_key() -> str:
    """A short key for "this kind of CPU with this ONNX Runtime": the verdict cache's key."""
    import onnxruntime

    model, flags = cpu_description()
    blob = json.dumps([platform.machine(), model, flags, onnxruntime.__version__])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def check_agreement(int8_vectors: np.ndarray, fp32_vectors: np.ndarray) -> Verdict:
    """Compare row-wise the vectors of the same photos by int8 and by fp32."""
    a = int8_vectors / np.maximum(np.linalg.norm(int8_vectors, axis=1, keepdims=True), 1e-12)
    b = fp32_vectors / np.maximum(np.linalg.norm(fp32_vectors, axis=1, keepdims=True), 1e-12)
    cosines = (a * b).sum(axis=1)
    mean, p1 = float(cosines.mean()), float(np.percentile(cosines, 1))
    model, flags = cpu_description()
    cpu = f"{model} [{' '.join(flags) or 'no int8 SIMD flags'}]"
    return Verdict(mean=mean, p1=p1, minimum=float(cosines.min()), images=len(cosines), cpu=cpu)


def cached_verdict(path: Path, measure: Callable[[], Verdict]) -> Verdict:
    """The verdict stored at ``path``, or ``measure()`` stored there (best effort, atomic)."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        return Verdict(**json.loads(path.read_text()))
    verdict = measure()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(verdict), indent=2))
        os.replace(tmp, path)
    return verdict


def quantise(fp32: Path, out: Path, calibration: np.ndarray, recipe: Recipe = RECIPES[0]) -> None:
    """Write the int8 QDQ model of ``fp32`` to ``out`` by ``recipe`` (per-channel weights,
    MinMax ranges), calibrated on ``calibration`` pixels (uint8 ``[n, size, size, 3]``)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                          QuantFormat, QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.start = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.start >= len(calibration):
                return None
            self.start += _CALIBRATION_BATCH
            return {"pixels": calibration[self.start - _CALIBRATION_BATCH:self.start]}

        def rewind(self) -> None:
            self.start = 0

    prepared = out.with_name("prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=types[recipe.activations],
                    weight_type=types[recipe.weights], reduce_range=recipe.reduce_range,
                    calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=list(recipe.fp32_nodes))
