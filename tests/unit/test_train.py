"""Pure logic of the trainer: learning-rate schedule, device choice, batch windows and the checkpoint key."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from config.params import TrainParams
from runtime.device import pick_device
from runtime.errors import DataError, ParamsError
from training.trainer import TokenWindows, lr_at, run_key

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------------------------- lr_at


def schedule(**kw) -> tuple[TrainParams, list[float]]:
    cfg = TrainParams(**{"max_steps": 100, "warmup_steps": 10, "lr": 0.01, "min_lr_ratio": 0.1, **kw})
    return cfg, [lr_at(s, cfg) for s in range(cfg.max_steps + 1)]


def test_warmup_is_linear_and_peaks_at_lr():
    cfg, lrs = schedule()
    warm = lrs[: cfg.warmup_steps]
    assert warm[0] == pytest.approx(cfg.lr / cfg.warmup_steps)
    steps = np.diff(warm)
    assert np.allclose(steps, cfg.lr / cfg.warmup_steps)  # equal increments: linear
    assert warm[-1] == pytest.approx(cfg.lr)  # the last warmup step reaches the peak ...
    assert max(lrs) == pytest.approx(cfg.lr)  # ... which is never exceeded
    assert lrs[cfg.warmup_steps] == pytest.approx(cfg.lr)  # cosine starts at the peak


def test_cosine_decays_monotonically_to_lr_times_min_lr_ratio():
    cfg, lrs = schedule()
    after = lrs[cfg.warmup_steps :]
    assert all(b <= a + 1e-15 for a, b in zip(after, after[1:]))
    assert after[-1] == pytest.approx(cfg.lr * cfg.min_lr_ratio)
    assert lrs[cfg.max_steps - 1] == pytest.approx(cfg.lr * cfg.min_lr_ratio, rel=0.01)  # last update: near floor
    assert min(lrs) >= cfg.lr * cfg.min_lr_ratio - 1e-15  # never below the floor
    # half-way through the decay the cosine is exactly in the middle of peak and floor
    mid = cfg.warmup_steps + (cfg.max_steps - cfg.warmup_steps) // 2
    assert lrs[mid] == pytest.approx((cfg.lr + cfg.lr * cfg.min_lr_ratio) / 2)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_cosine_floor_follows_min_lr_ratio(ratio):
    cfg, lrs = schedule(min_lr_ratio=ratio)
    assert lrs[-1] == pytest.approx(cfg.lr * ratio, abs=1e-12)
    assert lr_at(10 * cfg.max_steps, cfg) == pytest.approx(cfg.lr * ratio, abs=1e-12)  # stays there


def test_no_warmup_starts_at_peak():
    cfg, lrs = schedule(warmup_steps=0)
    assert lrs[0] == pytest.approx(cfg.lr)
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))


# ---------------------------------------------------------------------------------------------------- pick_device


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("requested", ["cuda", "mps"])
def test_unavailable_device_is_a_params_error_naming_the_key_and_allowed_values(cpu_only, requested):
    with pytest.raises(ParamsError) as err:
        pick_device(requested)
    message = str(err.value)
    assert "train.device" in message
    assert repr(requested) in message
    allowed = message.split("allowed values:")[1]
    assert [v.strip() for v in allowed.split(",")] == ["auto", "cpu"]  # only what this machine has


def test_auto_and_cpu_resolve_to_cpu_without_accelerators(cpu_only):
    assert pick_device("auto") == CPU
    assert pick_device("cpu") == CPU


def test_auto_prefers_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto").type == "cuda"


# ---------------------------------------------------------------------------------------------------- TokenWindows


def windows(tokens, seed=0, block=8, batch=5):
    return TokenWindows(tokens, block, batch, torch.Generator().manual_seed(seed), CPU)


def test_targets_are_inputs_shifted_by_one():
    tokens = np.arange(200, dtype=np.uint16)  # each token equals its position: a window shows where it came from
    draw = windows(tokens)
    for _ in range(5):
        x, y = draw()
        assert x.shape == y.shape == (5, 8)
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(y, x + 1)  # y[t] is the token after x[t]
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert int(x.min()) >= 0 and int(y.max()) < len(tokens)
        assert torch.equal(torch.diff(x, dim=1), torch.ones(5, 7, dtype=torch.int64))  # contiguous windows


def test_same_seed_gives_same_batches_and_other_seeds_differ():
    tokens = np.random.default_rng(0).integers(0, 300, 5000).astype(np.uint16)
    a, b, c = windows(tokens, seed=7), windows(tokens, seed=7), windows(tokens, seed=8)
    batches_a = [a() for _ in range(4)]
    batches_b = [b() for _ in range(4)]
    batches_c = [c() for _ in range(4)]
    for (xa, ya), (xb, yb) in zip(batches_a, batches_b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(batches_a, batches_c))
    assert not torch.equal(batches_a[0][0], batches_a[1][0])  # successive batches move on


def test_restoring_the_generator_state_replays_the_batch_sequence():
    tokens = np.arange(1000, dtype=np.uint16)
    draw = windows(tokens, seed=3)
    draw()
    state = draw.generator.get_state()
    expected = [draw() for _ in range(3)]
    draw.generator.set_state(state)
    assert all(torch.equal(e[0], g[0]) for e, g in zip(expected, [draw() for _ in range(3)]))


@pytest.mark.parametrize("n_tokens", [0, 5, 9])  # block 8 needs at least block + 2 tokens
def test_too_short_token_stream_is_a_data_error(n_tokens):
    with pytest.raises(DataError, match="block_size=8"):
        windows(np.arange(n_tokens, dtype=np.uint16))


def test_shortest_usable_stream_works():
    x, y = windows(np.arange(10, dtype=np.uint16))()
    assert torch.equal(x[0], torch.arange(8)) and torch.equal(y[0], torch.arange(1, 9))


# ---------------------------------------------------------------------------------------------------- run_key


def test_run_key_changes_with_what_determines_the_weights(project):
    base = run_key(project.make_params(), "data-1")
    assert len(base) == 16 and base == run_key(project.make_params(), "data-1")  # deterministic
    changed = {
        "model": run_key(project.make_params(model={"gpt": {"n_embd": 64}}), "data-1"),
        "block_size": run_key(project.make_params(model={"gpt": {"block_size": 16}}), "data-1"),
        "lr": run_key(project.make_params(train={"lr": 0.001}), "data-1"),
        "seed": run_key(project.make_params(train={"seed": 1}), "data-1"),
        "max_steps": run_key(project.make_params(train={"max_steps": 5}), "data-1"),
        "precision": run_key(project.make_params(train={"precision": "bf16"}), "data-1"),
        "data": run_key(project.make_params(), "data-2"),
    }
    assert base not in changed.values()
    assert len(set(changed.values())) == len(changed)


def test_run_key_ignores_logging_and_output_locations(project):
    base = run_key(project.make_params(), "data-1")
    for overrides in (
        {"log_interval": 3},
        {"out_dir": "elsewhere/train"},
        {"checkpoint_dir": "elsewhere/ckpt"},
        {"metrics_path": "elsewhere/m.json"},
        {"plots_path": "elsewhere/p.json"},
    ):
        assert run_key(project.make_params(train=overrides), "data-1") == base, overrides
    # stage outputs of other sections do not matter either
    assert run_key(project.make_params(evaluate={"n_samples": 5}), "data-1") == base


def test_lr_at_returns_finite_values_for_single_step_runs():
    cfg = TrainParams(max_steps=1, warmup_steps=1, lr=0.5)
    assert lr_at(0, cfg) == pytest.approx(0.5)
    assert math.isfinite(lr_at(1, cfg))


# ---------------------------------------------------------------------------------------------------- prefetching


def test_prefetching_hands_out_the_same_batches_as_the_source_alone():
    from training.trainer import Prefetched

    tokens = np.random.default_rng(1).integers(0, 300, 5000).astype(np.uint16)
    plain, ahead = windows(tokens, seed=5), Prefetched(windows(tokens, seed=5))
    for _ in range(6):
        (xp, yp), (xa, ya) = plain(), ahead()
        assert torch.equal(xp, xa) and torch.equal(yp, ya)
    ahead.close()


def test_a_prefetching_resume_replays_exactly_the_batches_an_uninterrupted_run_draws():
    """The state saved mid-run is that of the batches handed out, not of the one already prepared ahead."""
    from training.trainer import Prefetched

    tokens = np.random.default_rng(2).integers(0, 300, 5000).astype(np.uint16)
    run = Prefetched(windows(tokens, seed=9))
    for _ in range(3):
        run()
    state = run.state_dict()  # a checkpoint after step 3; batch 4 is being prepared
    rest = [run() for _ in range(4)]
    resumed = Prefetched(windows(tokens, seed=1234))  # a new process: its own seed until the state is loaded
    resumed.load_state_dict(state)
    for (xe, ye), (xg, yg) in zip(rest, [resumed() for _ in range(4)]):
        assert torch.equal(xe, xg) and torch.equal(ye, yg)
    # reloading a state while a batch is prepared ahead drops that batch
    run.load_state_dict(state)
    assert torch.equal(run()[0], rest[0][0])
    run.close()
    resumed.close()


def test_an_error_drawing_a_prefetched_batch_reaches_the_caller():
    from training.trainer import Prefetched

    calls = []

    class Failing:
        def __call__(self):
            calls.append(1)
            if len(calls) > 1:
                raise DataError("the token file went away")
            return "batch 1"

        def state_dict(self):
            return {"calls": len(calls)}

        def load_state_dict(self, state):
            pass

    ahead = Prefetched(Failing())
    assert ahead() == "batch 1"
    with pytest.raises(DataError, match="went away"):
        ahead()


# ---------------------------------------------------------------------------------------------------- compile


@pytest.mark.parametrize(("setting", "device", "expected"), [
    ("auto", "cpu", False), ("auto", "cuda", True), (True, "cpu", True), (False, "cuda", False)])
def test_train_compile_auto_compiles_on_cuda_only(setting, device, expected):
    from runtime.device import compile_enabled

    assert compile_enabled(setting, torch.device(device)) is expected
