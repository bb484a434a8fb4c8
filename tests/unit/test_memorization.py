"""Copy and diversity scores of generated text: the span index on planted copies at the threshold and the edges, a
brute-force reference on random strings (with hashes forced to collide), and distinct-n / repetition by hand."""

from __future__ import annotations

import random

import numpy as np
import pytest

import evaluation.memorization as memo
from evaluation.memorization import Match, SpanIndex, distinct_n, diversity, memorization, repetition_rate

L = 20  # min_chars of the planted-span tests


def letters(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))


def digits(rng: random.Random, n: int) -> str:
    """Filler that shares no character with `letters` training text, so planted spans cannot grow into it."""
    return "".join(rng.choice("0123456789") for _ in range(n))


@pytest.fixture(scope="module")
def docs() -> list[str]:
    rng = random.Random(0)
    return [letters(rng, 300) for _ in range(5)]


@pytest.fixture(scope="module")
def index(docs: list[str]) -> SpanIndex:
    return SpanIndex.build(docs, L)


# ---------------------------------------------------------------------------------------------- planted spans


@pytest.mark.parametrize("length", [L, L + 1, L + 57, 300])
def test_planted_span_of_at_least_min_chars_is_found_with_its_exact_length_and_place(docs, index, length):
    rng = random.Random(length)
    before, after = digits(rng, 37), digits(rng, 23)
    start = 300 - length if length < 300 else 0
    sample = before + docs[3][start : start + length] + after
    assert index.longest_match(sample) == Match(length, len(before), 3, start)


def test_planted_span_one_short_of_min_chars_is_not_found(docs, index):
    rng = random.Random(1)
    for at in (0, 17, 300 - (L - 1)):  # start, middle, end of the document
        sample = digits(rng, 30) + docs[2][at : at + L - 1] + digits(rng, 30)
        assert index.longest_match(sample) == Match(0, -1, -1, -1)


@pytest.mark.parametrize("where", ["sample start", "sample end", "whole sample"])
@pytest.mark.parametrize("doc_at", [0, 133, 300 - L])  # document start, middle, end
def test_span_at_the_edges_of_sample_and_document(docs, index, where, doc_at):
    span = docs[1][doc_at : doc_at + L]
    filler = digits(random.Random(doc_at), 40)
    sample = {"sample start": span + filler, "sample end": filler + span, "whole sample": span}[where]
    assert index.longest_match(sample) == Match(L, sample.index(span), 1, doc_at)


def test_span_across_a_document_boundary_is_not_a_match(docs, index):
    half = L // 2 + 3  # each half is shorter than L, together longer
    crossing = docs[0][-half:] + docs[1][:half]
    for sample in (crossing, crossing[:half] + "\x00" + crossing[half:], "\x00" + crossing + "\x00"):
        assert index.longest_match(sample).length == 0
    assert SpanIndex.build(["".join(docs[:2])], L).longest_match(crossing).length == 2 * half  # control


def test_longest_of_several_spans_and_its_length_is_exact(docs, index):
    rng = random.Random(2)
    sample = docs[4][10:40] + digits(rng, 9) + docs[0][100:187] + digits(rng, 5) + docs[2][5:60]
    assert index.longest_match(sample) == Match(87, 39, 0, 100)
    assert index.spans([sample]) == [[(0, 30), (39, 87), (131, 55)]]


def test_non_ascii_text_counts_characters_not_bytes():
    rng = random.Random(3)
    alphabet = "aé日本語🙂ßЖ"  # 1-, 2-, 3- and 4-byte UTF-8, BMP and beyond
    docs = ["".join(rng.choice(alphabet) for _ in range(200)) for _ in range(3)]
    index = SpanIndex.build(docs, 16)
    sample = "xyz" + docs[2][50:90] + "qq"
    assert index.longest_match(sample) == Match(40, 3, 2, 50)
    assert index.longest_match("xyz" + docs[2][50:65] + "qq").length == 0  # 15 characters (45+ bytes): too short


def test_empty_and_short_samples_and_empty_corpus(docs, index):
    assert index.longest_match("") == Match(0, -1, -1, -1)
    assert index.longest_match(docs[0][: index.k - 1]) == Match(0, -1, -1, -1)  # shorter than a hashed window
    assert index.longest_matches([]) == []
    assert memorization([], index)["memorization"] == 0.0 and memorization([], index)["samples"] == []
    result = memorization(["", docs[0][:L]], index)
    assert result["memorized_samples"] == 1 and result["memorization"] == 0.5
    assert SpanIndex.build([], L).longest_match(docs[0]) == Match(0, -1, -1, -1)
    assert SpanIndex.build(["", ""], L).longest_match(docs[0]) == Match(0, -1, -1, -1)
    with pytest.raises(ValueError):
        SpanIndex.build(docs, 0)


def test_build_takes_any_iterable_and_keeps_document_numbers(docs):
    index = SpanIndex.build((d for d in ["short", "", *docs]), L)
    assert index.longest_match(docs[3][50:90]) == Match(40, 0, 5, 50)


def test_long_min_chars_beyond_the_comparison_block():
    rng = random.Random(4)
    docs = [letters(rng, 3000)]
    index = SpanIndex.build(docs, 600)  # context of 150 characters, longer than the 128 of padding
    assert index.longest_match(digits(rng, 50) + docs[0][1000:1600] + digits(rng, 50)).length == 600
    assert index.longest_match(digits(rng, 50) + docs[0][1000:1599] + digits(rng, 50)).length == 0


# ---------------------------------------------------------------------------------------------- memorization


