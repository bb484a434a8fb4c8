"""Convolutional variational autoencoder (`model.name: vae`; Kingma & Welling 2014, https://arxiv.org/abs/1312.6114).

The encoder halves the resolution with stride-2 convolutions (doubling the width from `base_channels`) down to 4x4,
then a linear layer gives the mean and log-variance of a diagonal Gaussian posterior q(z|x) over `latent_dim`
latents. The decoder mirrors it with stride-2 transposed convolutions up to `image_size` and a tanh output, the
mean of the decoder likelihood p(x|z).

The loss is the negative beta-ELBO per pixel value: (recon + beta * KL) / (C * H * W), with
    recon = 0.5 * sum((x - x_hat)^2) / DECODER_STD^2     (Gaussian log-likelihood of fixed variance),
    KL    = KL(q(z|x) || N(0, I))                         (closed form),
and z drawn once per image by reparameterisation from torch's global RNG. The likelihood's log-normaliser
(C*H*W * log(DECODER_STD * sqrt(2 pi)) per image) is a constant and is left out, so the loss stays positive. With
beta = 1 it is the ELBO proper; other values trade reconstruction sharpness (< 1) for a smoother latent space (> 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from models.base import ImageGenerator, OnnxGraph, Optimization, Traced, eval_mode

# Standard deviation of the decoder's Gaussian likelihood, in the data's [-1, 1] units (0.15 on a [0, 1] scale). It
# sets how many nats a squared error costs against the KL: smaller gives sharper reconstructions but a posterior that
# drifts from the prior (noisy samples); larger gives blurry ones. On scikit-learn's digits upsampled to 16x16 (3,000
# steps, default config), 0.2 / 0.3 / 0.5 gave held-out reconstruction MSEs of 0.0085 / 0.0097 / 0.015 and samples
# from noisy to smooth; 0.3 keeps reconstructions sharp with clean samples.
DECODER_STD = 0.3


@dataclass(frozen=True)
class VAEConfig:
    image_size: int = 16  # height = width; a power of two >= 8 (from the data)
    channels: int = 1  # image channels (from the data)
    n_classes: int = 0  # classes in the data (from the data; unused: the VAE is unconditional)
    latent_dim: int = 16  # size of z
    base_channels: int = 32  # width of the outermost conv layers; doubles towards 4x4
    beta: float = 1.0  # weight of the KL term; 1 = the ELBO

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {self.image_size}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")




class VAE(ImageGenerator):
    """Unconditional convolutional VAE; class labels in the batches are ignored."""

    Config = VAEConfig

    def __init__(self, config: VAEConfig) -> None:
        super().__init__(config)
        n_stages = config.image_size.bit_length() - 3  # stride-2 layers between 4x4 and image_size
        widths = [config.base_channels * 2**i for i in range(n_stages)]  # at S/2, S/4, ..., 4x4
        self.n_top = widths[-1] * 4 * 4  # values in the 4x4 feature map

        layers: list[nn.Module] = []
        for w_in, w_out in zip([config.channels, *widths], widths):
            layers += [nn.Conv2d(w_in, w_out, 4, 2, 1), nn.SiLU()]
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        self.to_posterior = nn.Linear(self.n_top, 2 * config.latent_dim)  # -> (mu, logvar)

        self.from_latent = nn.Linear(config.latent_dim, self.n_top)
        layers = []
        for w_in, w_out in zip(widths[::-1], widths[-2::-1]):
            layers += [nn.SiLU(), nn.ConvTranspose2d(w_in, w_out, 4, 2, 1)]
        layers += [nn.SiLU(), nn.ConvTranspose2d(widths[0], config.channels, 4, 2, 1), nn.Tanh()]
        self.decoder = nn.Sequential(*layers)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return the posterior mean and log-variance (B, latent_dim) of images x (B, C, S, S)."""
        mu, logvar = self.to_posterior(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Return the decoder mean (B, C, S, S) in [-1, 1] for latents z (B, latent_dim)."""
        h = self.from_latent(z).view(z.size(0), -1, 4, 4)  # (B, widths[-1], 4, 4)
        return self.decoder(h)

    def elbo_terms(self, x: Tensor) -> dict[str, Tensor]:
        """Return the reconstruction term and the KL (B,) of the negative ELBO, in nats per image."""
        mu, logvar = self.encode(x)
        mu, logvar = mu.float(), logvar.float()
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # reparameterisation, global RNG
        x_hat = self.decode(z).float()
        recon = 0.5 * (x.float() - x_hat).pow(2).flatten(1).sum(dim=1) / DECODER_STD**2
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)
        return {"recon": recon, "kl": kl}

    def _objective(self, terms: dict[str, Tensor]) -> Tensor:
        n_values = self.config.channels * self.config.image_size**2
        return (terms["recon"] + self.config.beta * terms["kl"]).mean() / n_values

    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """Negative beta-ELBO per pixel value, averaged over the batch (labels are ignored)."""
        return self._objective(self.elbo_terms(batch[0]))

    def compile_targets(self) -> list[torch.nn.Module]:
        return [self.encoder, self.decoder]

    def train_step(self, micro_batches: Sequence[tuple[Tensor, Tensor]], opt: Optimization) -> dict[str, Tensor]:
        """The default accumulated step, also reporting the two ELBO terms in nats per image."""
        n = len(micro_batches)
        metrics: dict[str, Tensor | float] = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
        for x, _ in micro_batches:
            with opt.autocast():
                terms = self.elbo_terms(x)
                loss = self._objective(terms)
            opt.backward(loss / n)
            metrics["loss"] = metrics["loss"] + loss.detach() / n  # device tensors: no host sync per step
            metrics["recon"] = metrics["recon"] + terms["recon"].detach().float().mean() / n
            metrics["kl"] = metrics["kl"] + terms["kl"].detach().float().mean() / n
        opt.step("model")
        return metrics

    def onnx_graphs(self) -> dict[str, OnnxGraph]:
        """The decoder: latents to images, as `sample` maps them."""
        cfg, g = self.config, torch.Generator().manual_seed(0)

        def inputs(b: int) -> tuple[Tensor]:
            return (torch.randn(b, cfg.latent_dim, generator=g),)

        doc = (f"images (batch, {cfg.channels}, {cfg.image_size}, {cfg.image_size}) float32 in [-1, 1] (tanh, the "
               f"decoder's mean) from latents z (batch, {cfg.latent_dim}) float32; z drawn from N(0, I) gives what "
               f"`sample` returns for that z")
        return {"decoder": OnnxGraph(
            module=Traced(self, lambda vae, z: vae.decode(z)), inputs=inputs(2), input_names=("z",),
            output_names=("images",), dynamic_axes={"z": {0: "batch"}, "images": {0: "batch"}}, tolerance=1e-4,
            doc=doc, checks=(inputs(1), inputs(5)))}

    def onnx_usage(self) -> dict[str, Any]:
        return super().onnx_usage() | {"latent": {"name": "z", "shape": ["batch", self.config.latent_dim],
                                                  "distribution": "standard normal, float32"}}

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Return the decoded posterior means (B, C, S, S) of images x: deterministic reconstructions."""
        with eval_mode(self):
            return self.decode(self.encode(x)[0]).float()

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels: Tensor | None = None,
               steps: int | None = None) -> Tensor:
        """Decode `n` latents z ~ N(0, I) drawn on the generator's device (CPU for a CPU generator), so a seed gives
        the same images on any device. `labels` and `steps` are ignored."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=generator.device).to(device)
        with eval_mode(self):
            return self.decode(z).float()
