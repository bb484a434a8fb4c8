"""Splits and tokenization: documents to splits by content hash, byte-level BPE and char tokenizers trained on the
train split (BPE: on a bounded sample of it, drawn by content hash), streaming encoding into memory-mappable token
arrays, and their loaders."""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

import numpy as np

from config.catalog import labels_file, split_file
from config.params import PreprocessParams
from runtime.errors import DataError
from runtime.io import _missing_input

log = logging.getLogger(__name__)


SPLITS = ("train", "val", "test")


EOT = "<|endoftext|>"  # document separator; id 0 in every tokenizer the pipeline trains


UNK = "\ufffd"  # char tokenizer: characters unseen in train map here (and decode as the replacement character)


# Documents are encoded (and their bytes counted) in batches of about this many bytes: enough documents to keep the
# tokenizer's threads busy, few enough that the per-token encodings of the two batches in flight (one encoded while
# the other is written; ~35 bytes of RSS per byte of text) stay in the tens of MB. On 2 cores 256 KB to 1 MB encode
# at the same speed.
BATCH_BYTES = 1 << 19


def split_of(text: str | bytes, val_fraction: float, test_fraction: float) -> str:
    """Assign a document (or an encoded image) to a split by its content hash: stable as the data grows or is
    reordered."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return _split_of_digest(hashlib.sha256(data).digest(), val_fraction, test_fraction)


def _split_of_digest(digest: bytes, val_fraction: float, test_fraction: float) -> str:
    u = int.from_bytes(digest[:8], "big") / 2**64  # the first 8 bytes: the split; the next 8: the tokenizer sample
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def iter_documents(path: Path) -> Iterator[str]:
    """Yield the text of each document in clean's documents.jsonl, reading one line at a time."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)["text"]
    except FileNotFoundError:
        raise _missing_input(path) from None


def iter_split(path: Path, split: str, cfg: PreprocessParams) -> Iterator[str]:
    """Yield the documents of one split, in corpus order."""
    for text in iter_documents(path):
        if split_of(text, cfg.val_fraction, cfg.test_fraction) == split:
            yield text


def check_splits(n_documents: dict[str, int], cfg: PreprocessParams) -> None:
    """Raise DataError naming the splits that no document went to."""
    empty = [s for s in SPLITS if not n_documents[s]]
    if empty:
        raise DataError(
            f"split {'/'.join(empty)} is empty: {sum(n_documents.values())} documents are too few for "
            f"preprocess.val_fraction={cfg.val_fraction} and preprocess.test_fraction={cfg.test_fraction}; "
            "add data or raise the fractions"
        )


def split_documents(texts: list[str], cfg: PreprocessParams) -> dict[str, list[str]]:
    """Partition documents into train/val/test; raise DataError if any split ends up empty."""
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for text in texts:
        splits[split_of(text, cfg.val_fraction, cfg.test_fraction)].append(text)
    check_splits({s: len(d) for s, d in splits.items()}, cfg)
    return splits


class ByteStats:
    """Documents, UTF-8 bytes and byte frequencies of one split, accumulated a document at a time.

    Bytes are counted in batches with numpy; the order in which byte values were first seen is kept so that the
    entropy sums its terms in the same order as a `Counter` over the same bytes (the same float, to the bit)."""

    def __init__(self, batch_bytes: int = BATCH_BYTES) -> None:
        self.batch_bytes = batch_bytes
        self.n_documents = 0
        self.n_text_bytes = 0
        self.counts = np.zeros(256, dtype=np.int64)
        self.first_seen: list[int] = []  # byte values, in order of first occurrence
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def add(self, data: bytes) -> None:
        """Count one document's UTF-8 bytes."""
        self.n_documents += 1
        self.n_text_bytes += len(data)
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= self.batch_bytes:
            self._flush()

    def _flush(self) -> None:
        data = b"".join(self._pending)
        self._pending, self._pending_bytes = [], 0
        counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
        new = np.flatnonzero((counts > 0) & (self.counts == 0)).tolist()
        self.first_seen += sorted(new, key=data.index)
        self.counts += counts

    @property
    def n_bytes(self) -> int:
        """The bytes the split's token stream encodes: document bytes plus one per document boundary."""
        return self.n_text_bytes + self.n_documents - 1

    def entropy(self) -> float:
        """The unigram entropy, in bits, of the bytes counted."""
        self._flush()
        counts = [int(self.counts[b]) for b in self.first_seen]
        total = sum(counts)
        return -sum(c / total * math.log2(c / total) for c in counts)


