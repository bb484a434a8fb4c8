"""preprocess: split documents by content hash, train a byte-level BPE tokenizer on the train split only, and write
each split as a memory-mappable token stream.

Each split is one stream: every document is preceded by the end-of-text token, so the model learns document
boundaries and every document token is predicted from a known start. Bits per byte are computed over the UTF-8
bytes of the documents plus one byte per boundary between them (the tokens a model is scored on).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np

from tasks.clean import CLEAN_FILE
from tasks.errors import DataError
from tasks.io import atomic_path, read_json, read_jsonl, write_json
from tasks.params import Params, PreprocessParams

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EOT = "<|endoftext|>"  # document separator; id 0 in every tokenizer the pipeline trains
UNK = "\ufffd"  # char tokenizer: characters unseen in train map here (and decode as the replacement character)
TOKENIZER_FILE = "tokenizer.json"  # inside preprocess.out_dir
META_FILE = "meta.json"


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


def split_documents(texts: list[str], cfg: PreprocessParams) -> dict[str, list[str]]:
    """Partition documents into train/val/test; raise DataError if any split ends up empty."""
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for text in texts:
        splits[split_of(text, cfg.val_fraction, cfg.test_fraction)].append(text)
    empty = [s for s in SPLITS if not splits[s]]
    if empty:
        raise DataError(
            f"split {'/'.join(empty)} is empty: {len(texts)} documents are too few for "
            f"preprocess.val_fraction={cfg.val_fraction} and preprocess.test_fraction={cfg.test_fraction}; "
            "add data or raise the fractions"
        )
    return splits


def byte_entropy(texts: list[str]) -> float:
    """Return the unigram entropy, in bits, of the UTF-8 bytes of `texts` (a baseline for bits per byte)."""
    counts: Counter[int] = Counter()
    for t in texts:
        counts.update(t.encode("utf-8"))
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def stream_bytes(texts: list[str]) -> int:
    """Return the bytes a split's token stream encodes: document bytes plus one per document boundary."""
    return sum(len(t.encode("utf-8")) for t in texts) + len(texts) - 1


def train_tokenizer(texts: list[str], vocab_size: int):
    """Train a byte-level BPE tokenizer with the end-of-text token as id 0."""
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


def train_char_tokenizer(texts: list[str]):
    """Build a character-level tokenizer over the characters of `texts`: EOT is id 0, unknown characters id 1.

    It is a `tokenizers` WordLevel model over single characters, so it saves as tokenizer.json and every later
    stage (evaluate, serving) uses it exactly like the BPE tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = sorted(set().union(*map(set, texts)) - {UNK, EOT})
    vocab = {EOT: 0, UNK: 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    tok.decoder = decoders.Fuse()  # join characters back without separators
    tok.add_special_tokens([EOT])
    return tok


def encode_stream(tok, texts: list[str]) -> np.ndarray:
    """Encode documents into one stream `EOT doc EOT doc ...` as uint16 (or uint32 for large vocabularies)."""
    eot = tok.token_to_id(EOT)
    dtype = np.uint16 if tok.get_vocab_size() <= 65535 else np.uint32
    pieces = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        pieces.append(np.array([eot, *enc.ids], dtype=dtype))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


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


def preprocess(params: Params) -> dict:
    """Split, train the tokenizer on train, and write token streams, tokenizer.json and meta.json."""
    if params.model.modality == "image":
        return preprocess_images(params)
    cfg = params.preprocess
    texts = [r["text"] for r in read_jsonl(params.clean.out_dir / CLEAN_FILE)]
    splits = split_documents(texts, cfg)
    log.info("preprocess: split %s", {s: len(d) for s, d in splits.items()})
    from tasks.pretrained import resolve_init_from

    pretrained = resolve_init_from(params)
    if pretrained is not None:  # a checkpoint's tokenizer comes with it: its token ids are what it learned
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(pretrained.tokenizer_path))
        if tok.token_to_id(EOT) is None:
            raise DataError(f"model.init_from: the tokenizer of {pretrained.spec!r} has no {EOT} token")
        log.info("preprocess: using the tokenizer of %s", pretrained.spec)
    elif cfg.tokenizer == "char":
        tok = train_char_tokenizer(splits["train"])
    else:
        tok = train_tokenizer(splits["train"], cfg.vocab_size)
    meta: dict = {"modality": "text", "tokenizer": params.model.init_from or cfg.tokenizer, "vocab_size": tok.get_vocab_size(), "eot_id": tok.token_to_id(EOT)}
    with atomic_path(cfg.out_dir) as out:
        out.mkdir()
        tok.save(str(out / TOKENIZER_FILE))
        for split, docs in splits.items():
            ids = encode_stream(tok, docs)
            np.save(out / f"{split}.npy", ids)
            meta[split] = {
                "n_documents": len(docs),
                "n_tokens": int(ids.size),
                "n_bytes": stream_bytes(docs),
                "byte_entropy_bits": round(byte_entropy(docs), 6),
            }
        meta["dtype"] = str(ids.dtype)
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
