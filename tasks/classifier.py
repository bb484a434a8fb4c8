"""classifier: train the feature extractor of the image metrics on the real training images.

FID, KID, Inception Score and precision/recall are only comparable when computed with one extractor, and the
usual one (InceptionV3) must be downloaded. So the pipeline trains its own small CNN classifier on the training
split (class labels; or, for unlabelled data, which of four rotations an image shows) and versions it as this
stage's output. It depends on the data only, so every image generator trained on the same data is scored with the
same extractor, and its test accuracy is reported so a weak extractor is visible.

Text data has no use for it: the stage then writes a note saying so, and nothing else.
"""

from __future__ import annotations

import logging
import time

from config.catalog import META_FILE, SKIPPED_FILE, TASK_FILE
from config.params import Params
from dataprep.tokenize import load_images
from runtime.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)


def classifier(params: Params) -> dict:
    """Train the classifier on the train split; write it to `classifier.out_dir` and its accuracy as metrics."""
    cfg = params.classifier
    data_dir = params.preprocess.out_dir
    meta = read_json(data_dir / META_FILE)
    if meta.get("modality", "text") != "image":
        with atomic_path(cfg.out_dir) as out:
            out.mkdir()
            write_json(out / SKIPPED_FILE, {"reason": "text data: the classifier scores image generators only"})
        metrics = {"skipped": True}
        write_json(cfg.metrics_path, metrics)
        log.info("classifier: skipped (text data)")
        return metrics

    import numpy as np
    import torch

    from models.classifier import ClassifierConfig, accuracy, fit_classifier, rotation_task

    train_x, train_y = load_images(data_dir, "train")
    test_x, test_y = load_images(data_dir, "test")
    task = "labels" if meta["n_classes"] >= 2 else "rotation"
    if task == "rotation":  # no classes: learn which of four rotations an image shows (self-supervised)
        train_x, train_y = rotation_task(np.asarray(train_x), seed=cfg.seed)
        test_x, test_y = rotation_task(np.asarray(test_x), seed=cfg.seed + 1)
    n_classes = int(meta["n_classes"]) if task == "labels" else 4
    config = ClassifierConfig(image_size=meta["image_size"], channels=meta["channels"], n_classes=n_classes,
                              width=cfg.width, feature_dim=cfg.feature_dim)
    from runtime.device import pick_device

    device = pick_device(params.train.device)
    start = time.perf_counter()
    model = fit_classifier(np.asarray(train_x), np.asarray(train_y), config, steps=cfg.steps,
                           batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, device=device)
    seconds = time.perf_counter() - start
    metrics = {
        "task": task,
        "n_classes": n_classes,
        "train_accuracy": round(accuracy(model, np.asarray(train_x), np.asarray(train_y)), 5),
        "test_accuracy": round(accuracy(model, np.asarray(test_x), np.asarray(test_y)), 5),
        "chance_accuracy": round(1 / n_classes, 5),
        "steps": cfg.steps,
        "train_seconds": round(seconds, 1),
    }
    with atomic_path(cfg.out_dir) as out:
        model.to(torch.device("cpu")).save(out)
        write_json(out / TASK_FILE, {"task": task, "classes": meta["classes"] if task == "labels" else
                                       ["0", "90", "180", "270"]})
    write_json(cfg.metrics_path, metrics)
    log.info("classifier: %s task, test accuracy %.4f (chance %.4f) after %d steps in %.1fs", task,
             metrics["test_accuracy"], metrics["chance_accuracy"], cfg.steps, seconds)
    return metrics


if __name__ == "__main__":
    from cli.stage import main

    main(classifier)
