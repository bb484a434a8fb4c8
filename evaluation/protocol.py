"""The evaluation protocol: what a metric was measured on, recorded by evaluate on every version.

Two numbers are comparable only when measured under the same protocol: the same test documents (text; bits per
byte does not depend on the tokenizer, so two tokenizers compare on it), the same held-out prompts and
references, the same real images, feature extractor, sample count, seeds and sampler steps (images), and the same
metric definitions (`METRICS_VERSION`). The register stage never compares stored numbers of two versions: it
re-scores the champion under the challenger's protocol (evaluation/champion.py) and compares those. Pure: digests
of what the caller passes, no IO.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

# Bumped whenever a metric's definition changes, so that numbers of two definitions never meet.
METRICS_VERSION = 1


def digest_texts(texts: Iterable[str]) -> str:
    """sha256 of a sequence of texts, order and boundaries included."""
    h = hashlib.sha256()
    for t in texts:
        data = t.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def digest_arrays(*arrays) -> str:
    """sha256 of numpy arrays' shapes, dtypes and bytes."""
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def text_protocol(*, test_sha256: str, n_documents: int, n_bytes: int, prompts_sha256: str, n_prompts: int,
                  continuation_tokens: int, tokenizer_sha256: str) -> dict[str, Any]:
    """The protocol of a text evaluation. `tokenizer_sha256` says whether per-token numbers (perplexity) compare:
    they do only between equal tokenizers; bits per byte and BLEU/ROUGE-L compare across tokenizers."""
    return {"metrics_version": METRICS_VERSION, "modality": "text", "test_sha256": test_sha256,
            "test_documents": n_documents, "test_bytes": n_bytes, "prompts_sha256": prompts_sha256,
            "n_prompts": n_prompts, "continuation_tokens": continuation_tokens, "decoding": "greedy",
            "tokenizer_sha256": tokenizer_sha256}


def image_protocol(*, real_sha256: str, extractor_sha256: str, n_images: int, seed: int, steps: int | None,
                   image_shape: list[int], conditional: bool, kid_subset_size: int, pr_k: int) -> dict[str, Any]:
    """The protocol of an image evaluation: which real images, which feature extractor, how the samples were
    drawn (count, seed, sampler steps, class labels) and the metric settings."""
    return {"metrics_version": METRICS_VERSION, "modality": "image", "real_sha256": real_sha256,
            "extractor_sha256": extractor_sha256, "n_images": n_images, "seed": seed, "sample_steps": steps,
            "image_shape": list(image_shape), "labels": "index mod n_classes" if conditional else "none",
            "kid_subset_size": kid_subset_size, "pr_k": pr_k}


def protocol_digest(protocol: dict[str, Any], ignore: Iterable[str] = ()) -> str:
    """A short digest of the protocol (its canonical JSON), without the keys in `ignore`."""
    kept = {k: v for k, v in protocol.items() if k not in set(ignore)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two protocols (either side missing counts as a difference)."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
