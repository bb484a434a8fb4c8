"""Deep convolutional GANs: DCGAN and its class-conditional variant (`model.name: dcgan | cdcgan`).

The architecture of Radford et al. (2016, https://arxiv.org/abs/1511.06434) scaled to `image_size`: the generator
maps z (a 1x1 map) to 4x4 with a 4x4 transposed convolution, then doubles the resolution with stride-2 transposed
convolutions + BatchNorm + ReLU, halving the width down to `ngf`, and ends in a Tanh layer. The discriminator
mirrors it: stride-2 convolutions + BatchNorm (not on the first layer) + LeakyReLU(0.2), doubling the width from
`ndf` down to 4x4, then a 4x4 convolution to one logit. Weights start as in the paper: convolutions N(0, 0.02),
BatchNorm gains N(1, 0.02), biases 0.

One train step updates the discriminator (BCE: reals -> 1, detached fakes -> 0), then the generator with the
non-saturating loss (BCE of D(G(z)) against 1). The discriminator is frozen while the generator learns, and its
gradients are cleared before its own backward pass, so it is only ever stepped with its own loss's gradients.

CDCGAN conditions both networks on the class label: the generator reads z concatenated with a learned label
embedding; the discriminator is a projection discriminator (Miyato & Koyama 2018, https://arxiv.org/abs/1802.05637):
its logit adds the inner product of a learned class embedding with the flattened 4x4 features, i.e. each class
gets its own correction to the final 4x4 convolution.

A GAN's losses do not measure sample quality, so `select_best` is off: the trainer keeps the last weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import ImageGenerator, OnnxGraph, Optimization, eval_mode


@dataclass(frozen=True)
class DCGANConfig:
    image_size: int = 16  # height = width; a power of two >= 8 (from the data)
    channels: int = 1  # image channels (from the data)
    n_classes: int = 0  # classes in the data; 0 = unlabelled (cdcgan needs >= 2)
    n_z: int = 64  # latent size
    ngf: int = 64  # generator width at its last hidden layer; doubles towards the 4x4 layer
    ndf: int = 64  # discriminator width at its first layer; doubles towards the 4x4 layer
    embed_dim: int = 16  # label embedding width fed to the generator (cdcgan only)

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {self.image_size}")


def _n_stages(image_size: int) -> int:
    """Return how many stride-2 layers separate a 4x4 map from image_size x image_size."""
    return image_size.bit_length() - 3


class ConvGenerator(nn.Module):
    """z (B, n_z) [+ label embedding] -> images (B, C, S, S) in [-1, 1]."""

    def __init__(self, cfg: DCGANConfig, n_classes: int) -> None:
        super().__init__()
        n_up = _n_stages(cfg.image_size)
        widths = [cfg.ngf * 2 ** (n_up - 1 - i) for i in range(n_up)]  # at 4x4, 8x8, ..., S/2
        self.embed = nn.Embedding(n_classes, cfg.embed_dim) if n_classes else None
        n_in = cfg.n_z + (cfg.embed_dim if n_classes else 0)
        layers: list[nn.Module] = [nn.ConvTranspose2d(n_in, widths[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out),
                       nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(widths[-1], cfg.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """`y` (B,) labels are read only by a conditional generator."""
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], dim=1)  # (B, n_z + embed_dim)
        return self.net(z[:, :, None, None])  # (B, n_in, 1, 1) -> (B, C, S, S)


class ConvDiscriminator(nn.Module):
    """images (B, C, S, S) [+ labels] -> realness logits (B,)."""

    def __init__(self, cfg: DCGANConfig, n_classes: int) -> None:
        super().__init__()
        n_down = _n_stages(cfg.image_size)
        widths = [cfg.ndf * 2**i for i in range(n_down)]  # at S/2, S/4, ..., 4x4
        # No BatchNorm on the first layer: the paper found it destabilises training when applied to the input.
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, widths[0], 4, 2, 1, bias=False),
                                   nn.LeakyReLU(0.2, inplace=True)]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out),
                       nn.LeakyReLU(0.2, inplace=True)]
        self.features = nn.Sequential(*layers)
        self.out = nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False)  # 4x4 -> 1x1
        self.project = nn.Embedding(n_classes, widths[-1] * 16) if n_classes else None
        if self.project is not None:  # N(0, 1) rows would give initial logits in the tens and saturate the loss
            nn.init.normal_(self.project.weight, 0.0, 0.02)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """`y` (B,) labels are read only by a conditional discriminator."""
        h = self.features(x)  # (B, widths[-1], 4, 4)
        logit = self.out(h).flatten()  # (B,)
        if self.project is not None:
            logit = logit + (self.project(y) * h.flatten(1)).sum(dim=1)  # class-specific projection term
        return logit


def _dcgan_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)




@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Stop autograd writing gradients into `module`'s parameters for the block (gradients still flow through)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def _bce(logits: Tensor, target: float) -> Tensor:
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


class DCGAN(ImageGenerator):
    """Unconditional DCGAN; class labels in the batches are ignored."""

    Config = DCGANConfig

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__(config)
        n_labels = config.n_classes if self.conditional else 0
        self.G = ConvGenerator(config, n_labels)
        self.D = ConvDiscriminator(config, n_labels)
        self.apply(_dcgan_init)  # draws from torch's global RNG, which the trainer seeds

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"generator": list(self.G.parameters()), "discriminator": list(self.D.parameters())}

    def _noise(self, n: int, device: torch.device) -> Tensor:
        return torch.randn(n, self.config.n_z, device=device)  # (n, n_z), global RNG

    def _discriminator_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return the discriminator's loss on reals x and as many fresh fakes, and its logits on each."""
        with torch.no_grad():  # the generator takes no gradient from this loss
            fake = self.G(self._noise(x.size(0), x.device), y)  # (B, C, S, S)
        real_logits, fake_logits = self.D(x, y), self.D(fake, y)
        return _bce(real_logits, 1.0) + _bce(fake_logits, 0.0), real_logits, fake_logits

    def compile_targets(self) -> list[torch.nn.Module]:
        return [self.G, self.D]

    def train_step(self, micro_batches: Sequence[tuple[Tensor, Tensor]], opt: Optimization) -> dict[str, Tensor]:
        """Step the discriminator, then the generator, each on the gradient of its loss averaged over
        `micro_batches`. Each micro-batch's fakes are generated once, with their graph: the discriminator learns
        from them detached, then the generator's loss is taken on the same fakes through the updated
        discriminator (as the reference DCGAN loop does: one generator forward per step, not two). Fake labels,
        for a conditional model, are those of the real micro-batch."""
        n = len(micro_batches)
        d_loss = d_real = d_fake = g_loss = 0.0
        fakes = []

        # 1. discriminator: reals -> 1, fakes -> 0. Clearing first guarantees it sees no gradient but this loss's.
        self.D.zero_grad(set_to_none=True)
        for x, y in micro_batches:
            with opt.autocast():
                fake = self.G(self._noise(x.size(0), x.device), y)  # (B, C, S, S), kept for the generator's step
                real_logits, fake_logits = self.D(x, y), self.D(fake.detach(), y)
                loss = _bce(real_logits, 1.0) + _bce(fake_logits, 0.0)
            opt.backward(loss / n)
            fakes.append(fake)
            d_loss = d_loss + loss.detach() / n  # device tensors: no host sync per step
            d_real = d_real + torch.sigmoid(real_logits.detach().float()).mean() / n
            d_fake = d_fake + torch.sigmoid(fake_logits.detach().float()).mean() / n
        opt.step("discriminator")

        # 2. generator: non-saturating loss -log D(G(z)); D is frozen so it keeps no gradient.
        with _frozen(self.D):
            for (_, y), fake in zip(micro_batches, fakes):
                with opt.autocast():
                    loss = _bce(self.D(fake, y), 1.0)
                opt.backward(loss / n)
                g_loss = g_loss + loss.detach() / n
        opt.step("generator")
        return {"loss": g_loss, "g_loss": g_loss, "d_loss": d_loss, "d_real": d_real, "d_fake": d_fake}

    def validation_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """The discriminator's loss on held-out reals and as many fresh fakes (a diagnostic: not for ranking)."""
        x, y = batch
        return self._discriminator_loss(x, y)[0]

    def _labels(self, n: int, generator: torch.Generator, labels: Tensor | None) -> Tensor | None:
        return None  # unconditional: labels are ignored

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels: Tensor | None = None,
               steps: int | None = None) -> Tensor:
        """Return `n` images (n, C, S, S) in [-1, 1]. Noise is drawn on the generator's device (CPU for a CPU
        generator) and then moved, so a seed gives the same images on any device. `steps` is ignored."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.n_z, generator=generator, device=generator.device).to(device)  # (n, n_z)
        y = self._labels(n, generator, labels)
        with eval_mode(self):  # BatchNorm uses its running statistics, so a sample does not depend on the batch
            return self.G(z, None if y is None else y.to(device)).float()

    def onnx_graphs(self) -> dict[str, OnnxGraph]:
        """The generator network: latents (and labels) to images, as `sample` maps them."""
        cfg, g = self.config, torch.Generator().manual_seed(0)
        names = ("z", "labels") if self.conditional else ("z",)

        def inputs(b: int) -> tuple[Tensor, ...]:
            z = torch.randn(b, cfg.n_z, generator=g)
            return (z, torch.randint(cfg.n_classes, (b,), generator=g)) if self.conditional else (z,)

        labels = f" and class labels (batch,) int64 in [0, {cfg.n_classes})" if self.conditional else ""
        doc = (f"images (batch, {cfg.channels}, {cfg.image_size}, {cfg.image_size}) float32 in [-1, 1] (tanh) from "
               f"latents z (batch, {cfg.n_z}) float32 drawn from N(0, I){labels}: the generator in eval mode "
               f"(BatchNorm's running statistics, so an image does not depend on the rest of its batch), what "
               f"`sample` returns for that z")
        return {"generator": OnnxGraph(
            module=self.G, inputs=inputs(2), input_names=names, output_names=("images",),
            dynamic_axes={n: {0: "batch"} for n in (*names, "images")}, tolerance=1e-4, doc=doc,
            checks=(inputs(1), inputs(5)))}

    def onnx_usage(self) -> dict[str, Any]:
        usage = super().onnx_usage() | {"latent": {"name": "z", "shape": ["batch", self.config.n_z],
                                                   "distribution": "standard normal, float32"}}
        return usage | ({"n_classes": self.config.n_classes} if self.conditional else {})


class CDCGAN(DCGAN):
    """Class-conditional DCGAN: label embedding into the generator, projection discriminator."""


    def __init__(self, config: DCGANConfig) -> None:
        if config.n_classes < 2:
            raise ValueError(f"cdcgan needs labelled data: the data has n_classes={config.n_classes}, at least 2 "
                             "are needed; use dcgan for unlabelled images")
        super().__init__(config)

    def _labels(self, n: int, generator: torch.Generator, labels: Tensor | None) -> Tensor:
        """Return the requested labels (n,), or labels drawn uniformly with `generator` when None."""
        if labels is None:
            return torch.randint(self.config.n_classes, (n,), generator=generator, device=generator.device)
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < self.config.n_classes:
            raise ValueError(f"labels must lie in [0, {self.config.n_classes}), got {labels.tolist()}")
        return labels
