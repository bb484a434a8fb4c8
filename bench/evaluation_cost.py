"""Evaluation cost at scale: FID, KID and Inception Score on 10,000 images, and perplexity scoring tokens/s.

Images: `evaluation.image_metrics` on 10,000 real digits against 10,000 perturbed ones, in the feature space of a
`models.classifier.Classifier` with the default `classifier` params, trained (`fit_classifier`) on the 1,797
scikit-learn digits upscaled to 16x16 as the tests' `digits()` does. Only 1,797 digits exist, so the real set
draws 10,000 of them with replacement; the "generated" set is another such draw, shifted by up to 2 pixels and with
Gaussian noise (sigma 0.2 in [-1, 1] units), so the scores are not zero. Each metric is timed on its own
(`frechet_distance`, `kernel_distance` with the default `evaluate.kid_subset_size` and 100 subsets,
`inception_score` with 10 splits, `precision_recall` and `density_coverage` on the embedded features), then
`image_scores`, which computes them all, as the evaluate stage calls it.

Text: `score_stream` (the evaluate stage's perplexity pass) of the default GPT (`model.gpt`, the BPE vocabulary of
the default corpus) at `evaluate.batch_size`, over the test split and over 100,000 tokens of the train split, after
`dvc repro preprocess` in the clone. The GPT is freshly initialised: scoring cost does not depend on the weights.

Code under test: a fresh clone of the last commit (sharing this venv). Usage: python bench/evaluation_cost.py
(writes bench/results/evaluation.json)
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("bench.evaluation")

from bench.common import Timer

N_IMAGES = 10_000
N_TOKENS = 100_000
NOISE = 0.2


def image_sets(images: np.ndarray, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return n real images and n perturbed ones, float (n, 1, H, W) in [-1, 1]."""
    from models.classifier import random_shift, to_unit

    gen = torch.Generator().manual_seed(seed)
    pool = to_unit(torch.from_numpy(images))
    real = pool[torch.randint(len(pool), (n,), generator=gen)]
    fake = random_shift(pool[torch.randint(len(pool), (n,), generator=gen)], 2, gen)
    fake = (fake + NOISE * torch.randn(fake.shape, generator=gen)).clamp(-1, 1)
    return real, fake