def test_memorization_share_longest_and_per_sample_detail(docs, index):
    rng = random.Random(5)
    samples = [
        digits(rng, 10) + docs[0][0:50] + digits(rng, 10),  # 50 copied characters
        docs[1][20:45] + digits(rng, 3) + docs[1][200:230],  # two copies: 25 + 30
        digits(rng, 60),  # nothing
        digits(rng, 5) + docs[2][7 : 7 + L - 1],  # one short of the threshold
    ]
    result = memorization(samples, index)
    assert result["memorization"] == 0.5 and result["memorized_samples"] == 2 and result["n_samples"] == 4
    assert result["memorization_longest_chars"] == 50 and result["min_chars"] == L
    assert [s["longest_chars"] for s in result["samples"]] == [50, 30, 0, 0]
    assert [s["memorized_chars"] for s in result["samples"]] == [50, 55, 0, 0]
    assert result["samples"][1] == {"longest_chars": 30, "start": 28, "doc": 1, "doc_start": 200, "memorized_chars": 55}
    assert result["memorized_char_share"] == pytest.approx(105 / sum(len(s) for s in samples))


# ---------------------------------------------------------------------------------------------- brute force


def reference_longest(docs: list[str], sample: str, min_chars: int) -> Match:
    """The longest span of a document in `sample`, earliest in the sample, then in the documents; by brute force."""
    length, start = 0, -1
    for i in range(len(sample)):
        for j in range(i + length + 1, len(sample) + 1):
            if not any(sample[i:j] in d for d in docs):
                break
            length, start = j - i, i
    if length < min_chars:
        return Match(0, -1, -1, -1)
    span = sample[start : start + length]
    doc = next(n for n, d in enumerate(docs) if span in d)
    return Match(length, start, doc, docs[doc].find(span))


def reference_spans(docs: list[str], sample: str, min_chars: int) -> list[tuple[int, int]]:
    """Every (start, length) of a maximal common span of `sample` and a document, >= min_chars; by brute force."""
    found = set()
    for d in docs:
        for i in range(len(sample)):
            for p in range(len(d)):
                if i and p and sample[i - 1] == d[p - 1]:
                    continue  # not maximal on the left
                m = 0
                while i + m < len(sample) and p + m < len(d) and sample[i + m] == d[p + m]:
                    m += 1
                if m >= min_chars:
                    found.add((i, m))
    return sorted(found)


def random_case(rng: random.Random) -> tuple[list[str], list[str], int]:
    """Small documents and samples over a tiny alphabet (many repeats and near misses), some with copies planted."""
    alphabet = rng.choice(["ab", "abc", "abcdefgh", "aaaab"])
    docs = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(rng.randint(1, 4))]
    samples = []
    for _ in range(6):
        sample = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        if docs[0] and rng.random() < 0.5:
            at = rng.randrange(len(docs[0]))
            cut = rng.randrange(len(sample) + 1)
            sample = sample[:cut] + docs[0][at : at + rng.randint(1, 30)] + sample[cut:]
        samples.append(sample)
    return docs, samples, rng.choice([1, 2, 3, 4, 5, 7, 8, 12])


@pytest.mark.parametrize("seed", range(8))
def test_index_agrees_with_brute_force_on_random_strings(seed, monkeypatch):
    if seed % 2:  # many chunks: a span found in several is reported once
        monkeypatch.setattr(memo, "_PAIR_CHUNK", 32)
        monkeypatch.setattr(memo, "_EXTEND_ROWS", 8)
    rng = random.Random(seed)
    for _ in range(25):
        docs, samples, min_chars = random_case(rng)
        index = SpanIndex.build(docs, min_chars)
        assert index.longest_matches(samples) == [reference_longest(docs, s, min_chars) for s in samples]
        assert index.spans(samples) == [reference_spans(docs, s, min_chars) for s in samples]


@pytest.mark.parametrize("base", [0, 1])  # hash = last character / sum of characters: collisions everywhere
def test_hash_collisions_never_make_a_false_or_missed_match(base, monkeypatch):
    monkeypatch.setattr(memo, "_BASE", np.uint64(base))
    rng = random.Random(100 + base)
    for _ in range(40):
        docs, samples, min_chars = random_case(rng)
        index = SpanIndex.build(docs, min_chars)
        assert index.longest_matches(samples) == [reference_longest(docs, s, min_chars) for s in samples]


# ---------------------------------------------------------------------------------------------- diversity


def test_distinct_n_by_hand():
    samples = ["a b a b", "a  c\n"]  # words: a b a b | a c
    assert distinct_n(samples, 1) == 3 / 6
    assert distinct_n(samples, 2) == 3 / 4  # (a b) (b a) (a b) | (a c): n-grams never cross samples
    assert distinct_n(samples, 3) == 2 / 2
    assert distinct_n(samples, 5) == 0.0  # no 5-gram at all
    assert distinct_n([], 1) == 0.0
    with pytest.raises(ValueError):
        distinct_n(samples, 0)


def test_repetition_rate_by_hand():
    assert repetition_rate(["a b a b a b"], n=2) == pytest.approx(3 / 5)  # ab ba [ab ba ab]
    assert repetition_rate(["a b a b a b", "x y z", "w"], n=2) == pytest.approx((3 / 5 + 0) / 2)  # "w": no bigram
    assert repetition_rate(["one two three four five"]) == 0.0
    assert repetition_rate(["too short"]) == 0.0 and repetition_rate([]) == 0.0


def test_a_degenerate_loop_repeats_almost_everything():
    loop = " ".join(["the model said that"] * 60)  # 240 words, 237 4-grams, 4 distinct
    assert repetition_rate([loop]) == pytest.approx(233 / 237)
    scores = diversity([loop])
    assert scores["repetition_rate"] > 0.95 and scores["distinct_1"] == 4 / 240
    assert set(scores) == {"distinct_1", "distinct_2", "distinct_3", "repetition_rate"}
