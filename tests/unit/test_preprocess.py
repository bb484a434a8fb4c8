"""preprocess's pure logic: hash splits, the byte-level BPE tokenizer, stream layout and byte statistics, and the
streaming pieces (document reader, batches, incremental byte counts, .npy writer) that must match the in-memory
forms exactly."""

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
    batches,
    byte_entropy,
    encode_stream,
    iter_documents,
    split_documents,
    split_of,
    stream_bytes,
    train_tokenizer,
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
