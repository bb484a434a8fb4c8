"""Generation settings and batching: nucleus sampling, the repetition penalty, and rows of different lengths
generated together (left-padded, masked) giving each row exactly what it gets alone with the same seed."""

from __future__ import annotations

import pytest
import torch

from models.base import Sampling, pick_next
from models.gpt import GPT, GPTConfig
from models.rnn import LSTM, RNNConfig


def tiny_gpt(block: int = 32) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=block, n_layer=2, n_head=2, n_embd=32, dropout=0.0)).eval()


def test_top_p_keeps_only_the_nucleus_and_always_the_likeliest():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    picks = {pick_next(logits, Sampling(1.0, 0, 0.7), gen).item() for _ in range(300)}
    assert picks == {0, 1}  # 0.5 + 0.3 reach 0.7; 0.15 and 0.05 are outside
    tiny = {pick_next(logits, Sampling(1.0, 0, 1e-6), gen).item() for _ in range(50)}
    assert tiny == {0}


def test_the_repetition_penalty_turns_greedy_away_from_seen_tokens():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    seen = torch.tensor([[0]])
    assert pick_next(logits, Sampling(0.0), None, seen).item() == 0
    assert pick_next(logits, Sampling(0.0, repetition_penalty=1.2), None, seen).item() == 1  # 2.0 / 1.2 < 1.9
    negative = torch.tensor([[-0.5, -0.55]])
    assert pick_next(negative, Sampling(0.0, repetition_penalty=1.2), None, torch.tensor([[0]])).item() == 1


PROMPTS = [[0, 5, 6, 7, 8, 9, 10], [0, 11], [0, 12, 13, 14], [0, 5, 6, 7, 8, 9, 10, 20, 21, 22, 23, 24]]


@pytest.mark.parametrize("sampling", [Sampling(0.0), Sampling(0.9, 20), Sampling(1.0, 0, 0.8, 1.3)])
def test_rows_generated_together_equal_each_row_alone(sampling):
    model = tiny_gpt()
    seeds = [3, 4, 5, 6]
    together = model.generate_rows(PROMPTS, 12, sampling, [torch.Generator().manual_seed(s) for s in seeds])
    for prompt, seed, got in zip(PROMPTS, seeds, together):
        alone = model.generate(torch.tensor([prompt]), 12, temperature=sampling.temperature, top_k=sampling.top_k,
                               top_p=sampling.top_p, repetition_penalty=sampling.repetition_penalty,
                               generator=torch.Generator().manual_seed(seed))[0].tolist()
        assert got == alone
    assert len({tuple(t) for t in together}) > 1


def test_rows_longer_than_the_context_run_alone_with_the_cache_restart():
    model = tiny_gpt(block=16)
    long, short = list(range(1, 15)), [0, 3]  # 14 + 8 > 16: `generate` restarts its cache for this row
    together = model.generate_rows([long, short], 8, Sampling(0.0), [None, None])
    assert together[0] == model.generate(torch.tensor([long]), 8, temperature=0.0)[0].tolist()
    assert together[1] == model.generate(torch.tensor([short]), 8, temperature=0.0)[0].tolist()


def test_recurrent_generators_generate_rows_one_at_a_time_with_the_same_result():
    torch.manual_seed(0)
    model = LSTM(RNNConfig(vocab_size=30, block_size=16, n_layer=1, n_embd=8, n_hidden=16, dropout=0.0)).eval()
    together = model.generate_rows([[0, 1, 2], [0, 4]], 6, Sampling(0.8, 10), [torch.Generator().manual_seed(1),
                                                                                torch.Generator().manual_seed(2)])
    assert together[1] == model.generate(torch.tensor([[0, 4]]), 6, temperature=0.8, top_k=10,
                                         generator=torch.Generator().manual_seed(2))[0].tolist()
