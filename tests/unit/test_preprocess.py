"""preprocess's pure logic: hash splits, the byte-level BPE tokenizer and its training sample, stream layout and byte
statistics, and the streaming pieces (document reader, batches, incremental byte counts, encoding one batch ahead,
.npy writer) that must match the in-memory forms exactly."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from config.params import PreprocessParams
from dataprep.tokenize import (
    EOT,
    SPLITS,
    ByteStats,
    TokenStreamWriter,
    TrainSample,
    batches,
    byte_entropy,
    encode_ahead,
    encode_stream,
    iter_documents,
    sample_key,
    scan,
    split_documents,
    split_of,
    stream_bytes,
    train_tokenizer,
    write_streams,
)
from runtime.errors import DataError

DOCS = [f"document number {i}: some words about item {i * 7 % 13}" for i in range(2000)]


@pytest.fixture(scope="module")
def tokenizer(make_documents):
    return train_tokenizer(make_documents(100), vocab_size=300)


# ---------------------------------------------------------------------------------------------------- splits


def test_split_of_is_deterministic():
    assert [split_of(d, 0.1, 0.1) for d in DOCS] == [split_of(d, 0.1, 0.1) for d in DOCS]
    assert all(split_of(d, 0.1, 0.1) in SPLITS for d in DOCS)


def test_split_of_follows_the_fractions_roughly():
    counts = {s: 0 for s in SPLITS}
    for d in DOCS:
        counts[split_of(d, 0.1, 0.2)] += 1
    assert 0.07 < counts["val"] / len(DOCS) < 0.13
    assert 0.17 < counts["test"] / len(DOCS) < 0.23


def test_split_of_depends_on_content_only():
    assert split_of("same text", 0.3, 0.3) == split_of("same" + " text", 0.3, 0.3)


def test_split_is_stable_when_documents_are_added_or_reordered():
    cfg = PreprocessParams(val_fraction=0.1, test_fraction=0.1)
    before = split_documents(DOCS[:500], cfg)
    after = split_documents(list(reversed(DOCS)) + [f"a new document {i}" for i in range(300)], cfg)

    for split in SPLITS:
        assert set(before[split]) <= set(after[split]), split


def test_split_documents_partitions_every_document_once_in_order():
    cfg = PreprocessParams(val_fraction=0.1, test_fraction=0.1)
    splits = split_documents(DOCS, cfg)
    assert sorted(d for s in SPLITS for d in splits[s]) == sorted(DOCS)
    for split in SPLITS:
        assert splits[split] == [d for d in DOCS if split_of(d, 0.1, 0.1) == split]


def test_split_documents_raises_on_an_empty_split():
    cfg = PreprocessParams(val_fraction=0.01, test_fraction=0.01)
    docs = [d for d in DOCS if split_of(d, 0.01, 0.01) == "train"][:5]
    with pytest.raises(DataError) as info:
        split_documents(docs, cfg)
    message = str(info.value)
    assert "val/test is empty" in message
    assert "5 documents" in message
    assert "preprocess.val_fraction=0.01" in message and "preprocess.test_fraction=0.01" in message


def test_split_documents_names_only_the_empty_split():
    cfg = PreprocessParams(val_fraction=0.1, test_fraction=0.1)
    docs = [d for d in DOCS if split_of(d, 0.1, 0.1) != "val"][:300]
    with pytest.raises(DataError, match=r"split val is empty"):
        split_documents(docs, cfg)


# ---------------------------------------------------------------------------------------------------- tokenizer


def test_end_of_text_is_token_zero(tokenizer):
    assert tokenizer.token_to_id(EOT) == 0
    assert tokenizer.get_vocab_size() == 300


@pytest.mark.parametrize(
    "text",
    [
        "Document 3. The model reads data.",
        "caf\u00e9 na\u00efve \u00fcber \u00c5ngstr\u00f6m",
        "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u0440\u0443\u0441\u0441\u043a\u0438\u0439",
        "emoji \U0001f389\U0001f680 and flags \U0001f1eb\U0001f1f7 and zwj \U0001f468\u200d\U0001f469\u200d\U0001f467",
        "  leading and trailing spaces  \n\ttabs\tand\n\n\nnewlines\r\n",
        "",
    ],
)
def test_byte_level_bpe_round_trips_any_text(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(ids) == text


def test_unseen_characters_need_no_unknown_token(tokenizer):
    ids = tokenizer.encode("\U0001f9ea\u00df", add_special_tokens=False).ids
    assert len(ids) == len("\U0001f9ea\u00df".encode("utf-8"))  # one byte token each, nothing lost
    assert 0 not in ids


def test_tokenizer_compresses_its_training_text(tokenizer, make_documents):
    text = make_documents(1)[0]
    assert len(tokenizer.encode(text).ids) < len(text.encode("utf-8")) / 1.5


def test_encode_stream_puts_eot_before_every_document(tokenizer):
    docs = ["The river reads.", "caf\u00e9 \U0001f389", "x"]
    stream = encode_stream(tokenizer, docs)

    assert stream.dtype == np.uint16
    expected = []
    for d in docs:
        expected += [0, *tokenizer.encode(d, add_special_tokens=False).ids]
    assert stream.tolist() == expected
    starts = np.flatnonzero(stream == 0).tolist()
    assert len(starts) == len(docs) and starts[0] == 0
    pieces = np.split(stream, starts[1:])
    assert [tokenizer.decode(p[1:].tolist()) for p in pieces] == docs


def test_encode_stream_of_nothing_is_empty(tokenizer):
    stream = encode_stream(tokenizer, [])
    assert stream.size == 0 and stream.dtype == np.uint16


# ---------------------------------------------------------------------------------------------------- statistics


def test_stream_bytes_counts_utf8_bytes_plus_boundaries():
    assert stream_bytes(["abc"]) == 3
    assert stream_bytes(["ab", "\u00e9"]) == 2 + 2 + 1
    assert stream_bytes(["\U0001f389", "a", "b"]) == 4 + 1 + 1 + 2


@pytest.mark.parametrize(
    ("texts", "bits"),
    [
        (["aaaa"], 0.0),
        (["abab"], 1.0),
        (["ab", "ba"], 1.0),
        (["abcd"], 2.0),
        (["\u00e9"], 1.0),  # two distinct UTF-8 bytes
        (["aaab"], -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))),
    ],
)
def test_byte_entropy_of_known_inputs(texts, bits):
    assert byte_entropy(texts) == pytest.approx(bits, abs=1e-12)


def test_byte_entropy_of_uniform_bytes_is_log2_of_their_count():
    text = "".join(chr(i) for i in range(128))  # the 128 ASCII bytes, once each
    assert byte_entropy([text]) == pytest.approx(7.0)
    assert byte_entropy([text, text]) == pytest.approx(7.0)


def counter_entropy(texts: list[str]) -> float:
    """The reference: byte entropy as the in-memory stage computed it, with a Counter over every byte."""
    counts: Counter[int] = Counter()
    for t in texts:
        counts.update(t.encode("utf-8"))
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values())


MIXED = [*DOCS[:300], "caf\u00e9 \u65e5\u672c \U0001f389", "\u00a0\t tabs", *DOCS[300:600], "\u0440\u0443\u0441 \u00df"]


@pytest.mark.parametrize("batch_bytes", [1, 100, 4096, 1 << 30])
def test_byte_stats_in_any_batch_size_equal_a_counter_to_the_bit(batch_bytes):
    stats = ByteStats(batch_bytes)
    for text in MIXED:
        stats.add(text.encode("utf-8"))
    assert stats.entropy() == counter_entropy(MIXED)  # the same float: the terms are summed in the same order
    assert stats.n_documents == len(MIXED)
    assert stats.n_bytes == sum(len(t.encode("utf-8")) for t in MIXED) + len(MIXED) - 1


# ---------------------------------------------------------------------------------------------------- streaming


def test_iter_documents_reads_what_clean_writes_line_by_line(tmp_path):
    path = tmp_path / "documents.jsonl"
    texts = ["first\nline", "caf\u00e9 \u2028 separator", 'quotes " and \\ slashes']
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" + "\n" * i
                            for i, t in enumerate(texts)), encoding="utf-8")
    documents = iter_documents(path)
    assert next(documents) == texts[0]  # a generator: nothing is read ahead of what is asked for
    assert list(documents) == texts[1:]


def test_iter_documents_of_a_missing_file_asks_to_run_the_earlier_stages(tmp_path):
    with pytest.raises(DataError, match="does not exist: run the stages before this one first"):
        next(iter_documents(tmp_path / "documents.jsonl"))


@pytest.mark.parametrize("size", [1, 50, 400, 1 << 30])
def test_batches_keep_every_text_in_order_and_stop_at_the_size(size):
    groups = list(batches(iter(DOCS[:100]), size))
    assert [t for g in groups for t in g] == DOCS[:100]
    assert all(g for g in groups)
    for g in groups[:-1]:  # a batch closes on the text that reaches the size, not before
        assert sum(map(len, g)) >= size > sum(map(len, g[:-1]))


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
@pytest.mark.parametrize("chunks", [[], [0], [3, 0, 5], [1] * 50, [70_000]])
def test_token_stream_writer_writes_what_np_save_writes(tmp_path, dtype, chunks):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 60_000, n).astype(dtype) for n in chunks]
    whole = np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)
    np.save(tmp_path / "reference.npy", whole)

    with TokenStreamWriter(tmp_path / "streamed.npy", np.dtype(dtype)) as writer:
        for a in arrays:
            writer.write(a)

    assert writer.n_tokens == whole.size
    assert (tmp_path / "streamed.npy").read_bytes() == (tmp_path / "reference.npy").read_bytes()
    assert np.array_equal(np.load(tmp_path / "streamed.npy", mmap_mode="r"), whole)


def test_tokenizer_trained_from_a_generator_is_the_one_trained_from_a_list(make_documents):
    docs = make_documents(100)
    assert train_tokenizer(iter(docs), 300).to_str() == train_tokenizer(docs, 300).to_str()


# ---------------------------------------------------------------------------------------------------- tokenizer sample


def sampled(docs: list[str], max_bytes: int) -> list[str]:
    sample = TrainSample(max_bytes)
    for d in docs:
        data = d.encode("utf-8")
        sample.add(sample_key(data), data)
    return list(sample)


def key_order_prefix(docs: list[str], max_bytes: int) -> list[str]:
    """The reference: documents by increasing key (copies of one document together) while they fit, at least the
    first, then put back in corpus order."""
    by_key: dict[int, list[int]] = {}
    for i, d in enumerate(docs):
        by_key.setdefault(sample_key(d.encode("utf-8")), []).append(i)
    kept: list[int] = []
    total = 0
    for key in sorted(by_key):
        total += sum(len(docs[i].encode("utf-8")) for i in by_key[key])
        if total > max_bytes and kept:
            break
        kept += by_key[key]
    return [docs[i] for i in sorted(kept)]


def test_a_sample_larger_than_the_documents_keeps_them_all_in_order():
    sample = TrainSample(10**9)
    for d in DOCS:
        sample.add(sample_key(d.encode()), d.encode())
    assert list(sample) == DOCS and sample.complete
    assert sample.n_bytes == sample.n_offered_bytes == sum(map(len, DOCS)) and len(sample) == sample.n_offered


@pytest.mark.parametrize("max_bytes", [1, 500, 5_000, 40_000])
def test_the_sample_is_the_smallest_keys_that_fit_in_corpus_order(max_bytes):
    got = sampled(DOCS, max_bytes)
    assert got == key_order_prefix(DOCS, max_bytes)
    assert got  # never empty: the first document by key stays, however long
    assert len(got) == 1 or sum(len(d) for d in got) <= max_bytes


def test_the_sample_is_reproducible_and_independent_of_document_order():
    import random

    shuffled = random.Random(0).sample(DOCS, len(DOCS))
    first = sampled(DOCS, 5_000)
    assert sampled(DOCS, 5_000) == first
    assert sorted(sampled(shuffled, 5_000)) == sorted(first)
    assert 0 < len(first) < len(DOCS)


@pytest.mark.parametrize("max_bytes", [1, 3_000, 3_050, 3_100])
def test_copies_of_a_document_enter_and_leave_the_sample_together(max_bytes):
    docs = [d for d in DOCS[:200] for _ in range(2)]
    got = sampled(docs, max_bytes)
    assert got and all(got.count(d) == 2 for d in got)
    assert got == key_order_prefix(docs, max_bytes)


def test_the_sample_key_is_independent_of_the_split():
    """Train documents are those of large split hash; the sample must still spread over the whole key range."""
    keys = [sample_key(d.encode()) for d in DOCS if split_of(d, 0.05, 0.05) == "train"]
    assert min(keys) < 2**64 * 0.05 and max(keys) > 2**64 * 0.95


def test_scan_offers_the_sample_every_train_document_and_only_those(tmp_path):
    path = tmp_path / "documents.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    cfg = PreprocessParams()
    sample = TrainSample(10**9)
    stats = scan(path, cfg, sample=sample)
    assert list(sample) == split_documents(DOCS, cfg)["train"]
    assert sample.n_offered_bytes == stats["train"].n_text_bytes


# ---------------------------------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("batch_bytes", [1, 700, 1 << 30])
def test_streams_hold_each_document_as_a_plain_encode_of_it_after_eot(tokenizer, tmp_path, make_documents,
                                                                     batch_bytes):
    docs = make_documents(120) + ["caf\u00e9 \U0001f389 " * 9, "\u65e5\u672c\u8a9e " * 20, "x"]
    path = tmp_path / "documents.jsonl"
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    cfg = PreprocessParams()
    out = tmp_path / f"out{batch_bytes}"
    out.mkdir()
    tracked = []

    def track(documents):
        for d in documents:
            tracked.append(d)
            yield d

    n_tokens = write_streams(tokenizer, path, out, cfg, batch_bytes, track=track)

    eot = tokenizer.token_to_id(EOT)
    for split, split_docs in split_documents(docs, cfg).items():
        expected = [t for d in split_docs for t in (eot, *tokenizer.encode(d, add_special_tokens=False).ids)]
        stream = np.load(out / f"{split}.npy")
        assert stream.tolist() == expected and n_tokens[split] == len(expected)
    assert tracked == docs


def test_encode_ahead_yields_every_batch_in_order_with_its_own_encodings(tokenizer):
    groups = [DOCS[i:i + 7] for i in range(0, 60, 7)]
    got = list(encode_ahead(tokenizer, iter(groups)))
    assert [g for g, _ in got] == groups
    for group, encodings in got:
        assert [e.ids for e in encodings] == [tokenizer.encode(d, add_special_tokens=False).ids for d in group]
    assert list(encode_ahead(tokenizer, iter([]))) == []
