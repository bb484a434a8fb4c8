"""evaluate: score the trained generator on the held-out test split.

Text: test perplexity (under the model's own tokenizer) and bits per byte (tokenizer-independent: the summed
negative log-likelihood of the whole test stream divided by its UTF-8 bytes, so generators with different
tokenizers compare on one number); BLEU and ROUGE-L of greedy continuations of held-out prompts against the
true continuations; a set of seeded samples written to `samples.jsonl`. Copies and collapse of those samples (the
register stage's guards, tasks/memorization.py): `memorization` is the share of samples holding a verbatim span of
at least `evaluate.memorization_chars` characters of one training document (`memorization_longest_chars`: the
longest), found with a sampled rolling-hash index of the training split; `diversity` is distinct-2 (distinct word
bigrams over all bigrams of the samples), reported with distinct-1/3 and the within-sample repetition rate.

Images (tasks/image_metrics.py): `n_images` samples against as many real training images, all scored with the
classifier stage's network as feature extractor (one per dataset, so every image generator compares): FID, KID,
Inception Score, precision/recall and density/coverage; the same scores for two disjoint halves of the real
images (the floor a perfect generator would reach with that many samples); for conditional generators the share
of samples the classifier assigns to the class they were asked for. A fixed-seed sample grid `samples.png` (and
`reconstructions.png` for the VAE: real test images over their reconstructions).

Copies and collapse (the register stage's guards): `memorization` is the share of samples nearer to a training
image than `copy_quantile` of real images are to their nearest other training image (`memorization_real`: the same
share for held-out test images, the level of a generator that copies nothing); `diversity` is the samples' mean
pairwise feature distance over the real images'. `nearest.png` shows the samples closest to the training set
(top row) over their nearest training images.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from models.base import TextGenerator, load_generator
from tasks.io import atomic_path, read_json, read_jsonl, write_json, write_jsonl
from tasks.params import EvaluateParams, Params
from tasks.preprocess import META_FILE, TOKENIZER_FILE, load_tokens, split_of
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


def copy_and_diversity_scores(params: Params, samples: list[str]) -> tuple[dict, list[int]]:
    """Score the samples against the training split (the cleaned documents preprocess assigned to train): the
    memorization and diversity metrics, and each sample's longest verbatim training span in characters."""
    from tasks.clean import CLEAN_FILE
    from tasks.memorization import SpanIndex, diversity, memorization

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


GRID_FILE, RECONSTRUCTIONS_FILE, CLASS_ACCURACY_FILE = "samples.png", "reconstructions.png", "class_accuracy.json"
NEAREST_FILE = "nearest.png"  # images: the samples closest to a training image (top row) over that image


