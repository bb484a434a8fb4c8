"""Pure logic of evaluation: scoring windows, stream NLL, bits per byte, prompt placement and text scores."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from evaluation.scoring import bits_per_byte, document_scores, prompt_offsets, text_scores
from models.base import scoring_windows
from models.gpt import GPT, GPTConfig

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------------------------- scoring_windows


@pytest.mark.parametrize("n,block", [(2, 4), (3, 8), (5, 4), (6, 4), (9, 4), (10, 4), (17, 16), (100, 7),
                                     (129, 128), (1000, 64), (7, 1)])
def test_scoring_windows_predict_every_token_after_the_first_exactly_once(n, block):
    windows = scoring_windows(n, block)
    predicted = Counter(i for s, e in windows for i in range(s + 1, e))
    assert predicted == Counter(range(1, n))
    for s, e in windows:
        assert 0 <= s < e <= n
        assert 2 <= e - s <= block + 1  # a window fits the model's context (+1 target)
    assert all(b[0] == a[1] - 1 for a, b in zip(windows, windows[1:]))  # each window conditions on the last one
    assert all(e - s == block + 1 for s, e in windows[:-1])  # only the last may be short


@pytest.mark.parametrize("n", [0, 1])
def test_scoring_windows_of_streams_with_nothing_to_predict(n):
    assert scoring_windows(n, 8) == []


# ---------------------------------------------------------------------------------------------------- bits_per_byte


def test_bits_per_byte_arithmetic():
    assert bits_per_byte(100 * 8 * math.log(2), 100) == pytest.approx(8.0)
    assert bits_per_byte(math.log(2), 1) == pytest.approx(1.0)
    assert bits_per_byte(0.0, 10) == 0.0
    # twice the bytes for the same nats halves the bits per byte
    assert bits_per_byte(50.0, 20) == pytest.approx(bits_per_byte(50.0, 10) / 2)


# ---------------------------------------------------------------------------------------------------- stream_nll


def brute_force_nll(model, tokens, block):
    """Sum -log p(token i | the tokens of its window before it) one window and one position at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for s, e in scoring_windows(len(tokens), block):
            x = torch.tensor(tokens[s : e - 1], dtype=torch.long)[None]
            logp = torch.log_softmax(model(x)[0].double(), dim=-1)
            for j, target in enumerate(tokens[s + 1 : e]):
                total -= logp[j, int(target)].item()
                count += 1
    return total, count


@pytest.mark.parametrize("n_tokens,batch_size", [(5, 2), (9, 1), (37, 2), (41, 3), (64, 16)])
def test_stream_nll_equals_the_brute_force_sum(n_tokens, batch_size):
    torch.manual_seed(0)
    block = 8
    model = GPT(GPTConfig(vocab_size=40, block_size=block, n_layer=1, n_head=2, n_embd=16, dropout=0.0)).eval()
    tokens = np.random.default_rng(n_tokens).integers(0, 40, n_tokens).astype(np.uint16)

    total, count = model.score_stream(tokens, batch_size, CPU)

    expected_total, expected_count = brute_force_nll(model, tokens, block)
    assert count == expected_count == n_tokens - 1
    assert total == pytest.approx(expected_total, rel=1e-5)
    assert 0 < total / count < 2 * math.log(40)  # a near-uniform model: about log(vocab) nats per token


# ---------------------------------------------------------------------------------------------------- per document


def test_document_scores_split_the_stream_nll_by_document_and_sum_to_the_stream():
    from dataprep.tokenize import encode_stream, stream_bytes, train_char_tokenizer

    docs = ["The river runs.", "Ünïcode döc — with a dash.", "x", "Another line\nand more text " * 3]
    tok = train_char_tokenizer(docs)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=8, n_layer=1, n_head=2, n_embd=16,
                          dropout=0.0)).eval()
    per_doc = document_scores(model, tok, docs, 2, CPU)
    stream = encode_stream(tok, docs)
    total, count = model.score_stream(stream, 2, CPU)
    assert per_doc["nll"].sum() == pytest.approx(total, rel=1e-9) and per_doc["tokens"].sum() == count
    assert per_doc["bytes"].sum() == stream_bytes(docs)  # bits per byte from the documents = from the stream
    assert list(per_doc["bytes"]) == [len(d.encode()) + 1 for d in docs[:-1]] + [len(docs[-1].encode())]
    # a document owns its own tokens and the separator that ends it; the first separator is never predicted
    assert list(per_doc["tokens"]) == [len(d) + 1 for d in docs[:-1]] + [len(docs[-1])]
    alone = model.token_nll(stream, 2, CPU)
    assert per_doc["nll"][0] == pytest.approx(alone[: len(docs[0]) + 1].sum(), rel=1e-9)


# ---------------------------------------------------------------------------------------------------- prompt_offsets


@pytest.mark.parametrize("n_tokens", [17, 20, 31, 32, 33, 47, 48, 100, 1000, 1001])
@pytest.mark.parametrize("n_prompts", [1, 2, 3, 7, 32])
def test_prompt_offsets_are_non_overlapping_and_in_bounds(n_tokens, n_prompts):
    span = 16
    offsets = prompt_offsets(n_tokens, n_prompts, span)
    assert offsets == sorted(offsets)
    assert all(0 <= o and o + span <= n_tokens for o in offsets)
    assert all(b - a >= span for a, b in zip(offsets, offsets[1:]))
    assert len(offsets) == min(n_prompts, n_tokens // span)  # as many as fit, up to n_prompts
    if len(offsets) > 1:  # spread over the whole stream, not bunched at its start
        assert offsets[0] == 0 and offsets[-1] == n_tokens - span


def test_prompt_offsets_of_a_stream_shorter_than_one_span_are_empty():
    assert prompt_offsets(15, 4, 16) == []
    assert prompt_offsets(0, 4, 16) == []


def test_a_stream_of_exactly_one_span_holds_one_prompt():
    assert prompt_offsets(16, 4, 16) == [0]


# ---------------------------------------------------------------------------------------------------- text_scores


def test_identical_texts_score_one():
    texts = ["the river reads a simple paper under the bright light",
             "green music opens the window near the garden"]
    scores = text_scores(texts, texts)
    assert scores["bleu"] == pytest.approx(1.0)
    assert scores["rouge_l"] == pytest.approx(1.0)


def test_different_texts_score_lower_and_disjoint_texts_lowest():
    refs = ["the river reads a simple paper under the bright light",
            "green music opens the window near the garden"]
    close = ["the river reads a small paper under the bright light",
             "green music closes the window near the garden"]
    disjoint = ["purple stone sends cloud", "yellow signal holds number"]
    s_close, s_far = text_scores(close, refs), text_scores(disjoint, refs)
    for key in ("bleu", "rouge_l"):
        assert 0.0 < s_close[key] < 1.0
        assert s_far[key] < s_close[key]
    assert s_far["rouge_l"] == pytest.approx(0.0)
