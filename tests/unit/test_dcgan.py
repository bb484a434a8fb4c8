"""DCGAN and CDCGAN: sample shapes and seeding, save/load, a train step that steps each network with its own loss's
gradient only, bit-exact training, and learning a toy dataset of images bright on their left or right half."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from config.params import TrainParams
from models.dcgan import CDCGAN, DCGAN, DCGANConfig
from training.trainer import Optimizers

CPU = torch.device("cpu")
N_Z = 8
FAMILIES = [DCGAN, CDCGAN]
from tests.image_data import contrast, halves


@pytest.fixture(autouse=True)
def one_thread():
    """Run these tiny models on one thread: more only add synchronisation, which on a busy machine costs 10-20x."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


def make(cls: type[DCGAN] = DCGAN, seed: int = 0, **kw) -> DCGAN:
    torch.manual_seed(seed)
    cfg = dict(image_size=8, channels=1, n_classes=2, n_z=N_Z, ngf=8, ndf=8, embed_dim=4)
    return cls(DCGANConfig(**(cfg | kw)))


def optimizers(model: DCGAN) -> Optimizers:
    params = TrainParams(lr=2e-3, beta1=0.5, beta2=0.999, weight_decay=0.0, grad_clip=0.0, max_steps=10,
                         warmup_steps=0)
    return Optimizers(model, params, CPU)




def train(model: DCGAN, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    opt = optimizers(model)
    for _ in range(steps):
        idx = torch.randint(len(x), (32,))
        metrics = model.train_step([(x[idx], y[idx])], opt)
    return metrics


class RecordingOpt:
    """An `Optimization` that records each group's gradients when stepped, then clears them like the trainer's,
    without changing any weight."""

    def __init__(self, model: DCGAN) -> None:
        self.groups = model.optimizer_groups()
        self.stepped: dict[str, list[torch.Tensor]] = {}

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, group: str) -> None:
        self.stepped[group] = [p.grad.clone() for p in self.groups[group]]
        for p in self.groups[group]:
            p.grad = None


def all_close(got: list[torch.Tensor], expected: list[torch.Tensor]) -> bool:
    return len(got) == len(expected) and all(torch.allclose(a, b, atol=1e-7) for a, b in zip(got, expected))


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


@pytest.mark.parametrize("image_size", [0, 4, 12, 24])
def test_config_rejects_image_sizes_that_are_not_powers_of_two_from_8(image_size):
    with pytest.raises(ValueError, match="power of two"):
        DCGANConfig(image_size=image_size)


@pytest.mark.parametrize("n_classes", [0, 1])
def test_cdcgan_needs_labelled_data(n_classes):
    with pytest.raises(ValueError, match="cdcgan needs labelled data"):
        make(CDCGAN, n_classes=n_classes)


@pytest.mark.parametrize("cls", FAMILIES)
@pytest.mark.parametrize(("image_size", "channels"), [(8, 1), (16, 3)])
def test_samples_are_images_in_range_and_leave_the_mode_alone(cls, image_size, channels):
    model = make(cls, image_size=image_size, channels=channels).train()
    images = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert images.shape == (5, channels, image_size, image_size) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert model.training and not images.requires_grad


def test_cdcgan_samples_the_requested_labels_and_checks_them():
    model = make(CDCGAN)
    zeros, ones = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    a = model.sample(4, generator=torch.Generator().manual_seed(0), labels=zeros)
    b = model.sample(4, generator=torch.Generator().manual_seed(0), labels=ones)
    assert not torch.equal(a, b)  # same noise, different class
    drawn = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(drawn, model.sample(4, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="shape"):
        model.sample(4, generator=torch.Generator(), labels=zeros[:3])
    with pytest.raises(ValueError, match="lie in"):
        model.sample(4, generator=torch.Generator(), labels=ones * 2)


@pytest.mark.parametrize("cls", FAMILIES)
def test_each_network_is_stepped_with_its_own_loss_gradient_only(cls):
    model = make(cls)
    x, y = halves(12)
    micro_batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    opt = RecordingOpt(model)
    model.train_step(micro_batches, opt)  # a first step: its generator loss also reaches D, which must not leak
    torch.manual_seed(5)
    metrics = model.train_step(micro_batches, opt)

    # The same step by hand: each network's loss averaged over the micro-batches, same noise in the same order;
    # the discriminator learns from the fakes detached, the generator from the same fakes.
    torch.manual_seed(5)
    fakes = [model.G(torch.randn(len(xb), N_Z), yb) for xb, yb in micro_batches]
    d_loss = sum(bce(model.D(xb, yb), 1.0) + bce(model.D(f.detach(), yb), 0.0)
                 for (xb, yb), f in zip(micro_batches, fakes))
    g_loss = sum(bce(model.D(f, yb), 1.0) for (_, yb), f in zip(micro_batches, fakes))
    d_grads = torch.autograd.grad(d_loss / 2, list(model.D.parameters()))
    g_grads = torch.autograd.grad(g_loss / 2, list(model.G.parameters()))
    assert all_close(opt.stepped["discriminator"], d_grads) and all_close(opt.stepped["generator"], g_grads)
    assert metrics["d_loss"] == pytest.approx(d_loss.item() / 2, rel=1e-5)
    assert metrics["loss"] == metrics["g_loss"] == pytest.approx(g_loss.item() / 2, rel=1e-5)
    assert 0 < metrics["d_fake"] < 1 and 0 < metrics["d_real"] < 1
    assert all(p.grad is None for p in model.parameters())  # nothing stale is left for the next step


def test_validation_loss_is_the_discriminator_loss_on_reals_and_fresh_fakes():
    model = make(CDCGAN).eval()
    x, y = halves(8)
    with torch.no_grad():
        torch.manual_seed(0)
        got = model.validation_loss((x, y))
        torch.manual_seed(0)
        fake = model.G(torch.randn(8, N_Z), y)
        expected = bce(model.D(x, y), 1.0) + bce(model.D(fake, y), 0.0)
    assert got.shape == () and got.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("cls", FAMILIES)
def test_training_is_bit_exact_for_a_seed(cls):
    data = halves(64)
    a, b, c = make(cls), make(cls), make(cls, seed=1)
    for model in (a, b, c):
        train(model, *data, steps=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))


def test_dcgan_learns_to_draw_the_bright_side():
    x, y = halves(256)
    x, y = x[y == 0], y[y == 0]  # one mode: every image is bright on the left
    model = make(DCGAN)
    before = contrast(model.sample(64, generator=torch.Generator().manual_seed(0)))
    metrics = train(model, x, y, steps=40)
    after = contrast(model.sample(64, generator=torch.Generator().manual_seed(0)))
    assert before.abs().mean() < 0.1  # a fresh generator draws flat images
    assert after.mean() > 0.3 and (after > 0).float().mean() > 0.9, after
    assert metrics["d_real"] > metrics["d_fake"]


def test_cdcgan_draws_the_requested_side():
    model = make(CDCGAN)
    train(model, *halves(256), steps=40)
    labels = torch.zeros(64, dtype=torch.long)
    left = contrast(model.sample(64, generator=torch.Generator().manual_seed(0), labels=labels))
    right = contrast(model.sample(64, generator=torch.Generator().manual_seed(0), labels=labels + 1))
    assert (left > 0).float().mean() > 0.9 and (right < 0).float().mean() > 0.9, (left, right)
    assert left.mean() - right.mean() > 0.5
