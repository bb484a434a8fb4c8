"""evaluate: score the trained generator on the held-out test split.

Text: test perplexity (under the model's own tokenizer) and bits per byte (tokenizer-independent: the summed
negative log-likelihood of the whole test stream divided by its UTF-8 bytes, so generators with different
tokenizers compare on one number); BLEU and ROUGE-L of greedy continuations of held-out prompts against the
true continuations; a set of seeded samples written to `samples.jsonl`.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from models.base import TextGenerator, load_generator
from tasks.io import atomic_path, read_json, write_json, write_jsonl
from tasks.params import EvaluateParams, Params
from tasks.preprocess import META_FILE, TOKENIZER_FILE, load_tokens
from tasks.train import pick_device

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"  # inside evaluate.out_dir
CONTINUATIONS_FILE = "continuations.jsonl"


# ---------------------------------------------------------------------------------------------------- pure logic


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


# ---------------------------------------------------------------------------------------------------- stage


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


def evaluate(params: Params) -> dict:
    """Score the trained model on the test split; write metrics, samples and continuations."""
    from tokenizers import Tokenizer

    cfg = params.evaluate
    data_dir = params.preprocess.out_dir
    meta = read_json(data_dir / META_FILE)
    tok = Tokenizer.from_file(str(data_dir / TOKENIZER_FILE))
    device = pick_device(params.train.device)
    model = load_generator(params.train.out_dir, device).eval()
    test = load_tokens(data_dir, "test")

    start = time.perf_counter()
    nll, n_scored = model.score_stream(test, cfg.batch_size, device)
    scored_at = time.perf_counter()
    scores, continuations = continuation_scores(model, tok, test, cfg, device)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    samples = model.sample(cfg.n_samples, generator=gen, start_id=meta["eot_id"], max_new_tokens=cfg.sample_tokens,
                           temperature=cfg.temperature, top_k=cfg.top_k) if cfg.n_samples else None
    texts = tok.decode_batch(samples.tolist()) if samples is not None else []

    metrics = {
        "test_loss": nll / n_scored,
        "test_perplexity": math.exp(nll / n_scored),
        "test_bpb": bits_per_byte(nll, meta["test"]["n_bytes"]),
        "test_unigram_bpb": meta["test"]["byte_entropy_bits"],  # baseline: a model that knows byte frequencies
        "test_tokens": n_scored,
        "test_bytes": meta["test"]["n_bytes"],
        **scores,
        "scoring_tokens_per_second": n_scored / max(scored_at - start, 1e-9),
    }
    metrics = {k: (round(v, 6) if math.isfinite(v) else None) if isinstance(v, float) else v
               for k, v in metrics.items()}  # JSON has no NaN: an unavailable score is null
    with atomic_path(cfg.out_dir) as out:
        out.mkdir()
        write_jsonl(out / SAMPLES_FILE, [{"seed": cfg.seed, "index": i, "text": t} for i, t in enumerate(texts)])
        write_jsonl(out / CONTINUATIONS_FILE, continuations)
    write_json(cfg.metrics_path, metrics)
    shown = {k: "n/a" if metrics[k] is None else f"{metrics[k]:.4f}"
             for k in ("test_bpb", "test_unigram_bpb", "test_perplexity", "bleu", "rouge_l")}
    log.info("evaluate: test bpb %(test_bpb)s (unigram baseline %(test_unigram_bpb)s), perplexity "
             "%(test_perplexity)s, BLEU %(bleu)s, ROUGE-L %(rouge_l)s", shown)
    return metrics


if __name__ == "__main__":
    from tasks.cli import main

    main(evaluate)
