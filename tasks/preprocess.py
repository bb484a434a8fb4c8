"""preprocess: split documents by content hash, train a byte-level BPE tokenizer on the train split only, and write
each split as a memory-mappable token stream.

Each split is one stream: every document is preceded by the end-of-text token, so the model learns document
boundaries and every document token is predicted from a known start. Bits per byte are computed over the UTF-8
bytes of the documents plus one byte per boundary between them (the tokens a model is scored on).

Text is streamed, so memory stays bounded as the corpus grows: clean's documents.jsonl is read a line at a time,
once to count the splits and their byte statistics, once to train the tokenizer (whose trainer keeps word counts,
which grow with the vocabulary of the corpus, not its size), and once to encode it in batches of about
`BATCH_BYTES`, each batch appended to its split's .npy file. The outputs are byte-identical to encoding every split
in one batch and saving it with `np.save`, whatever the batch size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Self

import numpy as np

from tasks.clean import CLEAN_FILE
from tasks.errors import DataError
from tasks.io import _missing_input, atomic_path, read_json, write_json
from tasks.params import Params, PreprocessParams

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EOT = "<|endoftext|>"  # document separator; id 0 in every tokenizer the pipeline trains
UNK = "\ufffd"  # char tokenizer: characters unseen in train map here (and decode as the replacement character)
TOKENIZER_FILE = "tokenizer.json"  # inside preprocess.out_dir
META_FILE = "meta.json"
# Documents are encoded (and their bytes counted) in batches of about this many bytes: enough documents to keep the
# tokenizer's threads busy, few enough that a batch's per-token encodings stay in the tens of MB.
BATCH_BYTES = 1 << 20


def split_of(text: str | bytes, val_fraction: float, test_fraction: float) -> str:
    """Assign a document (or an encoded image) to a split by its content hash: stable as the data grows or is
    reordered."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    u = int.from_bytes(hashlib.sha256(data).digest()[:8], "big") / 2**64
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


def scan(path: Path, cfg: PreprocessParams, batch_bytes: int = BATCH_BYTES) -> dict[str, ByteStats]:
    """Read the corpus once: assign every document to its split and count each split's bytes."""
    stats = {s: ByteStats(batch_bytes) for s in SPLITS}
    for text in iter_documents(path):
        data = text.encode("utf-8")
        stats[split_of(data, cfg.val_fraction, cfg.test_fraction)].add(data)
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


def write_streams(tok, path: Path, out: Path, cfg: PreprocessParams, batch_bytes: int = BATCH_BYTES) -> dict[str, int]:
    """Encode the corpus in batches (the tokenizer's threads encode a batch in parallel) and append each
    document, preceded by EOT, to its split's `<split>.npy`; return the tokens written per split."""
    encoder = encoder_for(tok)
    dtype = token_dtype(tok)
    eot = np.array([tok.token_to_id(EOT)], dtype=dtype)
    with contextlib.ExitStack() as stack:
        writers = {s: stack.enter_context(TokenStreamWriter(out / f"{s}.npy", dtype)) for s in SPLITS}
        for batch in batches(iter_documents(path), batch_bytes):
            pieces: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
            for text, enc in zip(batch, encoder.encode_batch_fast(batch, add_special_tokens=False)):
                pieces[split_of(text, cfg.val_fraction, cfg.test_fraction)] += (eot, np.array(enc.ids, dtype=dtype))
            for split, arrays in pieces.items():
                if arrays:
                    writers[split].write(np.concatenate(arrays))
    return {s: w.n_tokens for s, w in writers.items()}


def load_tokens(out_dir: Path, split: str) -> np.ndarray:
    """Memory-map one split's token stream."""
    return np.load(out_dir / f"{split}.npy", mmap_mode="r")


