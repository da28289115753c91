"""Where the products are in a scene photo: a small fully convolutional net and its boxes.

The net (:class:`SegNet`, ~0.2 M parameters, 0.8 MB) reads the scene scaled to :data:`INPUT_SIDE` px
(or another side, at inference) on its longer side and predicts, per 4 x 4 input cell, two
probabilities: *product* (any pixel of a placed product: the whole white rectangle of a pasted
photo, the object itself of a cut-out) and *core* (the middle of a product, which separates
products that touch or overlap). Boxes (:meth:`SceneSegmenter.proposals`) are the connected
components of the product map at a few thresholds plus a watershed of the product map seeded by
the cores; each is scored by its mean product probability ("objectness").

It is trained by lookalike on generated scenes of the **train** split only
(:mod:`lookalike.recommend.scene_generator`; ``scripts/train_scene_segmenter.py``), saved as
safetensors + JSON, and the package ships one (``lookalike/data/scene-segmenter``).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lookalike.caches import ProjectCaches
from lookalike.errors import LookalikeError
from lookalike.models.weights import WEIGHTS_FILE

KIND = "scene-segmenter"
#: The scene's longer side as the net reads it.
INPUT_SIDE = 256
#: Input pixels per output cell.
OUTPUT_STRIDE = 4
#: Input sides are padded to a multiple of this (the deepest feature map's stride).
PAD = 16
#: The segmenter shipped with the package.
PACKAGED = Path(__file__).resolve().parent.parent / "data" / "scene-segmenter"
#: Core of a product: the part of its box within this share of the box's half-sides of the
#: centre (and visible).
CORE_SHARE = 0.45
#: Peaks of the product mask's distance transform at least this many input pixels apart seed a
#: watershed that splits touching products (0: off; chosen on validation).
SPLIT_DISTANCE = 0


class SegmenterError(LookalikeError):
    """A scene segmenter that cannot be built, trained or loaded."""


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation,
                                   bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SegNet(nn.Module):
    """Encoder to 1/16 (with a dilated block for context), decoder with skips back to 1/4,
    two logits per cell."""

    def __init__(self, widths: Sequence[int] = (12, 24, 48, 64)) -> None:
        super().__init__()
        a, b, c, d = (int(w) for w in widths)
        self.down1 = nn.Sequential(_block(3, a, 2), _block(a, a))            # 1/2
        self.down2 = nn.Sequential(_block(a, b, 2), _block(b, b))            # 1/4
        self.down3 = nn.Sequential(_block(b, c, 2), _block(c, c))            # 1/8
        self.down4 = nn.Sequential(_block(c, d, 2), _block(d, d, dilation=2),
                                   _block(d, d, dilation=4))                 # 1/16
        self.up3 = _block(d + c, c)
        self.up2 = _block(c + b, b)
        self.head = nn.Conv2d(b, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = self.down2(self.down1(x))
        x3 = self.down3(x2)
        x4 = self.down4(x3)
        y = self.up3(torch.cat([F.interpolate(x4, size=x3.shape[-2:], mode="bilinear",
                                              align_corners=False), x3], 1))
        y = self.up2(torch.cat([F.interpolate(y, size=x2.shape[-2:], mode="bilinear",
                                              align_corners=False), x2], 1))
        return self.head(y)


def scene_input(image: Image.Image, side: int = INPUT_SIDE) -> tuple[np.ndarray, float]:
    """uint8 ``[3, H, W]`` (longer side ``side``, padded with zeros to a multiple of
    :data:`PAD`) and the scale from the photo to it."""
    rgb = image.convert("RGB")
    scale = side / max(rgb.size)
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    pixels = np.asarray(rgb.resize(size, Image.BILINEAR), np.uint8)
    height, width = -(-size[1] // PAD) * PAD, -(-size[0] // PAD) * PAD
    out = np.zeros((3, height, width), np.uint8)
    out[:, :size[1], :size[0]] = pixels.transpose(2, 0, 1)
    return out, scale


def scene_targets(instances: np.ndarray, boxes: Sequence[Sequence[int]], scale: float,
                  shape: tuple[int, int]) -> np.ndarray:
    """float16 ``[2, h, w]`` targets (product, core) at output resolution ``shape`` from a
    scene's instance map (``[H, W]``, 0 = background, ``i + 1`` = product ``i``) and boxes."""
    visible = instances > 0
    core = np.zeros_like(visible)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        hw, hh = (x1 - x0) / 2 * CORE_SHARE, (y1 - y0) / 2 * CORE_SHARE
        sl = (slice(max(0, int(cy - hh)), int(math.ceil(cy + hh))),
              slice(max(0, int(cx - hw)), int(math.ceil(cx + hw))))
        mine = instances[sl] == i + 1
        core[sl] |= mine if mine.mean() > 0.2 else (instances[sl] == i + 1) | (instances[sl] == 0)
    out = np.zeros((2, *shape), np.float16)
    h, w = shape
    cell = OUTPUT_STRIDE / scale
    for channel, mask in enumerate((visible, core)):
        tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
        size = (max(1, round(mask.shape[0] / cell)), max(1, round(mask.shape[1] / cell)))
        pooled = F.adaptive_avg_pool2d(tensor, size)[0, 0].numpy()
        out[channel, :min(h, size[0]), :min(w, size[1])] = pooled[:h, :w]
    return out


