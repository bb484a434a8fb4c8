"""Checkpoints: nothing pickled, every tensor and nested value restored, corruption detected."""

from __future__ import annotations

import json
import logging
import pickle

import pytest
import torch

from training.checkpoint import (
    MODEL_FILE,
    STATE_FILE,
    TENSORS_FILE,
    flatten,
    load_checkpoint,
    previous_checkpoint,
    save_checkpoint,
    unflatten,
)


def json_round_trip(obj, prefix="state"):
    """flatten -> JSON text -> unflatten, as save/load do (JSON turns tuples into lists)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.loads(json.dumps(flatten(obj, prefix, tensors)))
    return unflatten(skeleton, tensors), tensors


def assert_same(a, b):
    """Deep equality where tensors compare by dtype, shape and value, and tuples compare equal to lists."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)  # same keys, same types, same order
        assert [type(k) for k in a] == [type(k) for k in b]
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert type(a) is type(b) and a == b


NESTED = {
    "step": 12,
    "best_val": 3.25,
    "run_id": None,
    "name": "gpt",
    "flag": True,
    "history": [{"step": 5, "loss": 1.5}, {"step": 10, "loss": 1.25}],
    "optimizers": {
        "model": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.arange(6.0).reshape(2, 3)},
                      1: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4, dtype=torch.float16)}},
            "param_groups": [{"params": [0, 1], "betas": (0.9, 0.95), "lr": 0.001, "fused": None}],
        },
    },
    "rng": {"torch": torch.ByteTensor([1, 2, 3, 255]), "cuda": [torch.tensor([7], dtype=torch.uint8)]},
    "pair": (torch.tensor([1, 2]), "x"),
    "empty": {},
    "empty_list": [],
}


def test_flatten_unflatten_round_trip_through_json():
    restored, tensors = json_round_trip(NESTED)
    assert_same(NESTED, restored)
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    assert len(tensors) == 7  # every tensor collected once


def test_int_keys_stay_ints():
    restored, _ = json_round_trip({0: "a", 1: {2: "b"}, "3": "c"})
    assert restored == {0: "a", 1: {2: "b"}, "3": "c"}
    assert [type(k) for k in restored] == [int, int, str]


def test_flatten_keeps_tensors_apart_when_key_paths_collide():
    # "a.b" at the top and "b" inside "a" (or the int 0 and the string "0") are different entries of the state;
    # each must come back with its own tensor.
    state = {"a.b": torch.tensor([1.0]), "a": {"b": torch.tensor([2.0])}, 0: torch.tensor([3.0]),
             "0": torch.tensor([4.0])}
    restored, _ = json_round_trip(state)
    assert_same(state, restored)


def test_flatten_detaches_and_moves_tensors_to_cpu():
    p = torch.nn.Parameter(torch.ones(2, 3))
    restored, tensors = json_round_trip({"w": p.t()})  # non-contiguous, requires grad
    assert not restored["w"].requires_grad
    assert torch.equal(restored["w"], torch.ones(3, 2))


# ---------------------------------------------------------------------------------------------------- save / load


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def trained_state(model: torch.nn.Module) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return {"step": 3, "optimizers": {"model": opt.state_dict()}, "rng": {"torch": torch.get_rng_state()},
            "history": [{"step": 3, "val_loss": 0.5}], "run_id": "abc"}


