"""The VAE: its loss is the documented negative ELBO, it learns a toy dataset of left- or right-bright images,
sampling is seeded, reconstructions are deterministic, training is bit-exact, and it saves and loads."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from config.params import TrainParams
from models.vae import DECODER_STD, VAE, VAEConfig
from training.trainer import Optimizers

CPU = torch.device("cpu")
from tests.image_data import contrast, halves


@pytest.fixture(autouse=True)
def one_thread():
    """Run these tiny models on one thread: more only add synchronisation, which on a busy machine costs 10-20x."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


def make(seed: int = 0, **kw) -> VAE:
    torch.manual_seed(seed)
    cfg = dict(image_size=8, channels=1, n_classes=2, latent_dim=4, base_channels=8)
    return VAE(VAEConfig(**(cfg | kw)))




def train(model: VAE, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int = 0) -> dict[str, float]:
    params = TrainParams(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.0, grad_clip=0.0, max_steps=10,
                         warmup_steps=0)
    opt = Optimizers(model, params, CPU)
    torch.manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x), (32,))
        metrics = model.train_step([(x[idx], y[idx])], opt)
    return metrics


def seeded_loss(model: VAE, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    torch.manual_seed(100)
    with torch.no_grad():
        return model.loss(batch).item()


@pytest.mark.parametrize("kw", [{"image_size": 4}, {"image_size": 12}, {"beta": -1.0}])
def test_config_rejects_bad_values(kw):
    with pytest.raises(ValueError, match="power of two|beta"):
        VAEConfig(**kw)


@pytest.mark.parametrize(("image_size", "channels"), [(8, 1), (16, 3)])
def test_samples_and_reconstructions_are_images_in_range(image_size, channels):
    model = make(image_size=image_size, channels=channels).train()
    images = model.sample(5, generator=torch.Generator().manual_seed(0))
    x = torch.rand(3, channels, image_size, image_size) * 2 - 1
    recon = model.reconstruct(x)
    assert images.shape == (5, channels, image_size, image_size) and recon.shape == x.shape
    assert images.min() >= -1 and images.max() <= 1 and recon.min() >= -1 and recon.max() <= 1
    assert torch.equal(recon, model.reconstruct(x))  # the posterior mean: no noise
    assert model.training and not images.requires_grad and not recon.requires_grad


def test_loss_is_the_negative_beta_elbo_per_pixel_value():
    model = make(beta=0.5)
    x, y = halves(6)
    with torch.no_grad():
        torch.manual_seed(0)
        terms = model.elbo_terms(x)
        torch.manual_seed(0)
        loss = model.loss((x, y))
        torch.manual_seed(0)
        mu, logvar = model.encode(x)
        std = torch.exp(0.5 * logvar)
        x_hat = model.decode(mu + std * torch.randn_like(mu))
    recon = 0.5 * ((x - x_hat) ** 2).sum(dim=(1, 2, 3)) / DECODER_STD**2
    kl = kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum(dim=1)
    assert torch.allclose(terms["recon"], recon) and torch.allclose(terms["kl"], kl)
    assert loss.item() == pytest.approx(((recon + 0.5 * kl).mean() / x[0].numel()).item(), rel=1e-5)


def test_training_lowers_the_loss_and_reconstructs_the_bright_side():
    x, y = halves(256)
    model = make()
    before = seeded_loss(model, (x, y))
    metrics = train(model, x, y, steps=40)
    after = seeded_loss(model, (x, y))
    assert after < 0.1 * before, (before, after)
    assert set(metrics) == {"loss", "recon", "kl"} and metrics["kl"] > 0
    assert torch.equal(contrast(model.reconstruct(x)) > 0, y == 0)
    samples = contrast(model.sample(64, generator=torch.Generator().manual_seed(0)))
    assert samples.abs().mean() > 0.3  # samples commit to a side, like the data, not a flat average


def test_training_is_bit_exact_for_a_seed():
    data = halves(64)
    a, b, c = make(), make(), make(seed=1)
    for model in (a, b, c):
        train(model, *data, steps=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))