def load_images(out_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map one split's images, uint8 (N, C, S, S), and load its int64 labels (all 0 when unlabelled)."""
    return np.load(out_dir / f"{split}.npy", mmap_mode="r"), np.load(out_dir / f"{split}_labels.npy")


def preprocess_images(params: Params) -> dict:
    """Split the clean images by content hash; centre-crop and resize them to `image_size`; write one uint8
    array (N, C, S, S) and one label array per split, and meta.json."""
    from tasks.images import decode, read_pack, square_resize

    cfg = params.preprocess
    rows, classes, blobs = read_pack(params.clean.out_dir)
    mode = read_json(params.clean.out_dir / "mode.json")["mode"]
    channels = 1 if mode == "L" else 3
    parts: dict[str, tuple[list[np.ndarray], list[int]]] = {s: ([], []) for s in SPLITS}
    for row, data in zip(rows, blobs):
        images, labels = parts[split_of(data, cfg.val_fraction, cfg.test_fraction)]
        images.append(square_resize(decode(data), cfg.image_size))
        labels.append(row["label"] if row["label"] is not None else 0)
    empty = [s for s in SPLITS if not parts[s][0]]
    if empty:
        raise DataError(f"split {'/'.join(empty)} is empty: {len(rows)} images are too few for "
                        f"preprocess.val_fraction={cfg.val_fraction} and preprocess.test_fraction="
                        f"{cfg.test_fraction}; add data or raise the fractions")
    meta: dict = {"modality": "image", "image_size": cfg.image_size, "channels": channels, "mode": mode,
                  "n_classes": len(classes), "classes": classes}
    with atomic_path(cfg.out_dir) as out:
        out.mkdir()
        for split, (images, labels) in parts.items():
            arr = np.stack(images).reshape(len(images), channels, cfg.image_size, cfg.image_size)
            np.save(out / f"{split}.npy", arr)
            np.save(out / f"{split}_labels.npy", np.asarray(labels, dtype=np.int64))
            meta[split] = {"n_images": len(images),
                           "class_counts": np.bincount(labels, minlength=len(classes)).tolist() if classes else []}
        write_json(out / META_FILE, meta)
    metrics = {"image_size": cfg.image_size, "channels": channels, "n_classes": len(classes),
               **{f"{s}_n_images": meta[s]["n_images"] for s in SPLITS}}
    write_json(cfg.metrics_path, metrics)
    log.info("preprocess: %d/%d/%d train/val/test images at %dx%d, %d channel(s), %d classes",
             *(meta[s]["n_images"] for s in SPLITS), cfg.image_size, cfg.image_size, channels, len(classes))
    return metrics


def preprocess(params: Params, batch_bytes: int = BATCH_BYTES) -> dict:
    """Split, train the tokenizer on train, and write token streams, tokenizer.json and meta.json.

    Text is streamed from clean's output in batches of about `batch_bytes`; the outputs do not depend on it."""
    if params.model.modality == "image":
        return preprocess_images(params)
    cfg = params.preprocess
    corpus = params.clean.out_dir / CLEAN_FILE
    t0 = time.perf_counter()
    stats = scan(corpus, cfg, batch_bytes)
    n_documents = {s: stats[s].n_documents for s in SPLITS}
    check_splits(n_documents, cfg)
    log.info("preprocess: read and split %s documents (%.1f MB) in %.1f s", n_documents,
             sum(s.n_text_bytes for s in stats.values()) / 1e6, time.perf_counter() - t0)
    t0 = time.perf_counter()
    if params.model.init_from is not None:  # a checkpoint's tokenizer comes with it: its token ids are what it learned
        from tokenizers import Tokenizer

        from tasks.pretrained import resolve_init_from  # imports torch (200 MB resident): only when needed

        pretrained = resolve_init_from(params)
        tok = Tokenizer.from_file(str(pretrained.tokenizer_path))
        if tok.token_to_id(EOT) is None:
            raise DataError(f"model.init_from: the tokenizer of {pretrained.spec!r} has no {EOT} token")
        log.info("preprocess: using the tokenizer of %s", pretrained.spec)
    elif cfg.tokenizer == "char":
        tok = train_char_tokenizer(iter_split(corpus, "train", cfg))
    else:
        tok = train_tokenizer(iter_split(corpus, "train", cfg), cfg.vocab_size)
    log.info("preprocess: tokenizer %s, vocab %d, in %.1f s", params.model.init_from or cfg.tokenizer,
             tok.get_vocab_size(), time.perf_counter() - t0)
    meta: dict = {"modality": "text", "tokenizer": params.model.init_from or cfg.tokenizer,
                  "vocab_size": tok.get_vocab_size(), "eot_id": tok.token_to_id(EOT)}
    with atomic_path(cfg.out_dir) as out:
        out.mkdir()
        tok.save(str(out / TOKENIZER_FILE))
        t0 = time.perf_counter()
        n_tokens = write_streams(tok, corpus, out, cfg, batch_bytes)
        log.info("preprocess: encoded %d tokens in %.1f s", sum(n_tokens.values()), time.perf_counter() - t0)
        for split in SPLITS:
            meta[split] = {
                "n_documents": stats[split].n_documents,
                "n_tokens": n_tokens[split],
                "n_bytes": stats[split].n_bytes,
                "byte_entropy_bits": round(stats[split].entropy(), 6),
            }
        meta["dtype"] = str(token_dtype(tok))
        write_json(out / META_FILE, meta)
    metrics = {
        "vocab_size": meta["vocab_size"],
        **{f"{s}_{k}": meta[s][k] for s in SPLITS for k in ("n_documents", "n_tokens", "n_bytes")},
        "bytes_per_token": round(meta["train"]["n_bytes"] / max(meta["train"]["n_tokens"], 1), 4),
    }
    write_json(cfg.metrics_path, metrics)
    log.info("preprocess: vocab %d, train %d tokens (%.2f bytes/token)", metrics["vocab_size"],
             metrics["train_n_tokens"], metrics["bytes_per_token"])
    return metrics


if __name__ == "__main__":
    from tasks.cli import main

    main(preprocess)
