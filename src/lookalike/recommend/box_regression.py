"""Learned box regression for shop-the-look: move a region's edges onto the product inside it.

Why: crop similarity tells *which* product a shopper wants but is a blunt localiser -- a window
a little too loose around the product scores almost as well as a tight one, so the best-scoring
window often overlaps the product by less than half (the scene benchmark's main loss). R-CNN
(Girshick et al., 2014) fixed the same problem with a regressor from a region to corrections of
its box; here it is a small CNN that sees the region with ``context`` around it and predicts
R-CNN's four deltas (centre shift in units of the box, log of the width and height ratios).

It is trained by lookalike itself, with no labelled photos: scenes are generated from real
catalogue photos placed on real background photos (:mod:`lookalike.recommend.scenes`, the
catalogue's *train* split only, half of them cut out of their backdrop), and each placed product
gives boxes jittered around its known box. Weights are saved as safetensors + JSON like every
model, and the package ships one trained on the products catalogue
(``lookalike/data/box-regressor``) so ``look`` uses it by default; ``lookalike train-boxes``
trains one on a shop's own catalogue.
"""

from __future__ import annotations

import math
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
from lookalike.layout import BOX_REGRESSOR_DIR
from lookalike.models.datasets import ImageTensors
from lookalike.models.training import Task, TrainConfig, TrainResult, train
from lookalike.models.weights import WEIGHTS_FILE

KIND = "box-regressor"
#: R-CNN's normalisation of the deltas (dx, dy, dw, dh): each is divided by this so the four
#: losses have similar scales.
DELTA_SCALES = (0.1, 0.1, 0.2, 0.2)
#: The regressor shipped with the package (trained on the products catalogue's train split).
PACKAGED = Path(__file__).resolve().parent.parent / "data" / "box-regressor"


class BoxRegressionError(LookalikeError):
    """A box regressor that cannot be built, trained or loaded."""


