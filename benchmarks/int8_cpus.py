"""The int8 self-check on other CPU kinds: what the default embedder does where VNNI is missing.

    python benchmarks/int8_cpus.py                     # this CPU + QEMU's Haswell (AVX2, no VNNI)
    python benchmarks/int8_cpus.py --cpus Haswell,EPYC --size 112
    python benchmarks/int8_cpus.py --recipes           # + every recipe in lookalike.models.int8

Each CPU kind runs in its own process: this machine's CPU natively, the others under QEMU's
user-mode emulator (Debian's ``qemu-user``: ``qemu-x86_64 -cpu MODEL``), which executes the real
ONNX Runtime binary with only the instructions that model has, so ONNX Runtime picks the int8
kernels that CPU would get (e.g. AVX2 ``vpmaddubsw`` instead of AVX-512 VNNI). Emulation is
~100x slower, so only the self-check's own photos are embedded there, and no speed is reported
for emulated CPUs. (QEMU passes the host's ``/proc/cpuinfo`` through, so the CPU name recorded
for an emulated run is the host's; the ``cpu`` column names the emulated model.)

Per CPU kind: the self-check's cosine statistics (mean / 1st percentile / min over its 64
photos), whether int8 passed, the precision the default embedder then uses, and how far the
default's vectors are from fp32's on 32 test-split product photos (max |difference| and the
cosine min / mean). ONNX files are built once, natively, and copied into each run's private
cache folder, so every run computes its own verdict. ``--recipes`` adds, per CPU kind, the
cosine statistics of every quantisation recipe in ``lookalike.models.int8.RECIPES`` against
fp32 on the same photos: the evidence for the recipe in use. Results:
``benchmarks/results/int8_cpus.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import print_table, write_results  # noqa: E402

TEST_PHOTOS = 32


def worker(size: int) -> dict[str, Any]:
    """Run in the CPU under test: the self-check, the default's precision, its drift."""
    import pandas as pd
    from PIL import Image

    from lookalike.catalogue.sources import require_products_parquet
    from lookalike.models.efficientnet import EfficientNetLite0Embedder

    default = EfficientNetLite0Embedder(image_size=size)
    verdict = default.int8_verdict()
    table = pd.read_parquet(require_products_parquet(), columns=["split", "image_jpeg"])
    photos = [Image.open(io.BytesIO(blob)).convert("RGB")
              for blob in table[table["split"] == "test"]["image_jpeg"].head(TEST_PHOTOS)]
    vectors = default.embed(photos)
    fp32 = EfficientNetLite0Embedder(image_size=size, precision="fp32").embed(photos)
    cosine = (vectors * fp32).sum(axis=1)
    return {"self_check": verdict.to_json(), "default_uses": default.effective_precision,
            "default_id": default.embedder_id, "test_photos": len(photos),
            "default_vs_fp32_max_abs": float(np.abs(vectors - fp32).max()),
            "default_vs_fp32_cos_min": float(cosine.min()),
            "default_vs_fp32_cos_mean": float(cosine.mean())}


def recipes_worker(size: int, folder: Path) -> dict[str, Any]:
    """Run in the CPU under test: each recipe's int8 vectors against fp32's, check photos."""
    import onnxruntime as ort

    from lookalike.models import int8
    from lookalike.models.efficientnet import EfficientNetLite0Embedder, check_images

    model = EfficientNetLite0Embedder(image_size=size)
    pixels = np.stack([model.prepare(image) for image in check_images()])

    def run(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"pixels": pixels})[0]

    fp32 = run(folder / "fp32.onnx")
    return {recipe.name: int8.check_agreement(run(folder / f"{recipe.name}.onnx"), fp32).to_json()
            for recipe in int8.RECIPES}


def build_onnx(size: int, folder: Path, recipes: bool) -> None:
    """Build the int8 and fp32 ONNX files natively into ``folder`` (the shared-cache layout),
    and with ``recipes`` one int8 file per recipe into ``folder/recipes``."""
    from lookalike.models import int8
    from lookalike.models.efficientnet import EfficientNetLite0Embedder, calibration_images

    model = EfficientNetLite0Embedder(image_size=size, cache_dir=folder / "onnx")
    for precision in ("int8", "fp32"):
        model.build_onnx(precision)
    if recipes:
        (folder / "recipes").mkdir()
        shutil.copyfile(model.onnx_path("fp32"), folder / "recipes" / "fp32.onnx")
        images, _ = calibration_images()
        calibration = np.stack([model.prepare(image) for image in images])
        for recipe in int8.RECIPES:
            int8.quantise(model.onnx_path("fp32"), folder / "recipes" / f"{recipe.name}.onnx",
                          calibration, recipe)


def run_on(cpu: str, size: int, built: Path, recipes: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"cpu": cpu, "size": size}
    with tempfile.TemporaryDirectory(prefix="lookalike-int8-cpu-") as cache:
        shutil.copytree(built / "onnx", Path(cache) / "onnx")
        env = dict(os.environ, LOOKALIKE_CACHE_DIR=cache)
        row.update(in_cpu(cpu, ["--worker", str(size)], env))
        if recipes:
            row["recipes"] = in_cpu(cpu, ["--recipes-worker", str(size), str(built / "recipes")],
                                    env)
    return row


def in_cpu(cpu: str, arguments: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run this script with ``arguments`` natively or under QEMU's ``cpu`` model."""
    command = [sys.executable, __file__, *arguments]
    if cpu != "native":
        command = ["qemu-x86_64", "-cpu", cpu, *command]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{cpu}: worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpus", default="native,Haswell",
                        help="'native' and QEMU CPU models (qemu-x86_64 -cpu help)")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--recipes", action="store_true", help="also compare every recipe")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--recipes-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    if args.recipes_worker:
        size, folder = args.recipes_worker
        print(json.dumps(recipes_worker(int(size), Path(folder))))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="lookalike-int8-build-") as built:
        build_onnx(args.size, Path(built), args.recipes)
        for cpu in args.cpus.split(","):
            rows.append(run_on(cpu, args.size, Path(built), args.recipes))
            print(json.dumps(rows[-1]), flush=True)
    print_table(f"int8 self-check per CPU kind, {args.size} px",
                [{"cpu": r["cpu"], "check mean": r["self_check"]["mean"],
                  "check p1": r["self_check"]["p1"], "check min": r["self_check"]["minimum"],
                  "int8 passed": r["self_check"]["passed"], "default uses": r["default_uses"],
                  "default vs fp32 cos min": r["default_vs_fp32_cos_min"],
                  "max |diff|": r["default_vs_fp32_max_abs"]} for r in rows])
    for row in rows:
        for name, verdict in row.get("recipes", {}).items():
            print(f"{row['cpu']:>8} {name:>28}: mean {verdict['mean']:.4f} "
                  f"p1 {verdict['p1']:.4f} min {verdict['minimum']:.4f}")
    path = write_results("int8_cpus", {
        "command": " ".join(["python", "benchmarks/int8_cpus.py", *sys.argv[1:]]),
        "emulator": "qemu-x86_64 (Debian qemu-user) for every cpu but 'native'", "rows": rows},
        quick=False, seeds=[])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
