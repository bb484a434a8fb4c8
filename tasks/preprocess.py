"""preprocess: split documents by content hash, train a byte-level BPE tokenizer on (a bounded sample of) the train
split only, and write each split as a memory-mappable token stream.

Each split is one stream: every document is preceded by the end-of-text token, so the model learns document
boundaries and every document token is predicted from a known start. Bits per byte are computed over the UTF-8
bytes of the documents plus one byte per boundary between them (the tokens a model is scored on).

Text is streamed, so memory stays bounded as the corpus grows: clean's documents.jsonl is read a line at a time,
once to count the splits and their byte statistics while keeping the BPE tokenizer's training sample (at most
`tokenizer_train_mb` of train documents, chosen by content hash: the whole split when it is smaller, so small
corpora train on exactly what they did before the sample existed), and once to encode it in batches of about
`BATCH_BYTES`, the tokenizer's threads encoding one batch while the previous one is appended to its split's .npy
file. With `tokenizer_train_mb: null` (and for the char tokenizer) the tokenizer reads the whole train split in an
extra pass. The outputs are byte-identical to encoding every split in one batch and saving it with `np.save`,
whatever the batch size.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from config.catalog import CLEAN_FILE, META_FILE, TOKENIZER_FILE, labels_file, split_file
from config.params import Params
from dataprep.tokenize import (
    BATCH_BYTES,
    EOT,
    SPLITS,
    TrainSample,
    check_splits,
    iter_split,
    scan,
    split_of,
    token_dtype,
    train_char_tokenizer,
    train_tokenizer,
    write_streams,
)
from models.registry import IMAGE, TEXT
from runtime.errors import DataError
from runtime.io import atomic_path, read_json, write_json
from runtime.progress import Progress

log = logging.getLogger(__name__)


def preprocess_images(params: Params) -> dict:
    """Split the clean images by content hash; centre-crop and resize them to `image_size`; write one uint8
    array (N, C, S, S) and one label array per split, and meta.json."""
    from dataprep.images import decode, read_pack, square_resize

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
    meta: dict = {"modality": IMAGE.name, "image_size": cfg.image_size, "channels": channels, "mode": mode,
                  "n_classes": len(classes), "classes": classes}
    with atomic_path(cfg.out_dir) as out:
        out.mkdir()
        for split, (images, labels) in parts.items():
            arr = np.stack(images).reshape(len(images), channels, cfg.image_size, cfg.image_size)
            np.save(out / split_file(split), arr)
            np.save(out / labels_file(split), np.asarray(labels, dtype=np.int64))
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
    if params.model.modality is IMAGE:
        return preprocess_images(params)
    cfg = params.preprocess
    corpus = params.clean.out_dir / CLEAN_FILE
    bpe = params.model.init_from is None and cfg.tokenizer == "bpe"
    sample = TrainSample(int(cfg.tokenizer_train_mb * 1e6)) if bpe and cfg.tokenizer_train_mb is not None else None
    t0 = time.perf_counter()
    stats = scan(corpus, cfg, batch_bytes, sample)
    n_documents = {s: stats[s].n_documents for s in SPLITS}
    check_splits(n_documents, cfg)
    log.info("preprocess: read and split %s documents (%.1f MB) in %.1f s", n_documents,
             sum(s.n_text_bytes for s in stats.values()) / 1e6, time.perf_counter() - t0)
    t0 = time.perf_counter()
    if params.model.init_from is not None:  # a checkpoint's tokenizer comes with it: its token ids are what it learned
        from tokenizers import Tokenizer

        from training.pretrained import resolve_init_from  # imports torch (200 MB resident): only when needed

        pretrained = resolve_init_from(params)
        tok = Tokenizer.from_file(str(pretrained.tokenizer_path))
        if tok.token_to_id(EOT) is None:
            raise DataError(f"model.init_from: the tokenizer of {pretrained.spec!r} has no {EOT} token")
        log.info("preprocess: using the tokenizer of %s", pretrained.spec)
    elif cfg.tokenizer == "char":
        tok = train_char_tokenizer(iter_split(corpus, "train", cfg))
    else:
        if sample is None:
            documents = iter_split(corpus, "train", cfg)
        else:
            log.info("preprocess: BPE tokenizer sample: %d of %d train documents, %.1f of %.1f MB%s", len(sample),
                     sample.n_offered, sample.n_bytes / 1e6, sample.n_offered_bytes / 1e6,
                     " (all)" if sample.complete else f" (preprocess.tokenizer_train_mb={cfg.tokenizer_train_mb:g})")
            documents = iter(sample)
        report = Progress("preprocess", n_documents["train"] if sample is None else len(sample), log)
        tok = train_tokenizer(report.track(documents, "BPE tokenizer: documents read"), cfg.vocab_size)
        del sample  # its text is no longer needed while the corpus is encoded
    log.info("preprocess: tokenizer %s, vocab %d, in %.1f s", params.model.init_from or cfg.tokenizer,
             tok.get_vocab_size(), time.perf_counter() - t0)
    meta: dict = {"modality": TEXT.name, "tokenizer": params.model.init_from or cfg.tokenizer,
                  "vocab_size": tok.get_vocab_size(), "eot_id": tok.token_to_id(EOT)}
    with atomic_path(cfg.out_dir) as out:
        out.mkdir()
        tok.save(str(out / TOKENIZER_FILE))
        t0 = time.perf_counter()
        report = Progress("preprocess", sum(n_documents.values()), log)
        n_tokens = write_streams(tok, corpus, out, cfg, batch_bytes,
                                 track=lambda docs: report.track(docs, "documents encoded"))
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
    from cli.stage import main

    main(preprocess)