# ---- box arithmetic ------------------------------------------------------------------------------
def encode_deltas(boxes: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """R-CNN deltas ``[n, 4]`` that move ``boxes`` onto ``truths`` (both ``[n, 4]`` x0 y0 x1 y1)."""
    boxes, truths = np.asarray(boxes, np.float64), np.asarray(truths, np.float64)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    tw, th = truths[:, 2] - truths[:, 0], truths[:, 3] - truths[:, 1]
    return np.stack([((truths[:, 0] + truths[:, 2]) - (boxes[:, 0] + boxes[:, 2])) / 2 / w,
                     ((truths[:, 1] + truths[:, 3]) - (boxes[:, 1] + boxes[:, 3])) / 2 / h,
                     np.log(tw / w), np.log(th / h)], axis=1)


def apply_deltas(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """The boxes (float ``[n, 4]``) that ``deltas`` make of ``boxes``; the inverse of
    :func:`encode_deltas`. Size changes are capped at x4 / /4 per step."""
    boxes, deltas = np.asarray(boxes, np.float64), np.asarray(deltas, np.float64)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 + deltas[:, 0] * w
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 + deltas[:, 1] * h
    nw = w * np.exp(np.clip(deltas[:, 2], -math.log(4), math.log(4)))
    nh = h * np.exp(np.clip(deltas[:, 3], -math.log(4), math.log(4)))
    return np.stack([cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2], axis=1)


def _iou_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of each row pair of two ``[n, 4]`` box tensors."""
    ix = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    iy = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = ix * iy
    area = lambda t: (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _unit_boxes(deltas: torch.Tensor) -> torch.Tensor:
    """What ``deltas`` make of the unit box (so IoUs can be measured without the scene)."""
    w, h = torch.exp(deltas[:, 2].clamp(-1.4, 1.4)), torch.exp(deltas[:, 3].clamp(-1.4, 1.4))
    cx, cy = 0.5 + deltas[:, 0], 0.5 + deltas[:, 1]
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)


def context_crops(pixels: np.ndarray, boxes: np.ndarray, context: float, size: int
                  ) -> np.ndarray:
    """uint8 ``[n, 3, size, size]``: each box grown ``context`` times about its centre, cut
    from the ``[H, W, 3]`` scene (outside the scene is black) and resized to ``size``."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    out = np.empty((len(boxes), 3, size, size), dtype=np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.float64)):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half_w, half_h = (x1 - x0) * context / 2, (y1 - y0) * context / 2
        crop = image.crop((round(cx - half_w), round(cy - half_h),
                           round(cx + half_w), round(cy + half_h)))
        out[i] = np.asarray(crop.resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)
    return out


# ---- the network ---------------------------------------------------------------------------------
class BoxNet(nn.Module):
    """Conv (3x3, batch norm, ReLU, 2x2 max-pool) blocks, then two dense layers to 4 deltas.

    The spatial map is flattened, not pooled away: where the edges are *is* the answer."""

    def __init__(self, input_size: int, channels: Sequence[int], hidden: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 3
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            previous = width
        self.features = nn.Sequential(*layers)
        cells = input_size // 2 ** len(channels)
        if cells < 1:
            raise BoxRegressionError(f"input_size {input_size} is too small for "
                                     f"{len(channels)} pooling blocks")
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(previous * cells * cells, hidden),
                                  nn.ReLU(inplace=True), nn.Linear(hidden, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BoxRegressionTask(Task):
    """Smooth-L1 on the scaled deltas; half of each batch is mirrored (and its x shift negated).
    Validation reports the loss and the mean IoU of the corrected boxes with the truth."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])  # pixels in [-1, 1]
        self.scales = torch.tensor(DELTA_SCALES, dtype=torch.float32)

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise BoxRegressionError("box regression needs target deltas")
        if self.module.training:
            flip = torch.rand(len(inputs)) < 0.5
            inputs = torch.where(flip[:, None, None, None], inputs.flip(-1), inputs)
            labels = labels.clone()
            labels[flip, 0] = -labels[flip, 0]
        return F.smooth_l1_loss(self.module(inputs), labels / self.scales, beta=1.0)

    def validation_sums(self, inputs: torch.Tensor, labels: torch.Tensor | None
                        ) -> dict[str, float]:
        predicted = self.module(inputs) * self.scales
        iou = _iou_rows(_unit_boxes(predicted), _unit_boxes(labels))
        before = _iou_rows(_unit_boxes(torch.zeros_like(labels)), _unit_boxes(labels))
        return {"loss": float(self.loss(inputs, labels)) * len(inputs),
                "iou": float(iou.sum()), "iou_before": float(before.sum())}


# ---- the regressor ----------------------------------------------------------------------------
class BoxRegressor:
    """Refines boxes of a scene photo: ``refine(pixels, boxes)``.

    ``context``: how much of the surround the network sees (2.0: a box twice the region's
    size, so a region off by half its size still shows the product's edges); ``input_size``:
    the side the context crop is resized to; ``channels`` / ``hidden``: the network's widths.
    """

    def __init__(self, context: float = 2.0, input_size: int = 64,
                 channels: Sequence[int] = (16, 32, 64, 128), hidden: int = 256,
                 seed: int = 0) -> None:
        if context < 1.0:
            raise BoxRegressionError(f"context must be >= 1, got {context}")
        self.config = {"kind": KIND, "context": float(context), "input_size": int(input_size),
                       "channels": [int(c) for c in channels], "hidden": int(hidden),
                       "seed": int(seed)}
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
            torch.manual_seed(seed)
            self.network = BoxNet(int(input_size), self.config["channels"], int(hidden)).eval()
        self.training: dict[str, Any] | None = None

    # -- use ---------------------------------------------------------------------------------------
    def deltas(self, pixels: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """The predicted R-CNN deltas ``[n, 4]`` of ``boxes`` in the ``[H, W, 3]`` scene."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if not len(boxes):
            return np.zeros((0, 4))
        crops = context_crops(pixels, boxes, self.config["context"], self.config["input_size"])
        task = BoxRegressionTask(self.network)
        with torch.inference_mode():
            predicted = self.network(task.prepare(torch.from_numpy(crops)))
        return predicted.numpy().astype(np.float64) * np.array(DELTA_SCALES)

    def refine(self, pixels: np.ndarray, boxes: np.ndarray, steps: int = 2) -> np.ndarray:
        """``boxes`` moved onto the objects in them: ``steps`` rounds of predict-and-apply
        (the second round starts from a better-centred crop, as in cascade R-CNN), rounded
        and clipped to the scene. Int64 ``[n, 4]``."""
        height, width = pixels.shape[:2]
        current = np.asarray(boxes, np.float64).reshape(-1, 4)
        for _ in range(max(0, steps)):
            current = apply_deltas(current, self.deltas(pixels, current))
            current[:, [0, 2]] = current[:, [0, 2]].clip(0, width)
            current[:, [1, 3]] = current[:, [1, 3]].clip(0, height)
        out = np.round(current).astype(np.int64)
        # Never return an empty box: keep at least 2 px each way.
        out[:, 2] = np.maximum(out[:, 2], np.minimum(out[:, 0] + 2, width))
        out[:, 3] = np.maximum(out[:, 3], np.minimum(out[:, 1] + 2, height))
        out[:, 0] = np.minimum(out[:, 0], out[:, 2] - 2).clip(0)
        out[:, 1] = np.minimum(out[:, 1], out[:, 3] - 2).clip(0)
        return out

    # -- training ----------------------------------------------------------------------------------
    def fit(self, samples: ImageTensors, checkpoint_dir: str | Path | None = None,
            resume: bool = False, **training: Any) -> TrainResult:
        """Train on context crops (``samples.images``, uint8 at ``input_size``) and their target
        deltas (``samples.labels``, float ``[n, 4]``), e.g. from :func:`box_samples`. Keyword
        arguments are :class:`~lookalike.models.training.TrainConfig` fields."""
        if samples.labels is None or samples.labels.ndim != 2 or samples.labels.shape[1] != 4:
            raise BoxRegressionError("samples need float target deltas [n, 4] as labels")
        size = self.config["input_size"]
        if tuple(samples.images.shape[1:]) != (3, size, size):
            raise BoxRegressionError(f"samples are {tuple(samples.images.shape[1:])}, this "
                                     f"regressor reads (3, {size}, {size})")
        defaults = {"epochs": 10, "learning_rate": 2e-3, "monitor": "val_iou", "mode": "max",
                    "patience": 3, "batch_size": 128}
        config = TrainConfig.from_dict({**defaults, **training})
        result = train(BoxRegressionTask(self.network), samples, config,
                       checkpoint_dir=checkpoint_dir, resume=resume)
        self.network.eval()
        self.training = result.to_json()
        return result

    # -- persistence -------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """``config.json`` + ``weights.safetensors`` into ``folder`` (written atomically)."""
        from lookalike.models.weights import save_network

        return save_network(folder, self.network, {**self.config, "training": self.training})

    @classmethod
    def load(cls, folder: str | Path) -> "BoxRegressor":
        """A regressor saved with :meth:`save` (JSON and safetensors only; runs no code)."""
        from lookalike.models.weights import read_network

        config, arrays = read_network(folder, KIND, "box regressor", BoxRegressionError)
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
        regressor = cls(context=config["context"], input_size=config["input_size"],
                        channels=config["channels"], hidden=config["hidden"],
                        seed=config.get("seed", 0))
        try:
            regressor.network.load_state_dict(tensors)
        except RuntimeError as error:
            raise BoxRegressionError(f"{folder}: weights do not match the config "
                                     f"({str(error).splitlines()[0]})") from None
        regressor.network.eval()
        regressor.training = config.get("training")
        return regressor


def packaged_box_regressor(caches: ProjectCaches | None = None) -> BoxRegressor | None:
    """The regressor shipped in the package, or None when it is not installed; loaded once per
    ``caches`` (a project's), else on every call."""
    def load() -> BoxRegressor | None:
        return BoxRegressor.load(PACKAGED) if (PACKAGED / WEIGHTS_FILE).is_file() else None

    return load() if caches is None else caches.box_regressors.get_or_make(PACKAGED, load)


# ---- training data ------------------------------------------------------------------------------
def jitter_boxes(truth: np.ndarray, n: int, rng: np.random.Generator,
                 min_iou: float = 0.25, aspect: float | None = 4 / 3) -> np.ndarray:
    """``n`` boxes around ``truth`` like the windows a search would return: centre shifted by
    up to about a third of the size, size x0.6-1.7, and (half of them) the window shape
    ``aspect`` (height / width) rather than the truth's; each overlapping ``truth`` by at least
    ``min_iou``."""
    from lookalike.recommend.windows import box_iou

    x0, y0, x1, y1 = (float(v) for v in truth)
    w, h = x1 - x0, y1 - y0
    out: list[np.ndarray] = []
    while len(out) < n:
        scale = math.exp(rng.normal(0.0, 0.25))
        bw = w * scale * math.exp(rng.normal(0.0, 0.1))
        bh = h * scale * math.exp(rng.normal(0.0, 0.1))
        if aspect is not None and rng.random() < 0.5:
            side = math.sqrt(bw * bh / aspect)
            bw, bh = side, side * aspect
        cx = (x0 + x1) / 2 + rng.normal(0.0, 0.15) * bw
        cy = (y0 + y1) / 2 + rng.normal(0.0, 0.15) * bh
        box = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
        if box_iou(np.asarray(truth, np.float64), box[None])[0] >= min_iou:
            out.append(box)
    return np.stack(out)


def box_samples(open_photo: Callable[[str], Image.Image], ids: Sequence[str], n_scenes: int,
                seed: int = 0, *, per_product: int = 6, cutout_share: float = 0.5,
                context: float = 2.0, input_size: int = 64,
                progress: bool | None = None) -> ImageTensors:
    """Training data for :class:`BoxRegressor` from generated scenes.

    ``open_photo(id)`` gives the catalogue photo of each of ``ids`` (use the train split, so
    benchmark scenes built from the test split stay unseen). Each scene places five photos on a
    random background photo (``cutout_share`` of the scenes without the photos' backdrop); each
    placed product gives ``per_product`` jittered boxes (:func:`jitter_boxes`) with their
    context crops (uint8 images) and target deltas (float labels ``[n, 4]``).
    """
    import sys

    from rich.progress import Progress

    from lookalike.recommend.scenes import BACKGROUNDS, compose_scene

    ids = list(ids)
    if len(ids) < 5:
        raise BoxRegressionError(f"need at least 5 catalogue photos, got {len(ids)}")
    rng = np.random.default_rng(seed)
    images: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    show = sys.stderr.isatty() if progress is None else progress
    with Progress(disable=not show, transient=True) as bar:
        task = bar.add_task("generating scenes", total=n_scenes)
        for _ in range(n_scenes):
            products = [(ids[i], open_photo(ids[i]), "product")
                        for i in rng.choice(len(ids), size=5, replace=False)]
            scene = compose_scene(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], products,
                                  rng, cutout=bool(rng.random() < cutout_share))
            pixels = np.asarray(scene.image)
            for placed in scene.products:
                truth = np.asarray(placed.box, np.float64)
                boxes = jitter_boxes(truth, per_product, rng)
                images.append(context_crops(pixels, boxes, context, input_size))
                targets.append(encode_deltas(boxes, np.repeat(truth[None], len(boxes), 0)))
            bar.advance(task)
    return ImageTensors(torch.from_numpy(np.concatenate(images)),
                        torch.from_numpy(np.concatenate(targets).astype(np.float32)))


# ---- per project --------------------------------------------------------------------------------
#: Where a project keeps its own regressor (``lookalike train-boxes``); it wins over the packaged.
PROJECT_FOLDER = BOX_REGRESSOR_DIR


def box_regressor_for(project: Any) -> BoxRegressor | None:
    """The regressor ``look`` uses for ``project``: its own when trained, else the packaged one
    (loaded once per project, kept in ``project.caches``)."""
    own = Path(project.path) / PROJECT_FOLDER
    if (own / WEIGHTS_FILE).is_file():
        return BoxRegressor.load(own)
    return packaged_box_regressor(project.caches)


def train_project_box_regressor(project: Any, scenes: int = 600, per_product: int = 6,
                                epochs: int = 10, seed: int = 0, resume: bool = False,
                                **training: Any) -> dict[str, Any]:
    """Train a regressor on scenes of ``project``'s train-split photos (all photos when it has
    no split) and save it in the project, where ``look`` finds it. Checkpoints every epoch
    (``resume=True`` continues). Returns a summary with the validation IoU before and after."""
    store = project.store
    ids = store.ids(split="train") or store.ids()
    samples = box_samples(store.open_image, ids, scenes, seed, per_product=per_product)
    regressor = BoxRegressor(seed=seed)
    folder = Path(project.path) / PROJECT_FOLDER
    checkpoints = folder.with_name(PROJECT_FOLDER + ".checkpoints")
    result = regressor.fit(samples, checkpoint_dir=checkpoints, resume=resume, epochs=epochs,
                           seed=seed, **training)
    regressor.save(folder)
    best = next(row for row in result.history if row["epoch"] == result.best_epoch)
    return {"folder": str(folder), "samples": len(samples), "photos": len(ids),
            "epochs": len(result.history), "best_epoch": result.best_epoch,
            "val_iou": best["val_iou"], "val_iou_before": best["val_iou_before"],
            "seconds": result.seconds, "stopped": result.stopped}