def test_save_load_round_trip_restores_weights_and_state(tmp_path, monkeypatch):
    model = make_model(0)
    state = trained_state(model)
    save_checkpoint(tmp_path / "last", model, state)
    assert sorted(p.name for p in (tmp_path / "last").iterdir()) == sorted([MODEL_FILE, TENSORS_FILE, STATE_FILE])

    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("checkpoints must not be unpickled"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("checkpoints must not be unpickled"))
    fresh = make_model(1)
    loaded = load_checkpoint(tmp_path / "last", fresh)

    assert loaded is not None
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    assert_same(state, loaded)
    # the optimizer state is usable: a restored optimizer continues exactly like the original one
    opt_a = torch.optim.AdamW(model.parameters(), lr=0.01)
    opt_a.load_state_dict(state["optimizers"]["model"])
    opt_b = torch.optim.AdamW(fresh.parameters(), lr=0.01)
    opt_b.load_state_dict(loaded["optimizers"]["model"])
    x = torch.randn(5, 4)
    for m, o in ((model, opt_a), (fresh, opt_b)):
        m(x).pow(2).mean().backward()
        o.step()
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_saving_again_replaces_the_checkpoint(tmp_path):
    model = make_model(0)
    save_checkpoint(tmp_path / "last", model, {"step": 1})
    save_checkpoint(tmp_path / "last", model, {"step": 2})
    assert load_checkpoint(tmp_path / "last", make_model(1))["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "last.prev"]  # no temporary leftovers
    assert load_checkpoint(tmp_path / "last.prev", make_model(1))["step"] == 1


def test_missing_checkpoint_returns_none_quietly(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="training.checkpoint"):
        assert load_checkpoint(tmp_path / "nope", make_model(0)) is None  # a fresh run: nothing to resume
        (tmp_path / "empty").mkdir()
        assert load_checkpoint(tmp_path / "empty", make_model(0)) is None
    assert not caplog.records


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_bit(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # inside the tensor payload: the file still parses
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [truncate, flip_bit])
@pytest.mark.parametrize("victim", [MODEL_FILE, TENSORS_FILE])
def test_damaged_checkpoint_is_rejected_with_a_warning(tmp_path, caplog, damage, victim):
    model = make_model(0)
    save_checkpoint(tmp_path / "last", model, trained_state(model))
    damage(tmp_path / "last" / victim)
    fresh = make_model(1)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}

    with caplog.at_level(logging.WARNING, logger="training.checkpoint"):
        assert load_checkpoint(tmp_path / "last", fresh) is None

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and str(tmp_path / "last") in warnings[0].getMessage()
    assert victim in warnings[0].getMessage()
    for k, v in fresh.state_dict().items():  # the model is left untouched
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("content", ["{not json", '{"format_version": 99, "sha256": {}, "state": {}}'])
def test_unreadable_state_file_is_rejected_with_a_warning(tmp_path, caplog, content):
    model = make_model(0)
    save_checkpoint(tmp_path / "last", model, {"step": 1})
    (tmp_path / "last" / STATE_FILE).write_text(content)
    with caplog.at_level(logging.WARNING, logger="training.checkpoint"):
        assert load_checkpoint(tmp_path / "last", make_model(1)) is None
    assert any(r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize("damage", [truncate, flip_bit])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage):
    model = make_model(0)
    save_checkpoint(tmp_path / "last", model, {"step": 5})
    save_checkpoint(tmp_path / "last", make_model(2), {"step": 10})
    damage(tmp_path / "last" / MODEL_FILE)
    fresh = make_model(1)
    with caplog.at_level(logging.WARNING, logger="training.checkpoint"):
        assert load_checkpoint(tmp_path / "last", fresh) == {"step": 5}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
    assert "ignoring checkpoint" in caplog.text and "using the previous checkpoint" in caplog.text


def test_leftovers_of_a_write_killed_midway_are_cleaned_up_by_the_next_save(tmp_path):
    (tmp_path / ".last.abc123.tmp").mkdir()
    (tmp_path / ".last.abc123.tmp" / MODEL_FILE).write_bytes(b"partial")
    save_checkpoint(tmp_path / "last", make_model(0), {"step": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_a_kill_between_the_swap_renames_still_resumes_from_the_previous_checkpoint(tmp_path, caplog):
    model = make_model(0)
    save_checkpoint(tmp_path / "last", model, {"step": 7})
    # the instant after `last` was moved aside and before its successor took the name
    (tmp_path / "last").rename(previous_checkpoint(tmp_path / "last"))
    fresh = make_model(1)
    with caplog.at_level(logging.WARNING):
        loaded = load_checkpoint(tmp_path / "last", fresh)
    assert loaded == {"step": 7}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
    assert "previous checkpoint" in caplog.text