def grid_labels(rows: int, n_classes: int) -> torch.Tensor:
    """Labels for a rows x rows grid of a conditional generator: row r shows class r mod n_classes."""
    return (torch.arange(rows * rows) // rows) % n_classes


@torch.no_grad()
def sample_images(model, n: int, seed: int, labels: torch.Tensor | None, steps: int | None,
                  chunk: int = 256) -> torch.Tensor:
    """Draw n images (on CPU, float [-1, 1]) in chunks from one seeded generator; labels (n,) for conditional."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, chunk):
        part = None if labels is None else labels[start : start + chunk]
        out.append(model.sample(min(chunk, n - start), generator=gen, labels=part, steps=steps).float().cpu())
    return torch.cat(out)


def evaluate_images(params: Params) -> dict:
    """Score the trained image generator against real training images; write metrics and sample grids."""
    from models.classifier import embed, load_classifier, to_unit
    from tasks.classifier import TASK_FILE
    from tasks.image_metrics import class_accuracy, copy_report, feature_spread, grid_png, image_scores
    from tasks.preprocess import load_images

    cfg = params.evaluate
    data_dir = params.preprocess.out_dir
    meta = read_json(data_dir / META_FILE)
    device = pick_device(params.train.device)
    model = load_generator(params.train.out_dir, device).eval()
    clf = load_classifier(params.classifier.out_dir, device)
    task = read_json(params.classifier.out_dir / TASK_FILE)["task"]
    images, _ = load_images(data_dir, "train")
    n = min(cfg.n_images, len(images) // 2)
    order = np.random.default_rng(cfg.seed).permutation(len(images))
    real_a = to_unit(torch.from_numpy(np.asarray(images[np.sort(order[:n])])))
    real_b = to_unit(torch.from_numpy(np.asarray(images[np.sort(order[n : 2 * n])])))
    conditional = getattr(model, "conditional", False)
    requested = torch.arange(n) % meta["n_classes"] if conditional else None

    start = time.perf_counter()
    fake = sample_images(model, n, cfg.seed, requested, cfg.sample_steps)
    sampling_seconds = time.perf_counter() - start
    kid_subset = min(cfg.kid_subset_size, n)
    scores = image_scores(real_a, fake, clf, kid_subset_size=kid_subset, k=cfg.pr_k, seed=cfg.seed)
    floor = image_scores(real_a, real_b, clf, kid_subset_size=kid_subset, k=cfg.pr_k, seed=cfg.seed)
    metrics: dict = {
        "fid": scores["fid"], "kid": scores["kid_mean"], "kid_std": scores["kid_std"],
        "inception_score": scores["inception_score_mean"], "inception_score_std": scores["inception_score_std"],
        "precision": scores["precision"], "recall": scores["recall"],
        "density": scores["density"], "coverage": scores["coverage"],
        "fid_real_floor": floor["fid"], "kid_real_floor": floor["kid_mean"],
        "inception_score_real": floor["inception_score_mean"],
        "precision_real": floor["precision"], "recall_real": floor["recall"],
        "n_images": n,
        "sampling_images_per_second": n / max(sampling_seconds, 1e-9),
        "feature_extractor": f"classifier ({task})",
    }
    per_class = None
    if conditional and task == "labels":
        acc = class_accuracy(clf, fake, requested, meta["n_classes"])
        metrics["class_accuracy"] = acc["accuracy"]
        metrics["class_accuracy_chance"] = 1 / meta["n_classes"]
        per_class = dict(zip(meta["classes"], acc["per_class"]))
    # Copies and collapse, in the same feature space: each sample's nearest training image (all of them), and the
    # samples' spread relative to the real images'. Held-out test images give the copy share of real new images.
    train_feats, _ = embed(clf, images)
    fake_feats, _ = embed(clf, fake)
    test_images, _ = load_images(data_dir, "test")
    copies = copy_report(fake_feats, train_feats, embed(clf, test_images)[0], quantile=cfg.copy_quantile,
                         seed=cfg.seed)
    metrics |= {"memorization": copies["memorization"], "memorization_real": copies.get("memorization_real"),
                "copy_threshold": copies["copy_threshold"], "nn_distance_median": copies["nn_distance_median"],
                "train_nn_distance_median": copies["train_nn_distance_median"],
                "diversity": feature_spread(fake_feats, seed=cfg.seed) / feature_spread(embed(clf, real_a)[0],
                                                                                        seed=cfg.seed)}
    closest = copies["distances"].argsort()[: cfg.grid_rows]
    pairs = torch.cat([fake[closest], to_unit(torch.from_numpy(np.asarray(images[copies["indices"][closest]])))])
    if task != "labels":  # rotation logits say nothing about classes: an Inception Score would mislead
        metrics["inception_score"] = metrics["inception_score_std"] = metrics["inception_score_real"] = None

    rows = cfg.grid_rows
    grid_cond = grid_labels(rows, meta["n_classes"]) if conditional else None
    grid = sample_images(model, rows * rows, cfg.seed, grid_cond, cfg.sample_steps)
    metrics = {k: (round(v, 6) if math.isfinite(v) else None) if isinstance(v, float) else v
               for k, v in metrics.items()}
    with atomic_path(cfg.out_dir) as out:
        out.mkdir()
        (out / GRID_FILE).write_bytes(grid_png(grid, nrow=rows, scale=cfg.grid_scale))
        (out / NEAREST_FILE).write_bytes(grid_png(pairs, nrow=len(closest), scale=cfg.grid_scale))
        if hasattr(model, "reconstruct"):  # VAE: real test images (odd rows) over their reconstructions
            test, _ = load_images(data_dir, "test")
            count = min(max(rows // 2, 1) * rows, len(test) // rows * rows)
            real = to_unit(torch.from_numpy(np.asarray(test[:count]))).to(device)
            recon = model.reconstruct(real).float().cpu()
            pairs = torch.stack([real.cpu().view(-1, rows, *real.shape[1:]),
                                 recon.view(-1, rows, *recon.shape[1:])], dim=1).flatten(0, 2)
            (out / RECONSTRUCTIONS_FILE).write_bytes(grid_png(pairs, nrow=rows, scale=cfg.grid_scale))
        if per_class is not None:
            write_json(out / CLASS_ACCURACY_FILE, per_class)
    write_json(cfg.metrics_path, metrics)
    shown = {k: "n/a" if metrics.get(k) is None else f"{metrics[k]:.4g}"
             for k in ("fid", "fid_real_floor", "kid", "inception_score", "precision", "recall", "class_accuracy",
                       "memorization", "memorization_real", "diversity")}
    log.info("evaluate: FID %(fid)s (real-vs-real floor %(fid_real_floor)s), KID %(kid)s, IS %(inception_score)s, "
             "precision %(precision)s, recall %(recall)s, class accuracy %(class_accuracy)s, likely copies "
             "%(memorization)s (held-out real images %(memorization_real)s), diversity %(diversity)s", shown)
    return metrics


def evaluate(params: Params) -> dict:
    """Score the trained model on held-out data; write metrics and samples (text: continuations too)."""
    if params.model.modality == "image":
        return evaluate_images(params)
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
    guard_scores, copied = copy_and_diversity_scores(params, texts)

    metrics = {
        "test_loss": nll / n_scored,
        "test_perplexity": math.exp(nll / n_scored),
        "test_bpb": bits_per_byte(nll, meta["test"]["n_bytes"]),
        "test_unigram_bpb": meta["test"]["byte_entropy_bits"],  # baseline: a model that knows byte frequencies
        "test_tokens": n_scored,
        "test_bytes": meta["test"]["n_bytes"],
        **scores,
        **guard_scores,
        "scoring_tokens_per_second": n_scored / max(scored_at - start, 1e-9),
    }
    metrics = {k: (round(v, 6) if math.isfinite(v) else None) if isinstance(v, float) else v
               for k, v in metrics.items()}  # JSON has no NaN: an unavailable score is null
    with atomic_path(cfg.out_dir) as out:
        out.mkdir()
        write_jsonl(out / SAMPLES_FILE, [{"seed": cfg.seed, "index": i, "text": t, "longest_copied_chars": n}
                                         for i, (t, n) in enumerate(zip(texts, copied))])
        write_jsonl(out / CONTINUATIONS_FILE, continuations)
    write_json(cfg.metrics_path, metrics)
    shown = {k: "n/a" if metrics[k] is None else f"{metrics[k]:.4f}"
             for k in ("test_bpb", "test_unigram_bpb", "test_perplexity", "bleu", "rouge_l", "memorization",
                       "diversity")}
    log.info("evaluate: test bpb %(test_bpb)s (unigram baseline %(test_unigram_bpb)s), perplexity "
             "%(test_perplexity)s, BLEU %(bleu)s, ROUGE-L %(rouge_l)s, memorization %(memorization)s, "
             "diversity (distinct-2) %(diversity)s", shown)
    return metrics


if __name__ == "__main__":
    from tasks.cli import main

    main(evaluate)
