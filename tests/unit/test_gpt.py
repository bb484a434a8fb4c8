"""The GPT generator: it learns, its cached generation matches a plain forward pass, sampling is seeded, and it
saves and loads without pickle."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from models.base import CONFIG_FILE, WEIGHTS_FILE, Sampling, load_generator, pick_next
from models.gpt import GPT, GPTConfig

VOCAB, BLOCK = 61, 16


def tiny_gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(**{"vocab_size": VOCAB, "block_size": BLOCK, "n_layer": 2, "n_head": 2, "n_embd": 32,
                       "dropout": 0.0, **kw})
    return GPT(cfg).eval()


def context_sensitive_gpt(seed: int = 0) -> GPT:
    """A GPT with large random weights: unlike a fresh init, whose next token mostly echoes the current one, its
    predictions depend on the whole context, so a wrong context (cache or window) shows in the output."""
    model = tiny_gpt(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


def random_tokens(shape, seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def greedy_reference(model: GPT, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding by re-running the whole context each step: no KV cache."""
    tokens = prompt
    with torch.no_grad():
        for _ in range(n):
            logits = model(tokens[:, -model.block_size :])[:, -1, :]
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    return tokens[:, prompt.size(1) :]


def test_loss_decreases_on_a_fixed_batch():
    model = tiny_gpt().train()
    data = random_tokens((4, BLOCK + 1))
    batch = (data[:, :-1], data[:, 1:])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = model.loss(batch).item()
    assert first == pytest.approx(torch.log(torch.tensor(float(VOCAB))).item(), rel=0.15)  # ~uniform at init
    for _ in range(30):
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = model.loss(batch).item()
    assert last < 0.5 * first, (first, last)


def test_nll_is_the_summed_cross_entropy():
    model = tiny_gpt()
    data = random_tokens((3, 9))
    x, y = data[:, :-1], data[:, 1:]
    with torch.no_grad():
        logp = torch.log_softmax(model(x), dim=-1)
        expected = -logp.gather(-1, y.unsqueeze(-1)).sum()
        assert model.nll(x, y).item() == pytest.approx(expected.item(), rel=1e-5)
        assert model.loss((x, y)).item() == pytest.approx(expected.item() / y.numel(), rel=1e-5)


@pytest.mark.parametrize("prompt_len", [1, 3, BLOCK - 1])
def test_greedy_cached_generation_equals_uncached_argmax(prompt_len):
    model = context_sensitive_gpt()
    prompt = random_tokens((2, prompt_len))
    n = BLOCK - prompt_len + 1  # fills the whole context window: the last prediction sees block_size tokens
    got = model.generate(prompt, n, temperature=0.0)
    assert got.shape == (2, n)
    assert torch.equal(got, greedy_reference(model, prompt, n))


def test_generation_runs_past_block_size():
    model = context_sensitive_gpt()
    prompt = random_tokens((2, 5))
    n = 3 * BLOCK + 7
    for temperature in (0.0, 1.0):
        out = model.generate(prompt, n, temperature=temperature, top_k=0, generator=torch.Generator().manual_seed(0))
        assert out.shape == (2, n)
        assert out.dtype == torch.long
        assert int(out.min()) >= 0 and int(out.max()) < VOCAB
    # the tokens produced before the context fills up are unaffected by how far generation goes
    short = model.generate(prompt, BLOCK - 5, temperature=0.0)
    assert torch.equal(model.generate(prompt, n, temperature=0.0)[:, : BLOCK - 5], short)


def test_prompt_longer_than_block_size_is_accepted():
    model = context_sensitive_gpt()
    prompt = random_tokens((1, 2 * BLOCK))
    out = model.generate(prompt, 4, temperature=0.0)
    assert out.shape == (1, 4)
    assert torch.equal(out[:, :1], greedy_reference(model, prompt, 1))  # predicted from the last block_size tokens


