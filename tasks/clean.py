"""clean: normalise text, handle personal data, drop exact duplicates and documents outside the length bounds, and
count why.

Personal data (dataprep/pii.py: e-mail addresses, phone numbers, IPv4/IPv6 addresses, Luhn-valid payment-card numbers,
URLs carrying credentials) follows `clean.pii`: `redact` replaces each with a typed placeholder (`<EMAIL>`, ...),
`drop` drops every document holding any, `keep` leaves the text as is. Each kind is counted (`pii_<kind>`) whatever
the policy, so the data card says what the corpus held.

Images: decode every image fully, drop the undecodable (corrupt, truncated, not an image), those smaller than
`clean.min_image_size`, and duplicates (same pixels after conversion); convert the rest to one colour mode
(`clean.image_mode`) and re-encode them as PNG in a pack (dataprep/images.py)."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter

import numpy as np

from config.catalog import CLEAN_FILE, CORPUS_FILE
from config.params import Params
from dataprep.text_clean import clean_documents
from models.registry import IMAGE
from runtime.errors import DataError
from runtime.io import atomic_path, read_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)


def clean_images(params: Params) -> dict:
    """Decode, check, convert and dedupe the ingested images into a pack in `clean.out_dir`; count what went."""
    from dataprep.images import decode, encode_png, has_colour, read_pack, to_mode, write_pack

    cfg = params.clean
    rows, classes, blobs = read_pack(params.ingest.out_dir)
    counts: Counter[str] = Counter(images_in=len(rows))
    decoded = []
    for row, data in zip(rows, blobs):
        try:
            img = decode(data)
        except DataError as exc:
            counts["dropped_undecodable"] += 1
            log.warning("clean: dropping %s: %s", row["source"], exc)
            continue
        if min(img.size) < cfg.min_image_size:
            counts["dropped_too_small"] += 1
            continue
        decoded.append((row, img))
    mode = cfg.image_mode
    if mode == "auto":
        mode = "RGB" if any(has_colour(img) for _, img in decoded) else "L"
    seen: set[str] = set()
    kept_images, kept_labels, kept_sources = [], [], []
    sizes: Counter[tuple[int, int]] = Counter()
    for row, img in decoded:
        counts["converted_mode"] += img.mode != mode
        pixels = np.asarray(to_mode(img, mode), dtype=np.uint8)
        digest = hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()
        if digest in seen:
            counts["dropped_duplicate"] += 1
            continue
        seen.add(digest)
        sizes[img.size] += 1
        kept_images.append(encode_png(pixels))
        kept_labels.append(row["label"])
        kept_sources.append(row["source"])
    for reason in ("dropped_undecodable", "dropped_too_small", "dropped_duplicate", "converted_mode"):
        counts.setdefault(reason, 0)
    counts["images_out"] = len(kept_images)
    counts["distinct_sizes"] = len(sizes)
    if not kept_images:
        raise DataError(f"no images left after cleaning: {counts['images_in']} in, {counts['dropped_undecodable']} "
                        f"undecodable, {counts['dropped_too_small']} smaller than clean.min_image_size="
                        f"{cfg.min_image_size}, {counts['dropped_duplicate']} duplicates")
    with atomic_path(cfg.out_dir) as out:
        write_pack(out, kept_images, kept_labels, kept_sources, classes)
        write_json(out / "mode.json", {"mode": mode})
    metrics = {**counts, "mode": mode}
    write_json(cfg.metrics_path, metrics)
    log.info("clean: kept %d of %d images as %s (%s)", counts["images_out"], counts["images_in"], mode,
             ", ".join(f"{k}={v}" for k, v in counts.items() if k.startswith(("dropped_", "converted")) and v))
    return metrics


def clean(params: Params) -> dict:
    """Clean the ingested corpus into `<clean.out_dir>/documents.jsonl`; write the counts as metrics."""
    if params.model.modality is IMAGE:
        return clean_images(params)
    cfg = params.clean
    rows = read_jsonl(params.ingest.out_dir / CORPUS_FILE)
    result = clean_documents([r["text"] for r in rows], cfg)
    c = result.counts
    if not result.texts:
        raise DataError(
            f"the corpus is empty after cleaning: {c['documents_in']} documents in, "
            f"{c['dropped_empty']} empty, {c['dropped_duplicate']} duplicates, "
            f"{c['dropped_too_short']} shorter than clean.min_chars={cfg.min_chars}, "
            f"{c['dropped_too_long']} longer than clean.max_chars={cfg.max_chars}, "
            f"{c['dropped_pii']} holding personal data (clean.pii={cfg.pii})"
        )
    with atomic_path(cfg.out_dir) as out:
        out.mkdir()
        write_jsonl(out / CLEAN_FILE, [{"text": t} for t in result.texts])
    write_json(cfg.metrics_path, c)
    log.info("clean: kept %d of %d documents (%s); personal data %s: %s", c["documents_out"], c["documents_in"],
             ", ".join(f"{k}={v}" for k, v in c.items() if k.startswith("dropped_") and v), cfg.pii,
             ", ".join(f"{k.removeprefix('pii_')}={v}" for k, v in c.items()
                       if k.startswith("pii_") and k != "pii_total" and v) or "none found")
    return c


if __name__ == "__main__":
    from cli.stage import main

    main(clean)
