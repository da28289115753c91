"""Binary codes for Hamming search: paper 000's learned hash layer (``cnn-hash``) and random-
hyperplane LSH (``lsh``, the baseline paper 001 found ~10% worse than exact search).

Both are *hyperplane coders*: bit ``j`` of an L2-normalised feature vector ``v`` is
``planes[j] . v + offsets[j] > 0``. For LSH the planes are random Gaussian and the offsets 0; for
the hash layer they are learned. So a :class:`HyperplaneCoder` turns the float embeddings an
index already receives into codes, and :class:`~lookalike.index.binary_backend.BinaryIndex` can
hold codes (Hamming search, eq. 7) and floats (Euclidean re-ranking, eq. 8) side by side.

The hash layer (after DLBHC-style "latent layer" hashing, which paper 000 describes: class labels
train the features and the hash function together): ``h = sigmoid(W v + b)`` with ``v`` the
normalised penultimate features, a classifier on ``h``, and two extra terms: *quantisation*
``mean((1 - |2h - 1|)^2)`` pushes every relaxed bit to 0 or 1, *balance*
``mean_j((mean_batch h_j - 1/2)^2)`` keeps each bit on for about half the items (a bit that is
always 0 carries no information). A cross-entropy on the float features as well keeps them as good
as the plain CNN's for re-ranking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lookalike.errors import LookalikeError, ModelMismatchError
from lookalike.models.base import Embedder, create, embedder_class
from lookalike.models.cnn import CNNEmbedder, ConvNet
from lookalike.models.datasets import ImageTensors, images_to_tensor, to_float
from lookalike.models.training import ClassificationTask, TrainingError

#: Code lengths the hash layer is tested at (any positive multiple of 8 works).
HASH_BITS = (16, 32, 64, 128)


def check_bits(bits: int) -> int:
    """``bits`` as an int, or a clear error: FAISS binary indexes need a positive multiple of 8."""
    if int(bits) != bits or bits <= 0 or bits % 8:
        raise LookalikeError(f"code length must be a positive multiple of 8 bits, got {bits}")
    return int(bits)


# ---- packing and distances ---------------------------------------------------------------------
def pack_bits(bits: np.ndarray) -> np.ndarray:
    """bool/0-1 ``[n, k]`` -> packed uint8 ``[n, k/8]`` (numpy's big-endian bit order)."""
    return np.packbits(np.asarray(bits, dtype=bool), axis=1)


def unpack_bits(codes: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Packed uint8 ``[n, k/8]`` -> uint8 0/1 ``[n, k]``."""
    return np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1, count=bits)


def hamming_distances(query_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Eq. 7 for packed codes: ``[nq, n]`` int distances (numpy reference; use for small n)."""
    query_codes = np.asarray(query_codes, dtype=np.uint8)
    codes = np.asarray(codes, dtype=np.uint8)
    xor = np.bitwise_xor(query_codes[:, None, :], codes[None, :, :])
    return np.unpackbits(xor, axis=2).sum(axis=2, dtype=np.int64)


# ---- the coder --------------------------------------------------------------------------------
@dataclass
class HyperplaneCoder:
    """``bit_j(v) = planes[j] . v + offsets[j] > 0``, packed 8 bits to a byte."""

    planes: np.ndarray   # float32 [bits, dim]
    offsets: np.ndarray  # float32 [bits]

    def __post_init__(self) -> None:
        self.planes = np.ascontiguousarray(self.planes, dtype=np.float32)
        self.offsets = np.ascontiguousarray(self.offsets, dtype=np.float32).reshape(-1)
        if self.planes.ndim != 2 or self.offsets.shape != (self.planes.shape[0],):
            raise ModelMismatchError(f"hyperplanes {self.planes.shape} and offsets "
                                     f"{self.offsets.shape} do not fit together")
        check_bits(self.planes.shape[0])

    @property
    def bits(self) -> int:
        return int(self.planes.shape[0])

    @property
    def dim(self) -> int:
        return int(self.planes.shape[1])

    @classmethod
    def random(cls, dim: int, bits: int, seed: int = 0) -> "HyperplaneCoder":
        """Random-hyperplane LSH (Charikar): Gaussian planes through the origin, seeded."""
        rng = np.random.default_rng(seed)
        planes = rng.standard_normal((check_bits(bits), int(dim))).astype(np.float32)
        return cls(planes, np.zeros(bits, dtype=np.float32))

    def bit_matrix(self, vectors: np.ndarray) -> np.ndarray:
        """bool ``[n, bits]``: which side of each hyperplane every row lies on."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ModelMismatchError(f"vectors of shape {vectors.shape} given to a hash of "
                                     f"dimension {self.dim}")
        return vectors @ self.planes.T + self.offsets > 0

    def codes(self, vectors: np.ndarray) -> np.ndarray:
        """Packed uint8 codes ``[n, bits/8]`` of float rows."""
        return pack_bits(self.bit_matrix(vectors))

    def tensors(self) -> dict[str, np.ndarray]:
        return {"planes": self.planes, "offsets": self.offsets}


# ---- the learned hash layer ---------------------------------------------------------------------
class HashNet(nn.Module):
    """A :class:`ConvNet` whose normalised features feed a sigmoid hash layer and a classifier.

    ``forward`` returns the class logits from the relaxed bits; ``relaxed(x)`` the bits in (0, 1);
    ``embed(x)`` the float features.
    """

    def __init__(self, backbone: ConvNet, bits: int, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        dim = backbone.classifier.weight.shape[1]  # linear or cosine classifier
        self.hash = nn.Linear(dim, bits)
        self.hash_classifier = nn.Linear(bits, n_classes)
        # Unit rows have entries ~1/sqrt(dim); scaling them back to ~1 lets the default
        # initialisation start with bits that are not all stuck at sigmoid(0) = 1/2.
        self.input_scale = math.sqrt(dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed(x)

    def hash_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.hash(F.normalize(features, dim=1) * self.input_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hash_classifier(torch.sigmoid(self.hash_logits(self.embed(x))))


class HashTask(ClassificationTask):
    """Classification through the relaxed bits + quantisation + bit balance (+ feature CE)."""

    def __init__(self, module: HashNet, mean: list[float], std: list[float],
                 quantisation_weight: float, balance_weight: float,
                 feature_loss_weight: float) -> None:
        super().__init__(module, mean, std)
        self.quantisation_weight = quantisation_weight
        self.balance_weight = balance_weight
        self.feature_loss_weight = feature_loss_weight

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise TrainingError("the hash layer is trained with class labels")
        net: HashNet = self.module  # type: ignore[assignment]
        features = net.embed(inputs)
        relaxed = torch.sigmoid(net.hash_logits(features))
        loss = F.cross_entropy(net.hash_classifier(relaxed), labels)
        if self.feature_loss_weight:
            loss = loss + self.feature_loss_weight * F.cross_entropy(
                net.backbone.classifier(features), labels)
        quantisation = (1.0 - (2.0 * relaxed - 1.0).abs()).pow(2).mean()
        balance = (relaxed.mean(dim=0) - 0.5).pow(2).mean()
        return loss + self.quantisation_weight * quantisation + self.balance_weight * balance


class CNNHashEmbedder(CNNEmbedder):
    """Paper 000's CNN with a learned ``bits``-bit hash layer (method ``cnn-hash``).

    ``embed`` gives the float features (for re-ranking, like ``cnn``); :meth:`codes` the packed
    binary codes; :meth:`coder` the hyperplanes that turn ``embed`` output into the same codes
    (what :class:`~lookalike.index.binary_backend.BinaryIndex` needs).
    """

    kind = "cnn-hash"

    def __init__(self, bits: int = 64, quantisation_weight: float = 0.1,
                 balance_weight: float = 0.1, feature_loss_weight: float = 1.0,
                 **cnn_options: Any) -> None:
        super().__init__(**cnn_options)
        self.bits = check_bits(bits)
        self.quantisation_weight = float(quantisation_weight)
        self.balance_weight = float(balance_weight)
        self.feature_loss_weight = float(feature_loss_weight)
        self._backbone_start: dict[str, torch.Tensor] | None = None

    @classmethod
    def from_cnn(cls, cnn: CNNEmbedder, bits: int = 64, **hash_options: Any) -> "CNNHashEmbedder":
        """A hash embedder whose network starts from a trained ``cnn`` (same classes and input
        normalisation); ``fit`` then trains hash layer and network together, as paper 000 adjusts
        its classification model after adding the hash layer. Much cheaper than from scratch."""
        embedder = cls(bits=bits, **hash_options, **cnn.config())
        embedder._backbone_start = {k: v.detach().clone() for k, v in cnn.module.state_dict().items()}
        return embedder

    @property
    def name(self) -> str:
        return f"cnn-hash{self.bits}"

    def config(self) -> dict[str, Any]:
        return {**super().config(), "bits": self.bits,
                "quantisation_weight": self.quantisation_weight,
                "balance_weight": self.balance_weight,
                "feature_loss_weight": self.feature_loss_weight}

    def _label_vocabulary(self) -> tuple[str, ...] | None:
        return self.classes if self._backbone_start is not None else None

    def _prepare_fit(self, data: ImageTensors) -> None:
        if self._backbone_start is None:
            super()._prepare_fit(data)
        elif tuple(data.classes) != self.classes:
            raise ModelMismatchError(f"{self.name}: the data's classes differ from those of the "
                                     "CNN this hash model starts from")

    def build_module(self) -> nn.Module:
        backbone = super().build_module()
        if self._backbone_start is not None:
            backbone.load_state_dict(self._backbone_start)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 1)
            return HashNet(backbone, self.bits, len(self.classes))

    def make_task(self, module: nn.Module) -> HashTask:
        return HashTask(module, self.mean, self.std,  # type: ignore[arg-type]
                        self.quantisation_weight, self.balance_weight, self.feature_loss_weight)

    def coder(self) -> HyperplaneCoder:
        """The learned hash layer as hyperplanes over ``embed`` output (unit rows)."""
        net: HashNet = self.module  # type: ignore[assignment]
        return HyperplaneCoder(net.hash.weight.detach().numpy() * net.input_scale,
                               net.hash.bias.detach().numpy().copy())

    def codes(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Packed uint8 codes ``[n, bits/8]`` of PIL images."""
        return self.codes_tensors(images_to_tensor(images, self.image_size, self.channels))

    @torch.no_grad()
    def codes_tensors(self, images: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
        """Packed codes of uint8 ``[n, c, h, w]`` tensors, straight from the hash layer."""
        net: HashNet = self.module  # type: ignore[assignment]
        net.eval()
        size = batch_size or self.batch_size
        out = [pack_bits(net.hash_logits(net.embed(to_float(images[s:s + size], self.mean,
                                                                self.std))).numpy() > 0)
               for s in range(0, len(images), size)]
        return np.concatenate(out) if out else np.zeros((0, self.bits // 8), dtype=np.uint8)


# ---- LSH over any embedder ----------------------------------------------------------------------
class LSHEmbedder(Embedder):
    """Random-hyperplane LSH codes over another embedder's features (method ``lsh``).

    ``embed`` returns the base embedder's vectors unchanged; :meth:`codes` the LSH codes. The base
    embedder is saved inside (its config in ours, its weights prefixed ``base.``).
    """

    kind = "lsh"

    def __init__(self, base: str | Embedder = "pixels", bits: int = 64, seed: int = 0,
                 base_config: dict[str, Any] | None = None) -> None:
        self.base = create(base, **(base_config or {})) if isinstance(base, str) else base
        self.bits = check_bits(bits)
        self.seed = int(seed)
        self._coder = HyperplaneCoder.random(self.base.dim, self.bits, self.seed)
        self.needs_fit = self.base.needs_fit  # type: ignore[misc]
        self.batch_size = self.base.batch_size

    @property
    def name(self) -> str:
        return f"lsh{self.bits}-{self.base.name}"

    @property
    def dim(self) -> int:
        return self.base.dim

    def config(self) -> dict[str, Any]:
        return {"base": self.base.kind, "base_config": self.base.config(), "bits": self.bits,
                "seed": self.seed}

    def _weights_fingerprint(self) -> dict[str, str]:
        return {f"base_{k}": v for k, v in self.base._weights_fingerprint().items()}

    def fit(self, images: Sequence[Image.Image], labels: Sequence[Any] | None = None,
            **options: Any) -> "LSHEmbedder":
        self.base.fit(images, labels, **options)
        return self

    def _embed_batch(self, images: list[Image.Image]) -> np.ndarray:
        return self.base._embed_batch(images)

    def coder(self) -> HyperplaneCoder:
        return self._coder

    def codes(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self._coder.codes(self.embed(images))

    def state_tensors(self) -> dict[str, np.ndarray]:
        return {f"base.{k}": v for k, v in self.base.state_tensors().items()}

    def load_state_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        self.base.load_state_tensors({k[len("base."):]: v for k, v in tensors.items()
                                      if k.startswith("base.")})

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "LSHEmbedder":
        base = embedder_class(config["base"]).from_config(config.get("base_config", {}))
        return cls(base=base, bits=config.get("bits", 64), seed=config.get("seed", 0))

