"""Re-scoring a registered model under another version's evaluation protocol, through the code path consumers use.

The champion is loaded with `mlflow.pyfunc.load_model` from the registry (its own weights and, for text, its own
tokenizer) and scored by the very functions evaluate scores the challenger with: text on the same test documents
(bits per byte, tokenizer-independent) and the same held-out prompts and references (greedy continuations, BLEU
and ROUGE-L); images sampled with the same count, seeds, class labels and sampler steps, against the same real
images in the same feature space (the classifier stage's current network). What comes back are the per-unit
scores (per document, per prompt, per image) that the paired comparison (evaluation/paired.py) resamples.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from evaluation.paired import Comparison, ratio_comparison, statistic_comparison
from evaluation.scoring import continue_texts, document_scores, sample_images, text_scores

log = logging.getLogger(__name__)


class Incomparable(Exception):
    """The registered model cannot be scored under this protocol; the message says why, in a few words."""


def load_registered(uri: str) -> Any:
    """Return the python model behind a registered pyfunc (`.model`, and `.tokenizer` for text), loaded as a
    consumer loads it."""
    import mlflow

    try:
        return mlflow.pyfunc.load_model(uri).unwrap_python_model()
    except Exception as exc:  # noqa: BLE001 (any failure to load means: cannot be compared)
        raise Incomparable(f"{uri} does not load ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None


def text_evidence(model, tok, documents: list[str], prompts: list[str], continuation_tokens: int, batch_size: int,
                  device: torch.device) -> dict[str, Any]:
    """Per-document NLL (nats), tokens and bytes of the test documents, and greedy continuations of the prompts."""
    from evaluation.protocol import digest_texts

    scores = document_scores(model, tok, documents, batch_size, device)
    generated = continue_texts(model, tok, prompts, continuation_tokens, device) if prompts else []
    return {k: v.tolist() for k, v in scores.items()} | {"generated": generated,
                                                        "tokenizer_sha256": digest_texts([tok.to_str()])}


def image_evidence(model, classifier, real: torch.Tensor, *, n: int, seed: int, steps: int | None, n_classes: int,
                   conditional: bool) -> dict[str, np.ndarray]:
    """Sample `n` images as evaluate does and embed them: features and logits (float32, per image)."""
    from models.classifier import embed

    requested = torch.arange(n) % n_classes if conditional else None
    fake = sample_images(model, n, seed, requested, steps)
    if tuple(fake.shape[1:]) != tuple(real.shape[1:]):
        raise Incomparable(f"it generates images of shape {list(fake.shape[1:])}, the data has "
                           f"{list(real.shape[1:])}")
    feats, logits = embed(classifier, fake)
    return {"features": feats.numpy(), "logits": logits.numpy()}


def bleu_statistic(predictions: list[str], references: list[str], metric: str):
    """`stat(indices)`: corpus BLEU or mean ROUGE-L of the predictions at those prompt indices."""
    def stat(idx: np.ndarray) -> float:
        return text_scores([predictions[i] for i in idx], [references[i] for i in idx])[metric]
    return stat


TEXT_METRICS = ("test_bpb", "test_perplexity", "bleu", "rouge_l")
IMAGE_METRICS = ("fid", "kid", "inception_score", "precision", "recall")
KID_RESAMPLES = 200  # KID costs O(n^2) per resample: its interval uses at most this many


def text_comparison(metric: str, greater_is_better: bool, protocol: dict, challenger: dict, champion: dict,
                    references: list[str], confidence: float, n_resamples: int, seed: int) -> Comparison:
    """Compare challenger and champion evidence (`text_evidence`) on `metric`, paired over test documents (bits
    per byte, perplexity) or prompts (BLEU, ROUGE-L)."""
    if metric == "test_bpb":
        return ratio_comparison(metric, challenger["nll"], champion["nll"], challenger["bytes"], champion["bytes"],
                                1 / math.log(2), greater_is_better, confidence, n_resamples, seed)
    if metric == "test_perplexity":
        if champion.get("tokenizer_sha256") != protocol["tokenizer_sha256"]:
            raise Incomparable("perplexity is per token and the two tokenizers differ (compare on test_bpb)")
        a_nll, a_tok, b_nll, b_tok = (np.asarray(x, dtype=np.float64) for x in
                                      (challenger["nll"], challenger["tokens"], champion["nll"], champion["tokens"]))
        return statistic_comparison(metric, lambda i: math.exp(a_nll[i].sum() / a_tok[i].sum()),
                                    lambda i: math.exp(b_nll[i].sum() / b_tok[i].sum()), len(a_nll),
                                    greater_is_better, confidence, n_resamples, seed)
    if not references:
        raise Incomparable("no held-out prompts were scored (the test split is shorter than one prompt)")
    return statistic_comparison(metric, bleu_statistic(challenger["generated"], references, metric),
                                bleu_statistic(champion["generated"], references, metric), len(references),
                                greater_is_better, confidence, n_resamples, seed)


def image_comparison(metric: str, greater_is_better: bool, protocol: dict, challenger: dict, champion: dict,
                     real: np.ndarray, confidence: float, n_resamples: int, seed: int) -> Comparison:
    """Compare challenger and champion samples' features/logits on `metric`, resampling images (the real images
    and both models' samples with the same indices)."""
    from evaluation.image_metrics import (
        frechet_from_features,
        inception_from_logits,
        kernel_from_features,
        manifold_hits,
    )

    a, b = challenger["features"], champion["features"]
    n = min(len(real), len(a), len(b))
    if metric == "fid":
        stats = (lambda i: frechet_from_features(real[i], a[i]), lambda i: frechet_from_features(real[i], b[i]))
    elif metric == "kid":
        stats = (lambda i: kernel_from_features(real[i], a[i]), lambda i: kernel_from_features(real[i], b[i]))
        n_resamples = min(n_resamples, KID_RESAMPLES)
    elif metric == "inception_score":
        la, lb = challenger["logits"], champion["logits"]
        stats = (lambda i: inception_from_logits(la[i]), lambda i: inception_from_logits(lb[i]))
    else:  # precision: per sample, inside the real manifold; recall: per real image, inside the samples'
        k = protocol["pr_k"]
        (pa, ra), (pb, rb) = manifold_hits(real, a, k), manifold_hits(real, b, k)
        ua, ub = (pa, pb) if metric == "precision" else (ra, rb)
        stats = (lambda i: float(ua[i].mean()), lambda i: float(ub[i].mean()))
    return statistic_comparison(metric, *stats, n, greater_is_better, confidence, n_resamples, seed)
