"""LSTM/GRU language models and the contiguous-stream sampler they train on (truncated BPTT)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.rnn import GRU, LSTM, RNNConfig
from runtime.errors import DataError
from training.trainer import StreamWindows

CPU = torch.device("cpu")
FAMILIES = [LSTM, GRU]


def make(cls, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=20, n_layer=2, n_embd=8, n_hidden=16, dropout=0.0, block_size=6)
    return cls(RNNConfig(**(cfg | kw)))


@pytest.mark.parametrize("cls", FAMILIES)
def test_the_model_learns_a_repeating_sequence(cls):
    model = make(cls)
    tokens = torch.arange(60) % 7
    x, y = tokens[:-1][None], tokens[1:][None]
    opt = torch.optim.AdamW(model.parameters(), lr=0.03)
    first = model.loss((x, y)).item()
    for _ in range(60):
        loss = model.loss((x, y))
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.2 * first


@pytest.mark.parametrize("cls", FAMILIES)
def test_stream_batches_carry_detached_state_and_plain_batches_do_not(cls):
    model = make(cls)
    x = torch.randint(0, 20, (3, 6))
    y = torch.randint(0, 20, (3, 6))
    fresh = model.loss((x, y, True)).item()
    assert fresh == pytest.approx(model.loss((x, y)).item())  # a fresh window starts from zero state
    carried = model.train_state()
    assert carried and all(not t.requires_grad for t in carried.values())  # truncated: no graph kept
    continued = model.loss((x, y, False)).item()
    assert continued != pytest.approx(fresh)  # the carried state changes the prediction
    before = {k: v.clone() for k, v in model.train_state().items()}
    model.loss((x, y))  # validation-style batch leaves the carried state alone
    assert all(torch.equal(before[k], v) for k, v in model.train_state().items())


@pytest.mark.parametrize("cls", FAMILIES)
def test_train_state_round_trip_restores_the_carried_state(cls):
    a, b = make(cls), make(cls)
    x, y = torch.randint(0, 20, (2, 6)), torch.randint(0, 20, (2, 6))
    a.loss((x, y, True))
    b.load_train_state(a.train_state())
    assert a.loss((x, y, False)).item() == b.loss((x, y, False)).item()


@pytest.mark.parametrize("cls", FAMILIES)
@pytest.mark.parametrize("n", [2, 50, 700])  # 700 spans several scoring chunks
def test_score_stream_equals_one_pass_over_the_whole_stream(cls, n):
    model = make(cls).eval()
    tokens = np.random.default_rng(0).integers(0, 20, n).astype(np.uint16)
    total, count = model.score_stream(tokens, 4, CPU)
    ids = torch.from_numpy(tokens.astype(np.int64))[None]
    with torch.no_grad():
        logits, _ = model(ids[:, :-1])
    expected = F.cross_entropy(logits.flatten(0, 1), ids[0, 1:], reduction="sum").item()
    assert count == n - 1
    assert total == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("cls", FAMILIES)
def test_greedy_generation_matches_a_full_recompute_and_sampling_is_seeded(cls):
    model = make(cls).eval()
    prompt = torch.randint(0, 20, (2, 5))
    out = model.generate(prompt, 12, temperature=0.0)
    seq = prompt
    for _ in range(12):
        with torch.no_grad():
            logits, _ = model(seq)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq[:, 5:])
    a = model.sample(3, generator=torch.Generator().manual_seed(1), max_new_tokens=20, temperature=1.0)
    b = model.sample(3, generator=torch.Generator().manual_seed(1), max_new_tokens=20, temperature=1.0)
    c = model.sample(3, generator=torch.Generator().manual_seed(2), max_new_tokens=20, temperature=1.0)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (3, 20)


def test_stream_windows_continue_each_row_and_mark_restarts():
    tokens = np.arange(1000, dtype=np.uint16)
    windows = StreamWindows(tokens, block_size=10, batch_size=4, device=CPU)
    batches = [windows() for _ in range(windows.n_windows + 1)]
    assert batches[0][2] and not batches[1][2] and batches[-1][2]  # fresh at the start and after one pass
    for (x0, y0, _), (x1, _, _) in zip(batches[:-2], batches[1:-1]):
        assert torch.equal(x1[:, 0], y0[:, -1])  # row b continues where row b stopped
        assert torch.equal(y0, x0 + 1)
    assert len({int(x[0, 0]) for x, _, _ in batches[:-1]}) == windows.n_windows
    state = windows.state_dict()
    nxt = windows()
    windows.load_state_dict(state)
    assert torch.equal(windows()[0], nxt[0])


def test_stream_windows_refuse_a_stream_too_short_for_the_batch():
    with pytest.raises(DataError, match="too few"):
        StreamWindows(np.arange(50, dtype=np.uint16), block_size=10, batch_size=8, device=CPU)
