"""Scores of a trained generator that are not image-feature metrics: bits per byte, prompt continuations and their
BLEU/ROUGE-L, memorization and diversity of text samples, and seeded image sampling for the grids."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from config.params import EvaluateParams, Params
from dataprep.tokenize import EOT, encoder_for, split_of, token_dtype
from models.base import TextGenerator
from runtime.io import read_jsonl

log = logging.getLogger(__name__)


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    return nll_nats / math.log(2) / n_bytes


def document_scores(model: TextGenerator, tok, documents: list[str], batch_size: int,
                    device: torch.device) -> dict[str, np.ndarray]:
    """Score documents as the stream `EOT doc EOT doc ...` (how preprocess writes a split) and attribute every
    token's NLL to its document: {"nll": nats, "tokens": scored tokens, "bytes": UTF-8 bytes + 1 (the boundary
    after it; none after the last)} per document.

    A document owns its tokens and the EOT that ends it (the +1 byte), so the sums give the split's bits per byte
    exactly as the stream does, under any tokenizer: the unit a paired comparison of two models resamples."""
    eot = tok.token_to_id(EOT)
    pieces = [np.array([eot, *e.ids], dtype=token_dtype(tok))
              for e in encoder_for(tok).encode_batch_fast(documents, add_special_tokens=False)]
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    nll = model.token_nll(stream, batch_size, device)
    owner = np.repeat(np.arange(len(documents)), lengths)
    starts = np.zeros(len(stream), dtype=bool)
    starts[np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)] = True
    doc = owner[1:] - starts[1:]  # the EOT that starts document k + 1 ends document k
    n = len(documents)
    size = np.array([len(d.encode("utf-8")) + 1 for d in documents], dtype=np.int64)
    if n:
        size[-1] -= 1  # the last document has no separator after it (as preprocess counts a split's bytes)
    return {"nll": np.bincount(doc, weights=nll, minlength=n), "tokens": np.bincount(doc, minlength=n),
            "bytes": size}


def continue_texts(model: TextGenerator, tok, prompts: list[str], n_tokens: int, device: torch.device) -> list[str]:
    """Greedy continuations of `n_tokens` tokens of each prompt text, encoded by the model's own tokenizer
    (prompts of equal token length share a batch)."""
    encoder = encoder_for(tok)
    ids = [e.ids or [tok.token_to_id(EOT)] for e in encoder.encode_batch_fast(prompts, add_special_tokens=False)]
    out: list[str] = [""] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, row in enumerate(ids):
        by_length.setdefault(len(row), []).append(i)
    for members in by_length.values():
        rows = torch.tensor([ids[i] for i in members], dtype=torch.long, device=device)
        generated = model.generate(rows, n_tokens, temperature=0.0)
        for i, text in zip(members, tok.decode_batch(generated.tolist())):
            out[i] = text
    return out


def prompt_offsets(n_tokens: int, n_prompts: int, span: int) -> list[int]:
    """Evenly spaced start offsets of `n_prompts` non-overlapping spans of `span` tokens in a stream."""
    usable = n_tokens - span
    if usable < 0:
        return []
    n = min(n_prompts, usable // span + 1)
    return [round(i * usable / max(n - 1, 1)) for i in range(n)]


def text_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Return corpus BLEU-4 and mean ROUGE-L F-measure of predictions against references."""
    from torchmetrics.text import BLEUScore
    from torchmetrics.text.rouge import ROUGEScore

    bleu = BLEUScore(n_gram=4, smooth=True)(predictions, [[r] for r in references]).item()
    rouge = ROUGEScore(rouge_keys=("rougeL",))(predictions, references)["rougeL_fmeasure"].item()
    return {"bleu": bleu, "rouge_l": rouge}


def continuation_scores(model: TextGenerator, tok, tokens: np.ndarray, cfg: EvaluateParams,
                        device: torch.device) -> tuple[dict[str, float], list[dict]]:
    """Greedily continue held-out prompts and score the continuations against the true text.

    Prompts and references are spans of the test stream, decoded to text; the continuations come from the prompt
    texts (`continue_texts`), as a re-scored champion with another tokenizer continues them."""
    span = cfg.prompt_tokens + cfg.continuation_tokens
    offsets = prompt_offsets(len(tokens), cfg.n_prompts, span)
    if not offsets:
        log.warning("evaluate: the test split is shorter than one prompt + continuation; BLEU/ROUGE-L skipped")
        return {"bleu": float("nan"), "rouge_l": float("nan")}, []
    rows = torch.from_numpy(np.stack([tokens[o : o + span] for o in offsets]).astype(np.int64)).to(device)
    prompts = tok.decode_batch(rows[:, : cfg.prompt_tokens].tolist())
    refs = tok.decode_batch(rows[:, cfg.prompt_tokens :].tolist())
    preds = continue_texts(model, tok, prompts, cfg.continuation_tokens, device)
    records = [{"prompt": p, "reference": r, "generated": g} for p, r, g in zip(prompts, refs, preds)]
    return text_scores(preds, refs), records


def copy_and_diversity_scores(params: Params, samples: list[str]) -> tuple[dict, list[int]]:
    """Score the samples against the training split (the cleaned documents preprocess assigned to train): the
    memorization and diversity metrics, and each sample's longest verbatim training span in characters."""
    from config.catalog import CLEAN_FILE
    from evaluation.memorization import SpanIndex, diversity, memorization

    if not samples:  # nothing generated (evaluate.n_samples: 0): the guards will say "not measured"
        return {"memorization": None, "diversity": None}, []
    pre = params.preprocess
    start = time.perf_counter()
    train = [d["text"] for d in read_jsonl(params.clean.out_dir / CLEAN_FILE)
             if split_of(d["text"], pre.val_fraction, pre.test_fraction) == "train"]
    index = SpanIndex.build(train, params.evaluate.memorization_chars)
    built = time.perf_counter()
    copies = memorization(samples, index)
    words = diversity(samples)
    log.info("evaluate: memorization index of %d training characters built in %.2fs, %d samples searched in %.2fs",
             sum(map(len, train)), built - start, len(samples), time.perf_counter() - built)
    metrics = {"memorization": copies["memorization"], "memorization_longest_chars": copies["memorization_longest_chars"],
               "memorized_char_share": copies["memorized_char_share"], "diversity": words["distinct_2"], **words}
    return metrics, [row["longest_chars"] for row in copies["samples"]]


def real_halves(n_total: int, n_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the two disjoint sets of real training images evaluate compares with (sorted): the first is
    scored against the samples, the second against the first (the real-vs-real floor)."""
    n = min(n_images, n_total // 2)
    order = np.random.default_rng(seed).permutation(n_total)
    return np.sort(order[:n]), np.sort(order[n : 2 * n])


def grid_labels(rows: int, n_classes: int) -> torch.Tensor:
    """Labels for a rows x rows grid of a conditional generator: row r shows class r mod n_classes."""
    return (torch.arange(rows * rows) // rows) % n_classes


@torch.no_grad()
def sample_images(model, n: int, seed: int, labels: torch.Tensor | None, steps: int | None,
                  chunk: int = 256, report=None) -> torch.Tensor:
    """Draw n images (on CPU, float [-1, 1]) in chunks from one seeded generator; labels (n,) for conditional.
    `report` (a runtime.progress.Progress of n units) hears after each chunk."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, chunk):
        part = None if labels is None else labels[start : start + chunk]
        out.append(model.sample(min(chunk, n - start), generator=gen, labels=part, steps=steps).float().cpu())
        if report is not None:
            done = start + len(out[-1])
            report.update(done, "images sampled", force=done == n)
    return torch.cat(out)