def test_zero_new_tokens_returns_an_empty_continuation():
    model = tiny_gpt()
    assert model.generate(random_tokens((2, 4)), 0).shape == (2, 0)


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    model = tiny_gpt()
    prompt = random_tokens((3, 4))

    def draw(seed, **kw):
        return model.generate(prompt, 24, temperature=1.0, top_k=0, generator=torch.Generator().manual_seed(seed),
                              **kw)

    a, b, c = draw(123), draw(123), draw(124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.manual_seed(999)  # the global RNG plays no part
    assert torch.equal(draw(123), a)
    # unconditional samples go through the same path
    s1 = model.sample(2, generator=torch.Generator().manual_seed(5), max_new_tokens=10)
    s2 = model.sample(2, generator=torch.Generator().manual_seed(5), max_new_tokens=10)
    assert s1.shape == (2, 10) and torch.equal(s1, s2)


def test_top_k_one_is_greedy_and_top_k_limits_the_choices():
    model = tiny_gpt()
    prompt = random_tokens((2, 3))
    greedy = model.generate(prompt, 10, temperature=0.0)
    sampled = model.generate(prompt, 10, temperature=1.5, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, greedy)

    logits = torch.tensor([[0.0, 5.0, 4.0, 3.0, -1.0]]).repeat(200, 1)
    picks = pick_next(logits, Sampling(1.0, 2), torch.Generator().manual_seed(0))
    assert picks.shape == (200, 1)
    assert set(picks.flatten().tolist()) == {1, 2}  # only the two best tokens, and both of them
    assert torch.equal(pick_next(logits, Sampling(0.0), None), torch.full((200, 1), 1))


def test_save_and_load_round_trip_without_pickle(tmp_path, monkeypatch):
    model = tiny_gpt(seed=3, eot_id=7)
    with torch.no_grad():  # move away from the init so a freshly built model would differ
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.save(tmp_path / "gen")
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    spec = json.loads((tmp_path / "gen" / CONFIG_FILE).read_text())
    assert spec["name"] == "gpt" and spec["config"]["eot_id"] == 7 and spec["config"]["vocab_size"] == VOCAB

    def no_pickle(*args, **kwargs):
        raise AssertionError("loading a generator must not unpickle anything")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = load_generator(tmp_path / "gen").eval()

    assert isinstance(loaded, GPT) and loaded.config == model.config
    x = random_tokens((2, BLOCK))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded.generate(x[:, :4], 8, temperature=0.0), model.generate(x[:, :4], 8, temperature=0.0))


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("lora", [False, True])
def test_the_lean_forward_computes_exactly_what_the_hugging_face_forward_does(dropout, lora):
    """GPT.forward runs the network's modules without transformers' per-call machinery: same logits, bit for bit,
    in eval mode and in training mode (the same dropout draws), with and without LoRA adapters."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, block_size=24, dropout=dropout, activation="gelu"))
    if lora:
        model = model.with_lora(4, 8.0, 0.0, ["c_attn", "c_fc"])
        with torch.no_grad():  # adapters start as a no-op (B = 0): make them count
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_()
    x = torch.randint(97, (3, 24))
    model.eval()
    assert torch.equal(model(x), model.net(input_ids=x, use_cache=False).logits)
    model.train()
    torch.manual_seed(1)
    lean = model(x)
    torch.manual_seed(1)
    assert torch.equal(lean, model.net(input_ids=x, use_cache=False).logits)


def test_fresh_models_use_the_exact_gelu_and_models_saved_before_the_choice_keep_the_tanh_one(tmp_path):
    fresh = GPT(GPTConfig(vocab_size=50))
    assert type(fresh.net.transformer.h[0].mlp.act).__name__ == "GELUActivation"
    fresh.save(tmp_path)
    spec = json.loads((tmp_path / CONFIG_FILE).read_text())
    del spec["config"]["activation"]  # a generator.json written before the field existed
    (tmp_path / CONFIG_FILE).write_text(json.dumps(spec))
    old = load_generator(tmp_path)
    assert old.config.activation == "gelu_tanh"
    assert type(old.net.transformer.h[0].mlp.act).__name__ == "GELUTanh"
