"""Paper 004's InfoGAN, trained without labels; its discriminator is the embedder (``infogan``).

Paper 004 (Ay et al.) trains an InfoGAN on unlabelled shoe photos and uses the discriminator's
last feature layer (a 1,536-value vector) as the image embedding. Its Table I, adapted here:

Discriminator D / recognition network Q (shared body)::

    3x3 conv 16  stride 2, leaky ReLU               (no batch norm on the first layer)
    3x3 conv 32  stride 1, batch norm, leaky ReLU
    3x3 conv 64  stride 2, batch norm, leaky ReLU
    3x3 conv 128 stride 1, batch norm, leaky ReLU
    3x3 conv 256 stride 2, batch norm, leaky ReLU
    3x3 conv 16  stride 1, batch norm, leaky ReLU   <- flattened: the embedding
    FC 1 (sigmoid: real/fake) for D;  FC for Q (categorical logits + tanh continuous codes)

with dropout 0.5 after each of the first five convolutions. Generator G::

    latent (100 noise + categorical code + continuous codes) -> FC 256 x (H/8 x W/8), BN, ReLU
    3x3 conv 128, 64, 32, 16 (BN, ReLU, dropout), upsampling x2 before the 64, 32 and 16 layers
    3x3 conv to the image channels, tanh

Adaptations, all deliberate:

- **Resolution.** The paper's input is 128x128 and its generator never upsamples (all its
  transposed convolutions have stride 1, from a 4x6 map), which cannot produce a 128x128
  image. Here D's three stride-2 layers set the scale and G mirrors them: it starts at D's
  final map size (4x4 for 28x28 Fashion-MNIST, 8x10 for the 60x80 products) and upsamples to
  each of D's stage sizes exactly, so G's output always has the input's size. The embedding is
  16 x (H/8) x (W/8): 256 values for Fashion-MNIST, 1,280 for products (the paper's 1,536).
- **Codes.** The paper sets the categorical code to its guess of the class count (8 shoe types)
  and says the Q head is "FC 8 tanh". Here the categorical code has ``categories`` values (a
  guess of the class count, default 10) and Q predicts it with softmax logits (cross-entropy),
  plus ``continuous`` uniform(-1, 1) codes predicted through tanh (squared error), as in the
  original InfoGAN. The mutual-information term is ``info_weight`` x (categorical CE +
  ``continuous_weight`` x continuous MSE).
- **Dropout.** Table I's "Dropout(0.6)" in G is a TensorFlow keep-probability (the text says
  lower values generate more realistic images), so G drops 40%; D drops 50%.
- **Losses.** Non-saturating GAN loss with logits (``binary_cross_entropy_with_logits``; the
  sigmoid of Table I is inside it, numerically safer). Adam (lr 2e-4, beta1 0.5), constant rate,
  as in DCGAN.
- **Batch norm statistics.** During training D's running statistics mix real and generated
  batches; after training they are re-estimated on real images only (``recalibrate=True``), so
  embedding a catalogue photo normalises it with real-photo statistics.

Validation without labels: on held-out *real* images the mean D(real) probability
(``val_real_score``), and on a fixed set of generated images D's score (``val_fake_score``), the
information loss (``val_info_loss``: how well D's features recover the code that generated an
image) and the categorical code accuracy (``val_code_accuracy``). The default run watches
``val_info_loss`` (lower is better) over a fixed epoch budget (no early stopping: GAN losses
are not monotone) and keeps the epoch where it was lowest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lookalike.errors import ModelMismatchError
from lookalike.models.datasets import PRODUCT_SIZE, ImageTensors, to_float
from lookalike.models.training import Task, TrainConfig, TrainingError
from lookalike.models.unsupervised import UnsupervisedEmbedder

#: Table I of paper 004: (output channels, stride) of D's convolutions.
TABLE_I_DISCRIMINATOR: tuple[tuple[int, int], ...] = (
    (16, 2), (32, 1), (64, 2), (128, 1), (256, 2), (16, 1))
#: Table I's generator convolutions after the FC layer (its 256-channel map).
TABLE_I_GENERATOR: tuple[int, ...] = (128, 64, 32, 16)


# ---- the networks ---------------------------------------------------------------------------------
def _halve(size: tuple[int, int]) -> tuple[int, int]:
    return (size[0] + 1) // 2, (size[1] + 1) // 2


class Discriminator(nn.Module):
    """Table I's D/Q body; ``features(x)`` is the flattened last conv layer (the embedding),
    ``forward(x)`` returns (real/fake logit ``[n]``, Q outputs ``[n, categories + continuous]``)."""

    def __init__(self, in_channels: int, size: tuple[int, int],
                 layers: Sequence[tuple[int, int]], categories: int, continuous: int,
                 dropout: float = 0.5, negative_slope: float = 0.2) -> None:
        super().__init__()
        width, height = size
        blocks: list[nn.Module] = []
        channels = in_channels
        self.stage_sizes = [(height, width)]  # spatial size after each stride-2 layer
        spatial = (height, width)
        for i, (out_channels, stride) in enumerate(layers):
            first, last = i == 0, i == len(layers) - 1
            blocks.append(nn.Conv2d(channels, out_channels, 3, stride=stride, padding=1,
                                    bias=first))
            if not first:
                blocks.append(nn.BatchNorm2d(out_channels))
            blocks.append(nn.LeakyReLU(negative_slope, inplace=True))
            if not last and dropout:
                blocks.append(nn.Dropout(dropout))
            if stride == 2:
                spatial = _halve(spatial)
                self.stage_sizes.append(spatial)
            elif stride != 1:
                raise ModelMismatchError(f"infogan: strides must be 1 or 2, got {stride}")
            channels = out_channels
        self.body = nn.Sequential(*blocks)
        self.feature_dim = channels * spatial[0] * spatial[1]
        self.categories, self.continuous = categories, continuous
        self.real_fake = nn.Linear(self.feature_dim, 1)
        self.q = nn.Linear(self.feature_dim, categories + continuous)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.q(features)
        q = torch.cat([q[:, :self.categories], torch.tanh(q[:, self.categories:])], dim=1)
        return self.real_fake(features).squeeze(1), q

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.features(x))


class Generator(nn.Module):
    """Latent vector -> image of D's input size (tanh, in [-1, 1])."""

    def __init__(self, latent_dim: int, out_channels: int, stage_sizes: Sequence[tuple[int, int]],
                 channels: Sequence[int], base_channels: int = 256, dropout: float = 0.4) -> None:
        super().__init__()
        start = stage_sizes[-1]
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, base_channels * start[0] * start[1], bias=False),
            nn.BatchNorm1d(base_channels * start[0] * start[1]), nn.ReLU(inplace=True),
            nn.Unflatten(1, (base_channels, *start)))
        blocks: list[nn.Module] = []
        previous, spatial = base_channels, start
        downsamplings = len(stage_sizes) - 1
        for i, width in enumerate(channels):
            # block i works at D's stage (downsamplings - i), the input size from then on
            target = stage_sizes[max(downsamplings - i, 0)]
            if target != spatial:
                blocks.append(nn.Upsample(size=target, mode="nearest"))
                spatial = target
            blocks += [nn.Conv2d(previous, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            if dropout:
                blocks.append(nn.Dropout(dropout))
            previous = width
        if spatial != stage_sizes[0]:
            blocks.append(nn.Upsample(size=stage_sizes[0], mode="nearest"))
        blocks += [nn.Conv2d(previous, out_channels, 3, padding=1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.fc(latent))


class InfoGAN(nn.Module):
    """Generator + discriminator/Q, and the latent distribution they share."""

    def __init__(self, in_channels: int, size: tuple[int, int], noise_dim: int = 100,
                 categories: int = 10, continuous: int = 2,
                 d_layers: Sequence[tuple[int, int]] = TABLE_I_DISCRIMINATOR,
                 g_channels: Sequence[int] = TABLE_I_GENERATOR, d_dropout: float = 0.5,
                 g_dropout: float = 0.4) -> None:
        super().__init__()
        self.noise_dim, self.categories, self.continuous = noise_dim, categories, continuous
        self.discriminator = Discriminator(in_channels, size, d_layers, categories, continuous,
                                           d_dropout)
        if self.discriminator.feature_dim == 0:
            raise ModelMismatchError(f"infogan: input {size[0]}x{size[1]} is too small")
        self.generator = Generator(noise_dim + categories + continuous, in_channels,
                                   self.discriminator.stage_sizes, g_channels, dropout=g_dropout)

    def sample_latent(self, n: int, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(latent ``[n, noise + categories + continuous]``, category ``[n]``, continuous codes)."""
        noise = torch.randn(n, self.noise_dim, generator=generator)
        category = torch.randint(self.categories, (n,), generator=generator)
        codes = torch.rand(n, self.continuous, generator=generator) * 2 - 1
        one_hot = F.one_hot(category, self.categories).to(torch.float32)
        return torch.cat([noise, one_hot, codes], dim=1), category, codes


class InfoGANTask(Task):
    """Alternating D/Q and G updates with two Adam optimizers (``[discriminator, generator]``)."""

    def __init__(self, module: InfoGAN, mean: list[float], std: list[float],
                 info_weight: float = 1.0, continuous_weight: float = 0.1, beta1: float = 0.5,
                 seed: int = 0) -> None:
        super().__init__(module, mean, std)
        self.gan = module
        self.info_weight, self.continuous_weight = info_weight, continuous_weight
        self.beta1 = beta1
        self.seed = seed

    def make_optimizers(self, config: TrainConfig) -> list[torch.optim.Optimizer]:
        if config.optimizer != "adam":
            raise TrainingError(f"infogan trains with optimizer='adam' (beta1 {self.beta1}), "
                                f"got {config.optimizer!r}")
        return [torch.optim.Adam(part.parameters(), lr=config.learning_rate,
                                 betas=(self.beta1, 0.999), weight_decay=config.weight_decay)
                for part in (self.gan.discriminator, self.gan.generator)]

    def info_loss(self, q: torch.Tensor, category: torch.Tensor, codes: torch.Tensor,
                  reduction: str = "mean") -> torch.Tensor:
        """The variational mutual-information bound's loss: CE on the category + weighted MSE."""
        n = self.gan.categories
        loss = F.cross_entropy(q[:, :n], category, reduction=reduction)
        if self.gan.continuous:
            squared = (q[:, n:] - codes).pow(2).mean(dim=1)
            loss = loss + self.continuous_weight * (squared.mean() if reduction == "mean"
                                                    else squared.sum())
        return loss

    def training_step(self, inputs: torch.Tensor, labels: torch.Tensor | None,
                      optimizers: list[torch.optim.Optimizer]) -> float:
        d_optimizer, g_optimizer = optimizers
        discriminator, generator = self.gan.discriminator, self.gan.generator
        latent, category, codes = self.gan.sample_latent(len(inputs))
        fake = generator(latent)

        # D and Q: real -> 1, generated -> 0, and recover the codes of generated images.
        real_logit, _ = discriminator(inputs)
        fake_logit, q = discriminator(fake.detach())
        d_loss = (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
                  + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))
        d_optimizer.zero_grad(set_to_none=True)
        (d_loss + self.info_weight * self.info_loss(q, category, codes)).backward()
        d_optimizer.step()

        # G: fool D and keep its codes recoverable (D's weights frozen for this pass).
        discriminator.requires_grad_(False)
        try:
            fake_logit, q = discriminator(fake)
            g_loss = F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))
            info = self.info_loss(q, category, codes)
            g_optimizer.zero_grad(set_to_none=True)
            (g_loss + self.info_weight * info).backward()
            g_optimizer.step()
        finally:
            discriminator.requires_grad_(True)
        return float(d_loss.detach() + g_loss.detach())

    def validation_sums(self, inputs: torch.Tensor, labels: torch.Tensor | None
                        ) -> dict[str, float]:
        # The same seeded latent codes every epoch, so the numbers are comparable.
        latent, category, codes = self.gan.sample_latent(
            len(inputs), torch.Generator().manual_seed(self.seed))
        real_logit, _ = self.gan.discriminator(inputs)
        fake_logit, q = self.gan.discriminator(self.gan.generator(latent))
        return {"real_score": float(torch.sigmoid(real_logit).sum()),
                "fake_score": float(torch.sigmoid(fake_logit).sum()),
                "info_loss": float(self.info_loss(q, category, codes, reduction="sum")),
                "code_accuracy": float((q[:, :self.gan.categories].argmax(1) == category).sum())}


# ---- the embedder ---------------------------------------------------------------------------------
class InfoGANEmbedder(UnsupervisedEmbedder):
    """Paper 004's InfoGAN discriminator as an embedder (trained without labels).

    ``categories`` is a guess of how many kinds of item the catalogue holds (the paper used its
    8 shoe types); ``continuous`` the number of continuous codes. The embedding is D's last
    convolutional layer, flattened: ``16 * ceil(H/8) * ceil(W/8)`` values.
    """

    kind = "infogan"
    batch_size = 256
    #: A fixed epoch budget (GAN losses are not monotone, so no early stopping); the epoch with
    #: the lowest validation information loss is kept. ``max_minutes`` keeps it in 15 minutes.
    default_training: ClassVar[dict[str, Any]] = {
        "epochs": 10, "batch_size": 64, "learning_rate": 2e-4, "weight_decay": 0.0,
        "optimizer": "adam", "schedule": "constant", "monitor": "val_info_loss", "mode": "min",
        "patience": 0, "augment": "none", "max_minutes": 14.0}

    def __init__(self, image_size: Sequence[int] | int = PRODUCT_SIZE, channels: int = 3,
                 categories: int = 10, continuous: int = 2, noise_dim: int = 100,
                 d_layers: Sequence[Sequence[int]] = TABLE_I_DISCRIMINATOR,
                 g_channels: Sequence[int] = TABLE_I_GENERATOR, d_dropout: float = 0.5,
                 g_dropout: float = 0.4, info_weight: float = 1.0,
                 continuous_weight: float = 0.1, beta1: float = 0.5, recalibrate: bool = True,
                 mean: Sequence[float] = (), std: Sequence[float] = (), seed: int = 0) -> None:
        super().__init__(image_size, channels, mean, std, seed)
        if isinstance(categories, bool) or not isinstance(categories, int) or categories < 2:
            raise ModelMismatchError(f"infogan: categories must be an integer >= 2 (a guess of "
                                     f"the class count), got {categories!r}")
        for name, value in (("continuous", continuous), ("noise_dim", noise_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ModelMismatchError(f"infogan: {name} must be an integer >= 0, got {value!r}")
        for name, value in (("d_dropout", d_dropout), ("g_dropout", g_dropout)):
            if not 0.0 <= float(value) < 1.0:
                raise ModelMismatchError(f"infogan: {name} must be in [0, 1), got {value!r}")
        self.categories, self.continuous, self.noise_dim = categories, continuous, noise_dim
        try:
            self.d_layers = tuple((int(c), int(s)) for c, s in d_layers)
        except (TypeError, ValueError) as error:
            raise ModelMismatchError(f"infogan: d_layers must be (channels, stride) pairs, got "
                                     f"{d_layers!r}") from error
        self.g_channels = tuple(int(c) for c in g_channels)
        self.d_dropout, self.g_dropout = float(d_dropout), float(g_dropout)
        self.info_weight, self.continuous_weight = float(info_weight), float(continuous_weight)
        self.beta1 = float(beta1)
        self.recalibrate = bool(recalibrate)
        width, height = self.image_size
        spatial = (height, width)
        for _, stride in self.d_layers:
            spatial = _halve(spatial) if stride == 2 else spatial
        self._dim = self.d_layers[-1][0] * spatial[0] * spatial[1]

    @property
    def dim(self) -> int:
        return self._dim

    def model_config(self) -> dict[str, Any]:
        return {"categories": self.categories, "continuous": self.continuous,
                "noise_dim": self.noise_dim, "d_layers": [list(p) for p in self.d_layers],
                "g_channels": list(self.g_channels), "d_dropout": self.d_dropout,
                "g_dropout": self.g_dropout, "info_weight": self.info_weight,
                "continuous_weight": self.continuous_weight, "beta1": self.beta1,
                "recalibrate": self.recalibrate}

    def normalisation(self, data: ImageTensors) -> tuple[list[float], list[float]]:
        # G ends in tanh, so real images are scaled to [-1, 1] as well.
        return [0.5] * self.channels, [0.5] * self.channels

    def make_module(self) -> nn.Module:
        return InfoGAN(self.channels, self.image_size, self.noise_dim, self.categories,
                       self.continuous, self.d_layers, self.g_channels, self.d_dropout,
                       self.g_dropout)

    def make_task(self, module: nn.Module) -> Task:
        assert isinstance(module, InfoGAN)
        return InfoGANTask(module, self.mean, self.std, self.info_weight, self.continuous_weight,
                           self.beta1, self.seed)

    def encode(self, module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return module.discriminator.features(inputs)

    @torch.no_grad()
    def after_fit(self, module: nn.Module, data: ImageTensors) -> None:
        if self.recalibrate:
            recalibrate_batch_norm(module.discriminator, data, self.mean, self.std)

    @torch.no_grad()
    def generate(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` generated images as uint8 ``[n, c, h, w]`` (to look at what G learned)."""
        module = self.module.eval()
        latent, _, _ = module.sample_latent(n, torch.Generator().manual_seed(seed))
        return ((module.generator(latent) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def recalibrate_batch_norm(module: nn.Module, data: ImageTensors, mean: list[float],
                           std: list[float], items: int = 5000, batch_size: int = 500,
                           seed: int = 0) -> None:
    """Re-estimate ``module``'s batch-norm running statistics on (up to ``items``) real images.

    Uses cumulative averages (``momentum=None``) over seeded batches, with dropout off; the
    layers' momentum settings are restored afterwards.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:items]
    was_training = module.training
    module.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()  # only the norms collect statistics; dropout stays off
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            module(to_float(data.images[rows], mean, std))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        module.train(was_training)
