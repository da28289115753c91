"""Train the scene segmenter that ships in the package (``src/lookalike/data/scene-segmenter``).

Recipe of the shipped weights: ``--scenes`` generated scenes of the **train** split only (train
backgrounds, train products; :mod:`lookalike.recommend.scene_generator`'s default
distribution, cut-outs and pasted photos mixed), ``--epochs`` epochs, seed 0. The generated
scenes are kept in ``benchmarks/.cache/segmenter/`` and each epoch is checkpointed there, so an
interrupted run resumes. Run it under ``nice -n 19``.

    nice -n 19 python scripts/train_scene_segmenter.py                 # the packaged model
    python scripts/train_scene_segmenter.py --out /tmp/seg --scenes 200 --epochs 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

from lookalike.catalogue.sources import load_products_frame
from lookalike.recommend.scene_backgrounds import SPLIT_SEED, split_manifest
from lookalike.recommend.scene_generator import SceneGenerator, SceneSpec
from lookalike.recommend.segmenter import OUTPUT_STRIDE, PACKAGED, SceneSegmenter, scene_input, \
    scene_targets

CACHE = Path(__file__).resolve().parents[1] / "benchmarks" / ".cache" / "segmenter"


def training_scenes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` train-split scenes as the net's inputs and targets (cached on disk)."""
    path = CACHE / f"train-{n}-{seed}-{SPLIT_SEED}.npz"
    if path.is_file():
        data = np.load(path)
        return data["images"], data["targets"]
    frame = load_products_frame()
    generator = SceneGenerator(frame, "train", SceneSpec(), seed=SPLIT_SEED)
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in track(range(n), description="generating train scenes"):
        scene = generator.scene(rng)
        pixels, scale = scene_input(scene.image)
        shape = (pixels.shape[1] // OUTPUT_STRIDE, pixels.shape[2] // OUTPUT_STRIDE)
        images.append(pixels)
        targets.append(scene_targets(scene.instances, [p.box for p in scene.products], scale,
                                     shape))
    images_array, targets_array = np.stack(images), np.stack(targets)
    CACHE.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.npz")
    np.savez(temporary, images=images_array, targets=targets_array)
    temporary.replace(path)
    return images_array, targets_array


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PACKAGED)
    parser.add_argument("--scenes", type=int, default=1600)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--more", default="",
                        help="further scene sets 'N:SEED,...' (each cached) trained on as well")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from a saved segmenter (e.g. the packaged one)")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--crop", type=int, default=None,
                        help="train on random crop x crop windows of the net's input")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="end after this many epochs (the schedule stays that of --epochs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sets = [(args.scenes, args.seed)] + [(int(n), int(s)) for n, s in
                                          (part.split(":") for part in args.more.split(",") if part)]
    loaded = [training_scenes(n, seed) for n, seed in sets]
    images = np.concatenate([pair[0] for pair in loaded])
    targets = np.concatenate([pair[1] for pair in loaded])
    del loaded
    segmenter = SceneSegmenter.load(args.init) if args.init else SceneSegmenter(seed=args.seed)
    previous = segmenter.training
    CACHE.mkdir(parents=True, exist_ok=True)
    tag = "+".join(f"{n}:{seed}" for n, seed in sets) + ("-init" if args.init else "") + \
        (f"-crop{args.crop}" if args.crop else "")
    checkpoint = CACHE / f"checkpoint-{tag}-{args.epochs}-{args.seed}.safetensors"
    segmenter.fit(images, targets, epochs=args.epochs, seed=args.seed, checkpoint=checkpoint,
                  learning_rate=args.learning_rate, crop=args.crop,
                  stop_after=args.stop_after,
                  on_epoch=lambda row: print(f"epoch {row['epoch']}: loss {row['loss']:.4f} "
                                             f"({row['seconds']:.0f} s)", flush=True))
    manifest = split_manifest()
    extra = {"trained_on": {"split": "train", "scene_sets": [list(x) for x in sets],
                            "initialised_from": args.init.name if args.init else None,
                            "previous_training": previous, "split_seed": SPLIT_SEED,
                            "spec": SceneSpec().to_json(),
                            "train_photos": manifest["splits"]["train"]["photos"],
                            "train_procedural": manifest["splits"]["train"]["procedural"]}}
    print(f"saved to {segmenter.save(args.out, extra)}")


if __name__ == "__main__":
    main()
