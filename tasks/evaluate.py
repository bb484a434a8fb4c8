"""evaluate: score the trained generator on the held-out test split.

Text: test perplexity (under the model's own tokenizer) and bits per byte (tokenizer-independent: the summed
negative log-likelihood of the whole test stream divided by its UTF-8 bytes, so generators with different
tokenizers compare on one number); BLEU and ROUGE-L of greedy continuations of held-out prompts against the
true continuations; a set of seeded samples written to `samples.jsonl`. Copies and collapse of those samples (the
register stage's guards, evaluation/memorization.py): `memorization` is the share of samples holding a verbatim span of
at least `evaluate.memorization_chars` characters of one training document (`memorization_longest_chars`: the
longest), found with a sampled rolling-hash index of the training split; `diversity` is distinct-2 (distinct word
bigrams over all bigrams of the samples), reported with distinct-1/3 and the within-sample repetition rate.

Images (evaluation/image_metrics.py): `n_images` samples against as many real training images, all scored with the
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

from config.catalog import (
    CLASS_ACCURACY_FILE,
    CLEAN_FILE,
    CONTINUATIONS_FILE,
    DOCUMENT_SCORES_FILE,
    GRID_FILE,
    IMAGE_FEATURES_FILE,
    META_FILE,
    NEAREST_FILE,
    PROTOCOL_FILE,
    RECONSTRUCTIONS_FILE,
    SAMPLES_FILE,
    TOKENIZER_FILE,
)
from config.params import Params
from dataprep.tokenize import iter_split, load_tokens
from evaluation.protocol import digest_arrays, digest_texts, image_protocol, protocol_digest, text_protocol
from evaluation.render import text_png
from evaluation.scoring import (
    bits_per_byte,
    continuation_scores,
    copy_and_diversity_scores,
    document_scores,
    grid_labels,
    real_halves,
    sample_images,
)
from models.base import load_generator
from models.registry import IMAGE
from runtime.device import pick_device
from runtime.io import atomic_path, read_json, write_json, write_jsonl
from runtime.progress import Progress

log = logging.getLogger(__name__)


def evaluate_images(params: Params) -> dict:
    """Score the trained image generator against real training images; write metrics and sample grids."""
    from config.catalog import TASK_FILE
    from dataprep.tokenize import load_images
    from evaluation.image_metrics import class_accuracy, copy_report, feature_spread, grid_png, image_scores
    from models.classifier import embed, load_classifier, to_unit

    cfg = params.evaluate
    data_dir = params.preprocess.out_dir
    meta = read_json(data_dir / META_FILE)
    device = pick_device(params.train.device)
    model = load_generator(params.train.out_dir, device).eval()
    clf = load_classifier(params.classifier.out_dir, device)
    task = read_json(params.classifier.out_dir / TASK_FILE)["task"]
    images, _ = load_images(data_dir, "train")
    idx_a, idx_b = real_halves(len(images), cfg.n_images, cfg.seed)
    n = len(idx_a)
    real_a = to_unit(torch.from_numpy(np.asarray(images[idx_a])))
    real_b = to_unit(torch.from_numpy(np.asarray(images[idx_b])))
    conditional = getattr(model, "conditional", False)
    requested = torch.arange(n) % meta["n_classes"] if conditional else None

    # the sampler steps in force (the model's default when evaluate.sample_steps is null), so that a re-scored
    # champion samples with the same number
    steps = cfg.sample_steps if cfg.sample_steps is not None else getattr(getattr(model, "config", None),
                                                                          "sample_steps", None)
    start = time.perf_counter()
    fake = sample_images(model, n, cfg.seed, requested, steps, report=Progress("evaluate", n, log))
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
    fake_feats, fake_logits = embed(clf, fake)
    real_feats, _ = embed(clf, real_a)
    from models.classifier import WEIGHTS_FILE
    from runtime.io import sha256_file

    protocol = image_protocol(real_sha256=digest_arrays(np.asarray(images[idx_a])),
                              extractor_sha256=sha256_file(params.classifier.out_dir / WEIGHTS_FILE), n_images=n,
                              seed=cfg.seed, steps=steps, image_shape=list(images.shape[1:]), conditional=conditional,
                              kid_subset_size=kid_subset, pr_k=cfg.pr_k)
    metrics["protocol"] = protocol_digest(protocol)
    test_images, _ = load_images(data_dir, "test")
    copies = copy_report(fake_feats, train_feats, embed(clf, test_images)[0], quantile=cfg.copy_quantile,
                         seed=cfg.seed)
    metrics |= {"memorization": copies["memorization"], "memorization_real": copies.get("memorization_real"),
                "copy_threshold": copies["copy_threshold"], "nn_distance_median": copies["nn_distance_median"],
                "train_nn_distance_median": copies["train_nn_distance_median"],
                "diversity": feature_spread(fake_feats, seed=cfg.seed) / feature_spread(real_feats, seed=cfg.seed)}
    closest = copies["distances"].argsort()[: cfg.grid_rows]
    pairs = torch.cat([fake[closest], to_unit(torch.from_numpy(np.asarray(images[copies["indices"][closest]])))])
    if task != "labels":  # rotation logits say nothing about classes: an Inception Score would mislead
        metrics["inception_score"] = metrics["inception_score_std"] = metrics["inception_score_real"] = None

    rows = cfg.grid_rows
    grid_cond = grid_labels(rows, meta["n_classes"]) if conditional else None
    grid = sample_images(model, rows * rows, cfg.seed, grid_cond, steps)
    metrics = {k: (round(v, 6) if math.isfinite(v) else None) if isinstance(v, float) else v
               for k, v in metrics.items()}
    with atomic_path(cfg.plots_dir) as pictures:
        pictures.mkdir()
        (pictures / GRID_FILE).write_bytes(grid_png(grid, nrow=rows, scale=cfg.grid_scale))
        (pictures / NEAREST_FILE).write_bytes(grid_png(pairs, nrow=len(closest), scale=cfg.grid_scale))
        if hasattr(model, "reconstruct"):  # VAE: real test images (odd rows) over their reconstructions
            test, _ = load_images(data_dir, "test")
            count = min(max(rows // 2, 1) * rows, len(test) // rows * rows)
            real = to_unit(torch.from_numpy(np.asarray(test[:count]))).to(device)
            recon = model.reconstruct(real).float().cpu()
            pairs = torch.stack([real.cpu().view(-1, rows, *real.shape[1:]),
                                 recon.view(-1, rows, *recon.shape[1:])], dim=1).flatten(0, 2)
            (pictures / RECONSTRUCTIONS_FILE).write_bytes(grid_png(pairs, nrow=rows, scale=cfg.grid_scale))
    with atomic_path(cfg.out_dir) as out:
        out.mkdir()
        if per_class is not None:
            write_json(out / CLASS_ACCURACY_FILE, per_class)
        write_json(out / PROTOCOL_FILE, protocol)
        # the units a re-scored champion is compared on (tasks/register.py); loaded with allow_pickle=False
        np.savez(out / IMAGE_FEATURES_FILE, real_features=real_feats.numpy(), fake_features=fake_feats.numpy(),
                 fake_logits=fake_logits.numpy())
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
    if params.model.modality is IMAGE:
        return evaluate_images(params)
    from tokenizers import Tokenizer

    cfg = params.evaluate
    data_dir = params.preprocess.out_dir
    meta = read_json(data_dir / META_FILE)
    tok = Tokenizer.from_file(str(data_dir / TOKENIZER_FILE))
    device = pick_device(params.train.device)
    model = load_generator(params.train.out_dir, device).eval()
    test = load_tokens(data_dir, "test")

    documents = list(iter_split(params.clean.out_dir / CLEAN_FILE, "test", params.preprocess))
    start = time.perf_counter()
    # per test document (the stream preprocess wrote, attributed to its documents): the unit that a re-scored
    # champion is compared on (tasks/register.py)
    per_doc = document_scores(model, tok, documents, cfg.batch_size, device)
    nll, n_scored = float(per_doc["nll"].sum()), int(per_doc["tokens"].sum())
    scored_at = time.perf_counter()
    scores, continuations = continuation_scores(model, tok, test, cfg, device)
    protocol = text_protocol(test_sha256=digest_texts(documents), n_documents=len(documents),
                             n_bytes=int(per_doc["bytes"].sum()),
                             prompts_sha256=digest_texts(t for c in continuations for t in (c["prompt"], c["reference"])),
                             n_prompts=len(continuations), continuation_tokens=cfg.continuation_tokens,
                             tokenizer_sha256=digest_texts([tok.to_str()]))
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    samples = model.sample(cfg.n_samples, generator=gen, start_id=meta["eot_id"], max_new_tokens=cfg.sample_tokens,
                           temperature=cfg.temperature, top_k=cfg.top_k) if cfg.n_samples else None
    texts = tok.decode_batch(samples.tolist()) if samples is not None else []
    guard_scores, copied = copy_and_diversity_scores(params, texts)

    metrics = {
        "test_loss": nll / n_scored,
        "test_perplexity": math.exp(nll / n_scored),
        "test_bpb": bits_per_byte(nll, int(per_doc["bytes"].sum())),
        "test_unigram_bpb": meta["test"]["byte_entropy_bits"],  # baseline: a model that knows byte frequencies
        "test_tokens": n_scored,
        "test_bytes": meta["test"]["n_bytes"],
        **scores,
        **guard_scores,
        "scoring_tokens_per_second": n_scored / max(scored_at - start, 1e-9),
        "protocol": protocol_digest(protocol),
    }
    metrics = {k: (round(v, 6) if math.isfinite(v) else None) if isinstance(v, float) else v
               for k, v in metrics.items()}  # JSON has no NaN: an unavailable score is null
    with atomic_path(cfg.out_dir) as out:
        out.mkdir()
        write_jsonl(out / SAMPLES_FILE, [{"seed": cfg.seed, "index": i, "text": t, "longest_copied_chars": n}
                                         for i, (t, n) in enumerate(zip(texts, copied))])
        write_jsonl(out / CONTINUATIONS_FILE, continuations)
        write_json(out / PROTOCOL_FILE, protocol)
        write_json(out / DOCUMENT_SCORES_FILE, {k: v.tolist() for k, v in per_doc.items()})
    with atomic_path(cfg.plots_dir) as pictures:
        pictures.mkdir()
        (pictures / GRID_FILE).write_bytes(text_png(texts, title=f"{params.model.name}: {len(texts)} samples "
                                                    f"(seed {cfg.seed}, temperature {cfg.temperature:g})"))
    write_json(cfg.metrics_path, metrics)
    shown = {k: "n/a" if metrics[k] is None else f"{metrics[k]:.4f}"
             for k in ("test_bpb", "test_unigram_bpb", "test_perplexity", "bleu", "rouge_l", "memorization",
                       "diversity")}
    log.info("evaluate: test bpb %(test_bpb)s (unigram baseline %(test_unigram_bpb)s), perplexity "
             "%(test_perplexity)s, BLEU %(bleu)s, ROUGE-L %(rouge_l)s, memorization %(memorization)s, "
             "diversity (distinct-2) %(diversity)s", shown)
    return metrics


if __name__ == "__main__":
    from cli.stage import main

    main(evaluate)
