"""ingest: gather raw documents from the configured sources into one JSONL file, recording where each came from.

Sources (params `ingest.sources`, read in order):
- `embedded:pydoc` — the English reference text bundled with CPython (`pydoc_data.topics`), offline, ~465 KB;
- a local file, directory or glob: .txt and .md files are one document each, .jsonl files one per line;
- an `http://` or `https://` URL of a .txt/.md/.jsonl document;
- `hf:<dataset id or saved directory>[:split]` — a Hugging Face dataset (hub ids need a network connection).

Image generators read `ingest.image_sources` instead (see dataprep/images.py): `embedded:digits` (scikit-learn's
handwritten digits, offline), a folder of images (one subfolder per class gives labels), an image file, a .npy/.npz
array file, or `hf:<dataset>`. The images are stored as read, in a pack, for clean to decode.
"""

from __future__ import annotations

import logging
import time

from cli.preflight import check_inputs
from config.catalog import CORPUS_FILE, MANIFEST_FILE
from config.params import Params
from dataprep.sources import Document, SourceRecord, _now, provenance, read_source
from models.registry import IMAGE, TEXT
from runtime.errors import DataError
from runtime.io import atomic_path, sha256_bytes, sha256_file, write_json, write_jsonl

log = logging.getLogger(__name__)


def ingest_images(params: Params) -> dict:
    """Read every image source into a pack in `ingest.out_dir` (bytes as read, labels, provenance)."""
    from dataprep.images import label_ids, read_image_source, write_pack

    cfg = params.ingest
    images, records = [], []
    retrieved_at = _now()
    for source in cfg.image_sources:
        found, raw = read_image_source(source, params.root, cfg.image_field, cfg.label_field)
        log.info("ingest: %s -> %d images", source, len(found))
        images += found
        records.append(SourceRecord(source, len(found), len(raw), sha256_bytes(raw)))
    if not images:
        raise DataError("the image sources yielded no images")
    labels, classes = label_ids(images)
    with atomic_path(cfg.out_dir) as out:
        digest = write_pack(out, [r.data for r in images], labels, [r.source for r in images], classes)
        write_json(out / MANIFEST_FILE, {"sources": [vars(r) for r in records], "n_images": len(images),
                                         "classes": classes, "corpus_sha256": digest})
    write_json(cfg.provenance_path, provenance(cfg.image_sources, [[r] for r in records], cfg.licenses, retrieved_at,
                                               "image"))
    metrics = {"n_images": len(images), "n_sources": len(records), "n_classes": len(classes),
               "n_bytes": sum(len(r.data) for r in images), "corpus_sha256": digest}
    write_json(cfg.metrics_path, metrics)
    log.info("ingest: %d images (%d classes), %d bytes from %d sources", len(images), len(classes),
             metrics["n_bytes"], len(records))
    return metrics


def ingest(params: Params) -> dict:
    """Read every source into `<out_dir>/corpus.jsonl` (images: a pack) and record source, size and digest of each."""
    check_inputs(params)  # a named pipe or dangling symlink among the inputs: one line naming it, not a hang
    if params.model.modality is IMAGE:
        return ingest_images(params)
    cfg = params.ingest
    start = time.perf_counter()
    docs: list[Document] = []
    records: list[SourceRecord] = []
    per_source: list[list[SourceRecord]] = []
    retrieved_at = _now()
    for source in cfg.sources:
        source_docs, source_records = read_source(source, cfg, params.root)
        log.info("ingest: %s -> %d documents", source, len(source_docs))
        docs += source_docs
        records += source_records
        per_source.append(source_records)
    empty = sum(r.n_bytes == 0 for r in records)
    if not docs:
        raise DataError("the sources yielded no documents" + (f" ({empty} empty file{'s' * (empty > 1)} skipped)"
                                                               if empty else ""))

    rows = [{"text": d.text, "source": d.source} for d in docs]
    with atomic_path(cfg.out_dir) as out:
        out.mkdir()
        write_jsonl(out / CORPUS_FILE, rows)
        corpus_sha256 = sha256_file(out / CORPUS_FILE)
        manifest = {"sources": [vars(r) for r in records], "n_documents": len(docs), "corpus_sha256": corpus_sha256}
        write_json(out / MANIFEST_FILE, manifest)
    # Outside out_dir: the retrieval time changes on every run, and must not make clean's input look new.
    write_json(cfg.provenance_path, provenance(cfg.sources, per_source, cfg.licenses, retrieved_at, TEXT.name))
    metrics = {
        "n_documents": len(docs),
        "n_sources": len(records),
        "n_bytes": sum(r.n_bytes for r in records),
        "skipped_empty_files": empty,
        "corpus_sha256": corpus_sha256,
    }  # no timings: the file must be identical for identical data, since later stages depend on it
    write_json(cfg.metrics_path, metrics)
    log.info("ingest: %d documents, %d bytes from %d sources in %.1fs", len(docs), metrics["n_bytes"], len(records),
             time.perf_counter() - start)
    return metrics


if __name__ == "__main__":
    from cli.stage import main

    main(ingest)
