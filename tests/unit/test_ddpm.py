"""DDPM: config validation, seeded samplers and their step counts, the EMA weights, persistence and learning."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_model, save_model

import models.base
import models.ddpm
from config.params import TrainParams
from models.base import load_generator
from models.ddpm import DDPM, DDPMConfig
from training.trainer import Optimizers

CPU = torch.device("cpu")
SAMPLERS = ["ddpm", "ddim", "dpm_solver"]
TINY = dict(image_size=8, channels=1, block_out_channels=(16, 32), norm_num_groups=8, num_train_timesteps=50)


@pytest.fixture(autouse=True)
def one_thread():
    """Run these tiny networks on one thread: splitting them costs more than it saves, and on a busy 2-core
    machine intra-op threads wait on each other for seconds per call."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return DDPM(DDPMConfig(**(TINY | kw)))


def optimizers(model, lr=1e-3):
    return Optimizers(model, TrainParams(lr=lr, weight_decay=0.0, max_steps=100, warmup_steps=0), CPU)


def pattern_batch(n=16, size=8, channels=1):
    """Every image the same fixed pattern in [-1, 1]: a diagonal gradient."""
    ramp = torch.linspace(-1, 1, size)
    img = ((ramp[:, None] + ramp[None, :]) / 2).expand(channels, size, size)  # (C, H, W)
    return img.expand(n, -1, -1, -1).clone(), torch.zeros(n, dtype=torch.long)


def count_calls(net):
    calls = []
    handle = net.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def test_config_validates_and_round_trips_through_json():
    cfg = DDPMConfig(**TINY)
    again = DDPMConfig(**json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert again == cfg and isinstance(again.block_out_channels, tuple)
    bad = [
        dict(image_size=10, block_out_channels=(16, 32, 32)),  # 10 is not a multiple of 2**2
        dict(block_out_channels=(16, 20)),  # 20 is not a multiple of norm_num_groups
        dict(sampler="euler"),
        dict(beta_schedule="cosine"),
        dict(ema_decay=1.0),
        dict(ema_decay=0.0),
        dict(sample_steps=51),
    ]
    for kw in bad:
        with pytest.raises(ValueError):
            DDPMConfig(**(TINY | kw))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samples_are_images_in_range_and_seeded(sampler):
    model = make(channels=3)
    draw = lambda seed: model.sample(3, generator=torch.Generator().manual_seed(seed), steps=4, sampler=sampler)
    a, b, c = draw(1), draw(1), draw(2)
    assert a.shape == (3, 3, 8, 8) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(("sampler", "steps", "expected"), [
    ("ddim", 5, 5), ("dpm_solver", 5, 5), ("ddpm", 7, 7),
    ("ddim", None, 6),  # the config's sample_steps
    ("ddpm", None, 50),  # full ancestral sampling: one call per training timestep
])
def test_samplers_call_the_ema_network_once_per_step(sampler, steps, expected):
    model = make(sample_steps=6)
    calls, handle = count_calls(model.ema)
    online, _ = count_calls(model.unet)
    model.sample(2, generator=torch.Generator().manual_seed(0), steps=steps, sampler=sampler)
    handle.remove()
    assert len(calls) == expected and not online


def test_the_default_sampler_comes_from_the_config_and_bad_requests_fail():
    model = make(sampler="dpm_solver", sample_steps=3)
    seed = lambda: torch.Generator().manual_seed(0)
    assert torch.equal(model.sample(2, generator=seed()), model.sample(2, generator=seed(), sampler="dpm_solver"))
    with pytest.raises(ValueError, match="steps"):
        model.sample(2, generator=seed(), steps=51)
    with pytest.raises(ValueError, match="sampler"):
        model.sample(2, generator=seed(), sampler="euler")
    assert model.sample(0, generator=seed()).shape == (0, 1, 8, 8)


def test_large_requests_are_denoised_in_chunks_from_the_same_noise(monkeypatch):
    model = make()
    whole = model.sample(5, generator=torch.Generator().manual_seed(3), steps=3, sampler="ddim")
    monkeypatch.setattr(models.ddpm, "SAMPLE_CHUNK", 2)
    calls, handle = count_calls(model.ema)
    chunked = model.sample(5, generator=torch.Generator().manual_seed(3), steps=3, sampler="ddim")
    handle.remove()
    assert len(calls) == 3 * 3  # chunks of 2, 2 and 1
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=0)  # batch size changes kernels only


def test_ema_is_frozen_and_moves_toward_the_online_weights_after_a_step():
    model = make()
    ema_ids = {id(p) for p in model.ema.parameters()}
    group = model.optimizer_groups()["model"]
    assert not ema_ids & {id(p) for p in group}
    assert len(group) == len(list(model.unet.parameters()))
    before = [p.clone() for p in model.ema.parameters()]
    metrics = model.train_step([pattern_batch(4)], optimizers(model))
    assert set(metrics) == {"loss"} and metrics["loss"] > 0
    assert int(model.ema_updates) == 1
    online = list(model.unet.parameters())
    gap_before = sum((b - w).abs().sum() for b, w in zip(before, online))
    gap_after = sum((e - w).abs().sum() for e, w in zip(model.ema.parameters(), online))
    assert 0 < gap_after < gap_before
    model.train()
    assert model.unet.training and not model.ema.training


def test_validation_loss_scores_the_ema_network():
    model = make()
    model.train_step([pattern_batch(4)], optimizers(model, lr=1e-2))
    batch = pattern_batch(4)

    def seeded(fn):
        torch.manual_seed(7)
        with torch.no_grad():
            return fn(batch).item()

    assert seeded(model.validation_loss) != pytest.approx(seeded(model.loss), rel=1e-4)
    model.unet.load_state_dict(model.ema.state_dict())
    assert seeded(model.validation_loss) == pytest.approx(seeded(model.loss), rel=1e-6)


def test_weights_and_ema_counter_survive_save_and_load(tmp_path, monkeypatch):
    model = make()
    opt = optimizers(model)
    for _ in range(3):
        model.train_step([pattern_batch(4)], opt)
    save_model(model, str(tmp_path / "w.safetensors"))
    fresh = make(seed=1)
    load_model(fresh, str(tmp_path / "w.safetensors"))
    assert int(fresh.ema_updates) == 3
    model.save(tmp_path / "gen")
    loaded = load_generator(tmp_path / "gen")
    assert type(loaded) is DDPM and loaded.config == model.config
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    seed = lambda: torch.Generator().manual_seed(0)
    assert torch.equal(model.sample(2, generator=seed(), steps=3), loaded.sample(2, generator=seed(), steps=3))


def test_training_on_one_pattern_lowers_the_denoising_loss():
    model = make()
    opt = optimizers(model, lr=2e-3)
    batch = pattern_batch(32)

    def denoising_loss():
        torch.manual_seed(123)  # the same noise and timesteps before and after
        with torch.no_grad():
            return model.loss(batch).item()

    first = denoising_loss()
    torch.manual_seed(0)
    for _ in range(40):
        model.train_step([pattern_batch(16)], opt)
    assert denoising_loss() < 0.2 * first  # about 0.05 in practice


def test_training_is_bit_exact_for_a_seed():
    def run():
        model = make(seed=5)
        opt = optimizers(model)
        torch.manual_seed(11)
        for _ in range(3):
            model.train_step([pattern_batch(4), pattern_batch(4)], opt)  # with gradient accumulation
        return model.state_dict()

    a, b = run(), run()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
