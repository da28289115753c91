"""Paper 001's autoencoders as embedders: a dense one (``autoencoder``) and a convolutional one
(``conv-autoencoder``).

Paper 001 says only: "train both a simple auto encoder and a convolution auto encoder on our
database images with the objective of minimizing reconstruction loss" and use the learned codes
for similarity. The layer sizes here are lookalike's choices, sized for CPU training:

- dense: flatten -> 512 -> 256 -> code (64) and the mirror image back, ReLU between layers;
- convolutional: three stride-2 3x3 conv blocks (32, 64, 128 channels, batch norm, ReLU) ->
  linear -> code (128); the decoder upsamples back to each encoder stage's exact size
  (nearest-neighbour upsampling + 3x3 conv), so any input size works (28x28 grey Fashion-MNIST,
  60x80 RGB products).

The loss is the mean squared error between the (normalised) input and its reconstruction; the
validation reconstruction error (``val_loss``) drives early stopping. The embedding is the
bottleneck code. By default the code passes through a batch norm without scale or shift
(``code_norm=True``): every code dimension is standardised, so cosine similarity weighs them
equally instead of being dominated by a few large, mostly constant ones (this is what makes the
codes useful for retrieval; the decoder sees the same standardised code). ``noise`` > 0 trains a
denoising autoencoder (Gaussian noise on the input, clean target).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lookalike.errors import ModelMismatchError
from lookalike.models.datasets import PRODUCT_SIZE, to_float
from lookalike.models.training import Task, TrainingError
from lookalike.models.unsupervised import UnsupervisedEmbedder

#: TrainConfig overrides shared by both autoencoders: early stopping on the validation
#: reconstruction error; ``max_minutes`` keeps a run inside 15 minutes on 2 cores.
AUTOENCODER_TRAINING: dict[str, Any] = {
    "epochs": 20, "batch_size": 128, "learning_rate": 2e-3, "weight_decay": 0.0,
    "optimizer": "adam", "monitor": "val_loss", "mode": "min", "patience": 3,
    "augment": "flip", "max_minutes": 14.0}


# ---- the networks ---------------------------------------------------------------------------------
def _code_layer(n_in: int, code_dim: int, code_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(n_in, code_dim)]
    if code_norm:
        layers.append(nn.BatchNorm1d(code_dim, affine=False))
    return nn.Sequential(*layers)


class DenseAutoencoder(nn.Module):
    """Fully connected encoder/decoder; ``encode(x)`` is the code, ``forward(x)`` the
    reconstruction (same shape as ``x``)."""

    def __init__(self, in_channels: int, size: tuple[int, int], hidden: Sequence[int] = (512, 256),
                 code_dim: int = 64, code_norm: bool = True) -> None:
        super().__init__()
        width, height = size
        shape = (in_channels, height, width)
        n_in = in_channels * height * width
        widths = [n_in, *hidden]
        encoder: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths, widths[1:]):
            encoder += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*encoder)
        self.code = _code_layer(widths[-1], code_dim, code_norm)
        decoder: list[nn.Module] = []
        back = [code_dim, *reversed(widths)]
        for i, (a, b) in enumerate(zip(back, back[1:])):
            decoder.append(nn.Linear(a, b))
            if i < len(back) - 2:  # the output layer stays linear (inputs are normalised)
                decoder.append(nn.ReLU(inplace=True))
        decoder.append(nn.Unflatten(1, shape))
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.code(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x))


class ConvAutoencoder(nn.Module):
    """Stride-2 conv encoder -> linear code; upsample + conv decoder back to the input size."""

    def __init__(self, in_channels: int, size: tuple[int, int],
                 conv_channels: Sequence[int] = (32, 64, 128), code_dim: int = 128,
                 code_norm: bool = True) -> None:
        super().__init__()
        width, height = size
        blocks: list[nn.Module] = []
        sizes = [(height, width)]  # spatial size after each stage, input first
        channels = in_channels
        for out_channels in conv_channels:
            blocks.append(nn.Sequential(
                nn.Conv2d(channels, out_channels, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)))
            h, w = sizes[-1]
            sizes.append(((h + 1) // 2, (w + 1) // 2))
            channels = out_channels
        last = (channels, *sizes[-1])
        flat = channels * sizes[-1][0] * sizes[-1][1]
        self.encoder = nn.Sequential(*blocks, nn.Flatten())
        self.code = _code_layer(flat, code_dim, code_norm)
        decoder: list[nn.Module] = [nn.Linear(code_dim, flat), nn.ReLU(inplace=True),
                                    nn.Unflatten(1, last)]
        widths = [in_channels, *conv_channels]
        for stage in range(len(conv_channels), 0, -1):
            decoder.append(nn.Upsample(size=sizes[stage - 1], mode="nearest"))
            if stage > 1:
                decoder += [nn.Conv2d(widths[stage], widths[stage - 1], 3, padding=1, bias=False),
                            nn.BatchNorm2d(widths[stage - 1]), nn.ReLU(inplace=True)]
            else:  # the output layer: linear, back to the input channels
                decoder.append(nn.Conv2d(widths[1], in_channels, 3, padding=1))
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.code(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x))


class ReconstructionTask(Task):
    """Mean squared reconstruction error; ``noise`` > 0 corrupts the input (denoising AE)."""

    def __init__(self, module: nn.Module, mean: list[float], std: list[float],
                 noise: float = 0.0) -> None:
        super().__init__(module, mean, std)
        self.noise = float(noise)

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        corrupted = inputs + self.noise * torch.randn_like(inputs) if self.noise else inputs
        return F.mse_loss(self.module(corrupted), inputs)

    def validation_sums(self, inputs: torch.Tensor, labels: torch.Tensor | None
                        ) -> dict[str, float]:
        errors = (self.module(inputs) - inputs).pow(2).flatten(1).mean(dim=1)
        return {"loss": float(errors.sum())}


# ---- the embedders ----------------------------------------------------------------------------------
class ReconstructingEmbedder(UnsupervisedEmbedder):
    """What both autoencoders share: the code settings, the loss and ``reconstruct_tensors``."""

    default_training: ClassVar[dict[str, Any]] = dict(AUTOENCODER_TRAINING)

    def __init__(self, image_size: Sequence[int] | int = PRODUCT_SIZE, channels: int = 3,
                 code_dim: int = 64, code_norm: bool = True, noise: float = 0.0,
                 mean: Sequence[float] = (), std: Sequence[float] = (), seed: int = 0) -> None:
        super().__init__(image_size, channels, mean, std, seed)
        self.code_dim = _positive(code_dim, "code_dim", self.kind)
        self.code_norm = bool(code_norm)
        self.noise = _non_negative(noise, "noise", self.kind)

    @property
    def dim(self) -> int:
        return self.code_dim

    def model_config(self) -> dict[str, Any]:
        return {"code_dim": self.code_dim, "code_norm": self.code_norm, "noise": self.noise}

    def make_task(self, module: nn.Module) -> Task:
        return ReconstructionTask(module, self.mean, self.std, self.noise)

    def encode(self, module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return module.encode(inputs)

    @torch.no_grad()
    def reconstruct_tensors(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstructions of uint8 ``[n, c, h, w]`` images, as uint8 (for looking at)."""
        self._check_shape(images, "the input")
        module = self.module.eval()
        out = module(to_float(images, self.mean, self.std))
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return ((out * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)


class AutoencoderEmbedder(ReconstructingEmbedder):
    """Paper 001's "simple auto encoder": fully connected; the embedding is the code layer.

    ``create("autoencoder", image_size=(28, 28), channels=1).fit_tensors(data)`` trains it on
    Fashion-MNIST; the default size is the products' 60x80 RGB.
    """

    kind = "autoencoder"

    def __init__(self, image_size: Sequence[int] | int = PRODUCT_SIZE, channels: int = 3,
                 hidden: Sequence[int] = (512, 256), code_dim: int = 64, code_norm: bool = True,
                 noise: float = 0.0, mean: Sequence[float] = (), std: Sequence[float] = (),
                 seed: int = 0) -> None:
        super().__init__(image_size, channels, code_dim, code_norm, noise, mean, std, seed)
        self.hidden = _positive_list(hidden, "hidden", self.kind)

    def model_config(self) -> dict[str, Any]:
        return {"hidden": list(self.hidden), **super().model_config()}

    def make_module(self) -> nn.Module:
        return DenseAutoencoder(self.channels, self.image_size, self.hidden, self.code_dim,
                                self.code_norm)


class ConvAutoencoderEmbedder(ReconstructingEmbedder):
    """Paper 001's "convolution auto encoder"; the embedding is the code layer."""

    kind = "conv-autoencoder"

    def __init__(self, image_size: Sequence[int] | int = PRODUCT_SIZE, channels: int = 3,
                 conv_channels: Sequence[int] = (32, 64, 128), code_dim: int = 128,
                 code_norm: bool = True, noise: float = 0.0, mean: Sequence[float] = (),
                 std: Sequence[float] = (), seed: int = 0) -> None:
        super().__init__(image_size, channels, code_dim, code_norm, noise, mean, std, seed)
        self.conv_channels = _positive_list(conv_channels, "conv_channels", self.kind)

    def model_config(self) -> dict[str, Any]:
        return {"conv_channels": list(self.conv_channels), **super().model_config()}

    def make_module(self) -> nn.Module:
        return ConvAutoencoder(self.channels, self.image_size, self.conv_channels, self.code_dim,
                               self.code_norm)


def _positive_list(values: Any, name: str, who: str) -> tuple[int, ...]:
    if isinstance(values, (int, str)) or not values:
        raise ModelMismatchError(f"{who}: {name} must be a list of positive integers, "
                                 f"got {values!r}")
    return tuple(_positive(v, name, who) for v in values)


def _positive(value: Any, name: str, who: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value \
            or value < 1:
        raise ModelMismatchError(f"{who}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative(value: Any, name: str, who: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise TrainingError(f"{who}: {name} must be a number >= 0, got {value!r}")
    return float(value)