def split_touching(mask: np.ndarray, min_distance: int) -> np.ndarray:
    """Labels ``[H, W]`` of a binary mask split at its necks: a watershed of the distance
    transform seeded by its peaks at least ``min_distance`` px apart (0 = background)."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    distance = ndimage.distance_transform_edt(mask)
    components, _ = ndimage.label(mask)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=components,
                           exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=mask)


def _boxes_of(labels: np.ndarray, min_side: int) -> list[tuple[float, float, float, float]]:
    from scipy import ndimage

    out = []
    for found in ndimage.find_objects(labels):
        if found is None:
            continue
        ys, xs = found
        if ys.stop - ys.start >= min_side and xs.stop - xs.start >= min_side:
            out.append((xs.start, ys.start, xs.stop, ys.stop))
    return out


class ObjectnessMap:
    """The product probability map of one photo; :meth:`of` gives the mean probability inside
    boxes (photo pixels): how much of a box is product."""

    def __init__(self, product: np.ndarray, scale: float) -> None:
        self.scale = float(scale)
        self.product = np.asarray(product, dtype=np.float32)
        self.height, self.width = product.shape
        table = np.zeros((self.height + 1, self.width + 1))
        table[1:, 1:] = product.astype(np.float64).cumsum(0).cumsum(1)
        self.table = table

    def on_white(self, pixels: np.ndarray, low: float = 0.3, high: float = 0.6) -> np.ndarray:
        """``pixels`` (the ``[H, W, 3]`` photo of this map) faded to white where product
        probability <= ``low`` (untouched >= ``high``): a catalogue's studio backdrop."""
        size = (pixels.shape[1], pixels.shape[0])
        resized = Image.fromarray(self.product, mode="F").resize(size, Image.Resampling.BILINEAR)
        alpha = np.clip((np.asarray(resized) - low) / (high - low), 0.0, 1.0)[..., None]
        return np.rint(pixels * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)

    def of(self, boxes: np.ndarray) -> np.ndarray:
        """Mean product probability ``[n]`` inside each box ``(x0, y0, x1, y1)``."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4) * self.scale
        x0 = np.clip(np.floor(boxes[:, 0]), 0, self.width - 1).astype(np.int64)
        y0 = np.clip(np.floor(boxes[:, 1]), 0, self.height - 1).astype(np.int64)
        x1 = np.clip(np.ceil(boxes[:, 2]), x0 + 1, self.width).astype(np.int64)
        y1 = np.clip(np.ceil(boxes[:, 3]), y0 + 1, self.height).astype(np.int64)
        t = self.table
        sums = t[y1, x1] - t[y0, x1] - t[y1, x0] + t[y0, x0]
        return sums / ((x1 - x0) * (y1 - y0))


class SceneSegmenter:
    """``proposals(image)``: boxes of products in a photo and their objectness."""

    def __init__(self, widths: Sequence[int] = (12, 24, 48, 64), seed: int = 0) -> None:
        self.config: dict[str, Any] = {"kind": KIND, "widths": [int(w) for w in widths],
                                       "input_side": INPUT_SIDE, "seed": int(seed)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.network = SegNet(widths).eval()
        self.training: dict[str, Any] | None = None

    def maps(self, image: Image.Image, side: int | None = None
             ) -> tuple[np.ndarray, np.ndarray, float]:
        """Product and core probabilities ``[H, W]`` at the net's input resolution (longer side
        ``side``, default the training one; unpadded), and the scale from the photo to it."""
        pixels, scale = scene_input(image, side or self.config["input_side"])
        with torch.inference_mode():
            x = torch.from_numpy(pixels)[None].float().div_(127.5).sub_(1.0)
            logits = self.network(x)
            up = torch.sigmoid(F.interpolate(logits, size=pixels.shape[1:], mode="bilinear",
                                             align_corners=False))[0].numpy()
        height, width = round(image.height * scale), round(image.width * scale)
        return up[0, :height, :width], up[1, :height, :width], scale

    def proposals(self, image: Image.Image, thresholds: Sequence[float] = (0.3, 0.5, 0.7),
                  core_thresholds: Sequence[float] = (0.25, 0.5), min_side: int = 6,
                  dedupe: float = 0.9, split_distance: int = SPLIT_DISTANCE,
                  side: int | None = None) -> tuple[np.ndarray, np.ndarray, "ObjectnessMap"]:
        """Boxes ``[n, 4]`` (int, photo pixels) of likely products, best first, their
        objectness ``[n]`` and the :class:`ObjectnessMap` that scores any other box.

        Candidates: the connected components of the product map at each of ``thresholds``;
        for each of ``core_thresholds``, a watershed of the product map seeded by the core
        map's components, and each core component's box grown about its centre by
        ``1 / CORE_SHARE`` (a core is the middle of a product, so this is the product's box even
        when products touch); with ``split_distance``, the product mask (> 0.5) split by a
        watershed of its distance transform seeded by peaks ``split_distance`` px apart (touching
        products meet at a neck); ``side`` as in :meth:`maps`. Duplicates (IoU > ``dedupe``) go."""
        from scipy import ndimage
        from skimage.segmentation import watershed

        from lookalike.recommend.windows import nms

        product, core, scale = self.maps(image, side)
        scored = ObjectnessMap(product, scale)
        found: list[tuple[float, float, float, float]] = []
        structure = np.ones((3, 3), bool)
        for threshold in thresholds:
            labels, _ = ndimage.label(product > threshold, structure)
            found += _boxes_of(labels, min_side)
        for threshold in core_thresholds:
            seeds, count = ndimage.label(core > threshold, structure)
            if not count:
                continue
            found += _boxes_of(watershed(-product, seeds, mask=product > min(thresholds)),
                               min_side)
            for x0, y0, x1, y1 in _boxes_of(seeds, 2):
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                hw, hh = (x1 - x0) / 2 / CORE_SHARE, (y1 - y0) / 2 / CORE_SHARE
                found.append((cx - hw, cy - hh, cx + hw, cy + hh))
        if split_distance > 0:
            found += _boxes_of(split_touching(product > 0.5, split_distance), min_side)
        if not found:
            return np.zeros((0, 4), np.int64), np.zeros(0), scored
        boxes = np.array(found, np.float64) / scale
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, image.width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, image.height)
        boxes = np.round(boxes).astype(np.int64)
        boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
        if not len(boxes):
            return np.zeros((0, 4), np.int64), np.zeros(0), scored
        scores = scored.of(boxes)
        keep = nms(boxes, scores, dedupe, max_keep=len(boxes))
        return boxes[keep], scores[keep], scored

    # -- training ----------------------------------------------------------------------------------
    def fit(self, images: np.ndarray, targets: np.ndarray, *, epochs: int = 8,
            batch_size: int = 16, learning_rate: float = 3e-3, seed: int = 0,
            checkpoint: str | Path | None = None, stop_after: int | None = None,
            crop: int | None = None, on_epoch: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
        """Train on uint8 scenes ``[n, 3, H, W]`` and float targets ``[n, 2, H/4, W/4]``
        (:func:`scene_targets`): binary cross-entropy plus soft Dice on the product map, half
        of each batch mirrored, AdamW with a one-cycle schedule over ``epochs``. With
        ``checkpoint`` (a file) each epoch is saved there and a rerun resumes after the last
        saved epoch; ``stop_after`` ends training after that many epochs (the schedule stays
        the one of ``epochs``); ``crop`` trains on random ``crop`` x ``crop`` input windows (one
        per batch, on the :data:`PAD` grid): the net is fully convolutional, and a window costs a
        fraction of a whole scene."""
        from rich.progress import Progress
        from safetensors.torch import load_file, save_file

        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=learning_rate,
                                      weight_decay=1e-4)
        steps = epochs * math.ceil(len(images) / batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps,
                                                       pct_start=0.15)
        history: list[dict[str, float]] = []
        start = 0
        path = Path(checkpoint) if checkpoint is not None else None
        if path is not None and path.is_file():
            tensors = load_file(str(path))
            meta = json.loads(path.with_suffix(".json").read_text())
            self.network.load_state_dict({k[4:]: v for k, v in tensors.items()
                                          if k.startswith("net.")})
            history, start = meta["history"], meta["epoch"]
            with warnings.catch_warnings():  # replaying the schedule before any step
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(start * math.ceil(len(images) / batch_size)):
                    schedule.step()
        started = time.perf_counter()
        with Progress(transient=True) as progress:
            bar = progress.add_task("segmenter", total=epochs, completed=start)
            for epoch in range(start, min(epochs, stop_after or epochs)):
                self.network.train()
                order = torch.randperm(len(images), generator=generator)
                total, seen = 0.0, 0
                for begin in range(0, len(images), batch_size):
                    rows = order[begin:begin + batch_size].numpy()
                    x = torch.from_numpy(images[rows]).float().div_(127.5).sub_(1.0)
                    y = torch.from_numpy(targets[rows].astype(np.float32))
                    if crop is not None:
                        x, y = _crop_batch(x, y, crop, generator)
                    flip = torch.rand(len(rows), generator=generator) < 0.5
                    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                    y = torch.where(flip[:, None, None, None], y.flip(-1), y)
                    loss = segmentation_loss(self.network(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    total, seen = total + float(loss.detach()) * len(rows), seen + len(rows)
                history.append({"epoch": epoch + 1, "loss": total / seen,
                                "seconds": time.perf_counter() - started})
                if path is not None:
                    save_file({f"net.{k}": v.contiguous()
                               for k, v in self.network.state_dict().items()}, str(path))
                    path.with_suffix(".json").write_text(json.dumps(
                        {"epoch": epoch + 1, "history": history}))
                if on_epoch is not None:
                    on_epoch(history[-1])
                progress.update(bar, advance=1)
        self.network.eval()
        self.training = {"epochs": len(history), "scheduled_epochs": epochs,
                         "scenes": int(len(images)), "history": history, "crop": crop,
                         "batch_size": batch_size, "learning_rate": learning_rate}
        return self.training

    # -- persistence -------------------------------------------------------------------------------
    def save(self, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """``config.json`` + ``weights.safetensors`` into ``folder`` (written atomically)."""
        from lookalike.models.weights import save_network

        return save_network(folder, self.network,
                            {**self.config, "training": self.training, **(extra or {})})

    @classmethod
    def load(cls, folder: str | Path) -> "SceneSegmenter":
        """A segmenter saved with :meth:`save` (JSON and safetensors only; runs no code)."""
        from lookalike.models.weights import read_network, restore_module

        config, tensors = read_network(folder, KIND, "scene segmenter", SegmenterError)
        segmenter = cls(widths=config["widths"], seed=config.get("seed", 0))
        segmenter.config["input_side"] = int(config.get("input_side", INPUT_SIDE))
        segmenter.config.update({k: config[k] for k in ("trained_on",) if k in config})
        try:
            restore_module(segmenter.network, tensors, f"{folder}: scene segmenter")
        except LookalikeError as error:
            raise SegmenterError(str(error)) from None
        segmenter.network.eval()
        segmenter.training = config.get("training")
        return segmenter


def _crop_batch(x: torch.Tensor, y: torch.Tensor, crop: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random ``crop`` x ``crop`` window (on the :data:`PAD` grid) of inputs and targets."""
    height, width = x.shape[-2:]
    top = int(torch.randint(0, max(1, (height - crop) // PAD + 1), (1,), generator=generator)) * PAD
    left = int(torch.randint(0, max(1, (width - crop) // PAD + 1), (1,), generator=generator)) * PAD
    s = OUTPUT_STRIDE
    return (x[..., top:top + crop, left:left + crop],
            y[..., top // s:(top + crop) // s, left // s:(left + crop) // s])


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on both maps plus soft Dice on the product map."""
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    p, t = torch.sigmoid(logits[:, 0]), targets[:, 0]
    dice = 1 - (2 * (p * t).sum((1, 2)) + 1) / (p.sum((1, 2)) + t.sum((1, 2)) + 1)
    return bce + dice.mean()


def packaged_segmenter(caches: ProjectCaches | None = None) -> SceneSegmenter | None:
    """The segmenter shipped in the package (None when absent), loaded once per ``caches``."""
    def load() -> SceneSegmenter | None:
        return SceneSegmenter.load(PACKAGED) if (PACKAGED / WEIGHTS_FILE).is_file() else None

    return load() if caches is None else caches.segmenters.get_or_make(PACKAGED, load)
