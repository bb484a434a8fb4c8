"""Scores of a trained generator that are not image-feature metrics: bits per byte, prompt continuations and their
BLEU/ROUGE-L, memorization and diversity of text samples, and seeded image sampling for the grids."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from config.params import EvaluateParams, Params
from dataprep.tokenize import split_of
from models.base import TextGenerator
from runtime.io import read_jsonl

log = logging.getLogger(__name__)


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    return nll_nats / math.log(2) / n_bytes


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
    """Greedily continue held-out prompts and score the continuations against the true text."""
    span = cfg.prompt_tokens + cfg.continuation_tokens
    offsets = prompt_offsets(len(tokens), cfg.n_prompts, span)
    if not offsets:
        log.warning("evaluate: the test split is shorter than one prompt + continuation; BLEU/ROUGE-L skipped")
        return {"bleu": float("nan"), "rouge_l": float("nan")}, []
    rows = torch.from_numpy(np.stack([tokens[o : o + span] for o in offsets]).astype(np.int64)).to(device)
    prompts, truth = rows[:, : cfg.prompt_tokens], rows[:, cfg.prompt_tokens :]
    generated = model.generate(prompts, cfg.continuation_tokens, temperature=0.0)
    preds = tok.decode_batch(generated.tolist())
    refs = tok.decode_batch(truth.tolist())
    records = [{"prompt": p, "reference": r, "generated": g}
               for p, r, g in zip(tok.decode_batch(prompts.tolist()), refs, preds)]
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