class Clock:
    """Wall and CPU seconds of named steps (CPU time counts torch's threads: see `bench.common.Timer`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    def __call__(self, name: str, fn):
        with Timer() as t:
            value = fn()
        self.seconds[name], self.cpu_seconds[name] = round(t.seconds, 3), round(t.cpu_seconds, 3)
        return value


def image_metrics(params) -> dict:
    """Time each metric, and `image_scores`, on N_IMAGES real vs N_IMAGES perturbed digits."""
    from evaluation import image_metrics as im
    from models.classifier import ClassifierConfig, embed, fit_classifier
    from tests.image_data import digits

    cfg, ev = params.classifier, params.evaluate
    images, labels = digits(params.preprocess.image_size)
    config = ClassifierConfig(image_size=images.shape[-1], channels=1, n_classes=10, width=cfg.width,
                              feature_dim=cfg.feature_dim)
    clock, values = Clock(), {}
    classifier = clock("fit_classifier", lambda: fit_classifier(images, labels, config, steps=cfg.steps,
                                                                batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed))
    log.info("classifier trained in %.1f s", clock.seconds["fit_classifier"])
    real, fake = image_sets(images, N_IMAGES)
    values["fid"] = clock("fid", lambda: im.frechet_distance(real, fake, classifier))
    values["kid_mean"], values["kid_std"] = clock(
        "kid", lambda: im.kernel_distance(real, fake, classifier, subset_size=ev.kid_subset_size, seed=ev.seed))
    values["inception_score_mean"], values["inception_score_std"] = clock(
        "inception_score", lambda: im.inception_score(fake, classifier, splits=10, seed=ev.seed))
    real_feats, _ = clock("embed_real", lambda: embed(classifier, real, batch_size=256))
    fake_feats, _ = clock("embed_fake", lambda: embed(classifier, fake, batch_size=256))
    values["precision"], values["recall"] = clock(
        "precision_recall", lambda: im.precision_recall(real_feats, fake_feats, k=ev.pr_k))
    values["density"], values["coverage"] = clock(
        "density_coverage", lambda: im.density_coverage(real_feats, fake_feats))
    parts = [k for k in clock.seconds if k != "fit_classifier"]
    totals = {"fid_kid_is": ("fid", "kid", "inception_score"), "sum_of_parts": parts}
    for name, keys in totals.items():
        clock.seconds[name] = round(sum(clock.seconds[k] for k in keys), 3)
        clock.cpu_seconds[name] = round(sum(clock.cpu_seconds[k] for k in keys), 3)
    log.info("seconds: %s", clock.seconds)
    scores = clock("image_scores_total", lambda: im.image_scores(real, fake, classifier,
                                                                 kid_subset_size=ev.kid_subset_size, k=ev.pr_k,
                                                                 seed=ev.seed))
    log.info("image_scores: %.1f s", clock.seconds["image_scores_total"])
    return {"n_real": len(real), "n_fake": len(fake), "image_size": images.shape[-1],
            "fake": f"real digits drawn again, shifted up to 2 px, Gaussian noise sigma {NOISE}",
            "classifier_params": {k: getattr(cfg, k) for k in ("steps", "batch_size", "lr", "width", "feature_dim",
                                                               "seed")},
            "kid_subset_size": ev.kid_subset_size, "kid_subsets": 100, "inception_score_splits": 10,
            "pr_k": ev.pr_k, "seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds,
            "values": {k: round(v, 6) for k, v in values.items()},
            "image_scores_values": {k: round(v, 6) for k, v in scores.items()}}


def perplexity(params, data_dir: Path) -> dict:
    """Time `score_stream` of the default GPT on the test split and on N_TOKENS train tokens."""
    from config.catalog import META_FILE
    from dataprep.tokenize import load_tokens
    from training.trainer import build_model

    meta = json.loads((data_dir / META_FILE).read_text())
    model = build_model(params, meta).eval()
    device, batch = torch.device("cpu"), params.evaluate.batch_size
    model.score_stream(np.asarray(load_tokens(data_dir, "test")[: 4 * model.block_size]), batch, device)  # warm-up
    rows = []
    for split, tokens in (("test", load_tokens(data_dir, "test")), ("train", load_tokens(data_dir, "train"))):
        tokens = np.asarray(tokens[:N_TOKENS])
        with Timer() as t:
            nll, count = model.score_stream(tokens, batch, device)
        rows.append({"split": split, "tokens_scored": count, "seconds": round(t.seconds, 3),
                     "cpu_seconds": round(t.cpu_seconds, 3), "tokens_per_second": round(count / t.seconds, 1),
                     "perplexity_untrained": round(math.exp(nll / count), 1)})
        log.info(json.dumps(rows[-1]))
    return {"model": "gpt, default architecture, freshly initialised", "n_params": model.n_params(),
            "vocab_size": meta["vocab_size"], "block_size": model.block_size, "batch_size": batch, "rows": rows}


def main() -> None:
    from bench.common import Result, commit_of, fresh_clone, import_from, remove_clone, run, stage_env

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    result = Result("evaluation")
    clone = fresh_clone("genpipe-evaluation-")
    log.info("dvc repro preprocess (the default corpus and tokenizer)...")
    run(["dvc", "repro", "preprocess"], clone, stage_env(clone))
    import_from(clone)
    from config.params import load_params

    params = load_params(clone / "params.yaml")
    figures = {"images": image_metrics(params), "perplexity": perplexity(params, params.preprocess.out_dir)}
    result.write(figures, commit_of(clone))
    remove_clone(clone)


if __name__ == "__main__":
    main()