def byte_entropy(texts: Iterable[str]) -> float:
    """Return the unigram entropy, in bits, of the UTF-8 bytes of `texts` (a baseline for bits per byte)."""
    stats = ByteStats()
    for t in texts:
        stats.add(t.encode("utf-8"))
    return stats.entropy()


def stream_bytes(texts: Iterable[str]) -> int:
    """Return the bytes a split's token stream encodes: document bytes plus one per document boundary."""
    stats = ByteStats()
    for t in texts:
        stats.add(t.encode("utf-8"))
    return stats.n_bytes


def sample_key(data: bytes) -> int:
    """Return a train document's rank in the tokenizer sample (smaller first): 8 bytes of its content hash that
    the split does not use, so that the sample is a uniform random one among train documents."""
    return _sample_key_of_digest(hashlib.sha256(data).digest())


def _sample_key_of_digest(digest: bytes) -> int:
    return int.from_bytes(digest[8:16], "big")


class TrainSample:
    """The train documents the BPE tokenizer is trained on, kept in memory (as UTF-8) up to `max_bytes`: all of
    them when they fit, else those of smallest `sample_key` that fit together (at least the first one, however
    long).

    The sample depends on the documents only, not on their order or on the run: a document is in it when it and
    every document of smaller key fit in `max_bytes` together, so it is reproducible and, like the splits, stable
    when the corpus is reordered. It is handed to the trainer in corpus order, so a split that fits trains the
    tokenizer on exactly the documents, in the order, that training on the whole split reads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.n_bytes = 0  # UTF-8 bytes of the documents kept
        self.n_offered = 0  # train documents seen
        self.n_offered_bytes = 0
        self._heap: list[tuple[int, int, bytes]] = []  # (-key, position, UTF-8 text): the largest key on top
        self._cutoff: int | None = None  # the smallest key dropped: documents of this key or larger are out
        self._min_key: int | None = None  # never dropped: a sample is never empty

    def add(self, key: int, data: bytes) -> None:
        """Offer one train document (its `sample_key` and UTF-8 bytes), in corpus order."""
        position = self.n_offered
        self.n_offered += 1
        self.n_offered_bytes += len(data)
        if self._cutoff is not None and key >= self._cutoff:
            return
        heapq.heappush(self._heap, (-key, position, data))
        self.n_bytes += len(data)
        self._min_key = key if self._min_key is None else min(self._min_key, key)
        while self.n_bytes > self.max_bytes and -self._heap[0][0] > self._min_key:
            self._cutoff = -self._heap[0][0]
            while self._heap and -self._heap[0][0] == self._cutoff:  # copies of one document go out together
                self.n_bytes -= len(heapq.heappop(self._heap)[2])

    @property
    def complete(self) -> bool:
        """True when every train document offered is in the sample."""
        return self._cutoff is None

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[str]:
        """Yield the sampled documents in corpus order."""
        for _, _, data in sorted(self._heap, key=lambda item: item[1]):
            yield data.decode("utf-8")


def scan(path: Path, cfg: PreprocessParams, batch_bytes: int = BATCH_BYTES,
         sample: TrainSample | None = None) -> dict[str, ByteStats]:
    """Read the corpus once: assign every document to its split, count each split's bytes and, given `sample`,
    offer it every train document."""
    stats = {s: ByteStats(batch_bytes) for s in SPLITS}
    for text in iter_documents(path):
        data = text.encode("utf-8")
        digest = hashlib.sha256(data).digest()  # one hash per document for both the split and the sample key
        split = _split_of_digest(digest, cfg.val_fraction, cfg.test_fraction)
        stats[split].add(data)
        if sample is not None and split == "train":
            sample.add(_sample_key_of_digest(digest), data)
    return stats


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE tokenizer with the end-of-text token as id 0 (from any iterable: it is read once)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable: no unknown tokens
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def train_char_tokenizer(texts: Iterable[str]):
    """Build a character-level tokenizer over the characters of `texts`: EOT is id 0, unknown characters id 1.

    It is a `tokenizers` WordLevel model over single characters, so it saves as tokenizer.json and every later
    stage (evaluate, serving) uses it exactly like the BPE tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    seen: set[str] = set()
    for text in texts:
        seen.update(text)
    chars = sorted(seen - {UNK, EOT})
    vocab = {EOT: 0, UNK: 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    tok.decoder = decoders.Fuse()  # join characters back without separators
    tok.add_special_tokens([EOT])
    return tok


def token_dtype(tok) -> np.dtype:
    """uint16 for vocabularies that fit it, else uint32."""
    return np.dtype(np.uint16 if tok.get_vocab_size() <= 65535 else np.uint32)


def encode_stream(tok, texts: list[str]) -> np.ndarray:
    """Encode documents into one stream `EOT doc EOT doc ...` as uint16 (or uint32 for large vocabularies)."""
    eot = tok.token_to_id(EOT)
    dtype = token_dtype(tok)
    pieces = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        pieces.append(np.array([eot, *enc.ids], dtype=dtype))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


class TokenStreamWriter:
    """Append token arrays to a 1-D .npy file whose length is known only at the end.

    The header is written first for length 0 and rewritten in place on close: numpy pads it for the length to
    grow, so the file is byte-for-byte what `np.save` writes for the whole array."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path, self.dtype, self.n_tokens = path, np.dtype(dtype), 0
        self._fh = open(path, "wb")  # noqa: SIM115  (closed by close() or __exit__)
        self._header_size = self._write_header()

    def _write_header(self) -> int:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.n_tokens,)}
        start = self._fh.tell()
        np.lib.format.write_array_header_1_0(self._fh, header)
        return self._fh.tell() - start

    def write(self, tokens: np.ndarray) -> None:
        assert tokens.dtype == self.dtype and tokens.ndim == 1
        self._fh.write(tokens.data)
        self.n_tokens += tokens.size

    def close(self) -> None:
        """Write the final length into the header and close the file."""
        self._fh.seek(0)
        if self._write_header() != self._header_size:
            raise RuntimeError(f"{self.path}: the .npy header grew with the length {self.n_tokens}")
        self._fh.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:  # the output directory is discarded: no header to fix
            self._fh.close()


def batches(texts: Iterable[str], batch_bytes: int) -> Iterator[list[str]]:
    """Group texts into lists of about `batch_bytes` (counted in characters: bytes for ASCII), at least one each."""
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def encoder_for(tok):
    """Return `tok`, or a copy without padding and truncation: every document is encoded whole, alone."""
    if tok.padding is None and tok.truncation is None:
        return tok
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tok.to_str())
    tok.no_padding()
    tok.no_truncation()
    return tok


def encode_ahead(encoder, groups: Iterable[list[str]]) -> Iterator[tuple[list[str], list]]:
    """Yield each batch with its encodings while the next batch is being encoded.

    The tokenizer releases the GIL while its threads encode, so reading the next batch and turning this one's ids
    into arrays (Python work, one core) overlap the encoding instead of leaving a core idle between batches."""
    with ThreadPoolExecutor(1, thread_name_prefix="encode") as pool:
        pending = None
        for batch in groups:
            future = pool.submit(encoder.encode_batch_fast, batch, add_special_tokens=False)
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = batch, future
        if pending is not None:
            yield pending[0], pending[1].result()


def write_streams(tok, path: Path, out: Path, cfg: PreprocessParams, batch_bytes: int = BATCH_BYTES,
                  track: Callable[[Iterator[str]], Iterator[str]] | None = None) -> dict[str, int]:
    """Encode the corpus in batches (the tokenizer's threads encode a batch in parallel, one batch ahead) and
    append each document, preceded by EOT, to its split's `<split>.npy`; return the tokens written per split.

    `track` wraps the documents as they are read (progress reporting)."""
    encoder = encoder_for(tok)
    dtype = token_dtype(tok)
    eot = np.array([tok.token_to_id(EOT)], dtype=dtype)
    documents = iter_documents(path) if track is None else track(iter_documents(path))
    with contextlib.ExitStack() as stack:
        writers = {s: stack.enter_context(TokenStreamWriter(out / split_file(s), dtype)) for s in SPLITS}
        for batch, encodings in encode_ahead(encoder, batches(documents, batch_bytes)):
            pieces: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
            for text, enc in zip(batch, encodings):  # enc.ids is one list per document: no Python work per token
                pieces[split_of(text, cfg.val_fraction, cfg.test_fraction)] += (eot, np.array(enc.ids, dtype=dtype))
            for split, arrays in pieces.items():
                if arrays:
                    writers[split].write(np.concatenate(arrays))
    return {s: w.n_tokens for s, w in writers.items()}


def load_tokens(out_dir: Path, split: str) -> np.ndarray:
    """Memory-map one split's token stream."""
    return np.load(out_dir / split_file(split), mmap_mode="r")


def load_images(out_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map one split's images, uint8 (N, C, S, S), and load its int64 labels (all 0 when unlabelled)."""
    return np.load(out_dir / split_file(split), mmap_mode="r"), np.load(out_dir / labels_file(split))
