"""What the image metrics must tell a user, on the real embedded digits: training lowers FID far below an untrained
generator's on the same extractor, and a class-conditional generator draws the classes it is asked for."""

from __future__ import annotations

import pytest
import torch

from tasks.classifier import classifier
from tasks.clean import clean
from tasks.evaluate import evaluate
from tasks.ingest import ingest
from tasks.preprocess import preprocess
from tasks.train import train
from tests.conftest import TINY_IMAGE
from training.trainer import build_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

STEPS = 1000  # about 30 s on 2 CPU cores


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits at 16x16 through ingest, clean, preprocess and the classifier, and a cdcgan trained briefly."""
    from tests.conftest import Project

    project = Project(tmp_path_factory.mktemp("digits"))
    train_cfg = {"max_steps": STEPS, "batch_size": 64, "eval_interval": STEPS, "eval_batches": 2, "log_interval": 50,
                 "lr": 0.0002, "beta1": 0.5, "beta2": 0.999, "weight_decay": 0.0, "warmup_steps": 0,
                 "grad_clip": 0.0}
    params = project.make_params(
        ingest={"image_sources": ["embedded:digits"]},
        preprocess={"image_size": 16, "val_fraction": 0.05, "test_fraction": 0.05},
        classifier={"steps": 200, "batch_size": 128, "width": 16, "feature_dim": 32},
        model={"name": "cdcgan", "cdcgan": {"n_z": 32, "ngf": 32, "ndf": 32, "embed_dim": 16, "train": train_cfg}},
        evaluate={**TINY_IMAGE["evaluate"], "n_images": 500, "kid_subset_size": 100, "grid_rows": 10})
    for stage in (ingest, clean, preprocess, classifier):
        stage(params)
    train(params)
    return params, evaluate(params)


def test_the_classifier_recognises_real_digits(digits):
    import json

    params, _ = digits
    metrics = json.loads(params.classifier.metrics_path.read_text())
    assert metrics["task"] == "labels" and metrics["test_accuracy"] > 0.85


def test_a_trained_generator_scores_far_better_than_an_untrained_one(digits, tmp_path):
    from config.catalog import META_FILE
    from runtime.io import read_json, write_json

    params, trained = digits
    assert trained["fid_real_floor"] < trained["fid"]  # the floor is a floor
    torch.manual_seed(0)
    untrained = build_model(params, read_json(params.preprocess.out_dir / META_FILE))
    untrained.save(tmp_path / "untrained")
    write_json(tmp_path / "untrained" / "run.json", {"run_id": None})
    baseline = evaluate(params.model_copy(update={  # the same data, extractor and settings; other outputs
        "train": params.train.model_copy(update={"out_dir": tmp_path / "untrained"}),
        "evaluate": params.evaluate.model_copy(update={"out_dir": tmp_path / "eval",
                                                       "metrics_path": tmp_path / "eval.json"})}))
    assert trained["fid"] < 0.5 * baseline["fid"]
    assert trained["kid"] < 0.5 * baseline["kid"]
    assert trained["recall"] >= baseline["recall"] and trained["precision"] > baseline["precision"]


def test_a_conditional_generator_draws_the_requested_classes(digits):
    params, trained = digits
    assert trained["class_accuracy"] > 5 * trained["class_accuracy_chance"]  # chance: 0.1
    per_class = __import__("json").loads((params.evaluate.out_dir / "class_accuracy.json").read_text())
    assert sorted(per_class) == [str(d) for d in range(10)]
    assert sum(v > 0.3 for v in per_class.values()) >= 8


def test_the_sample_grid_shows_one_class_per_row(digits):
    from PIL import Image

    params, _ = digits
    grid = Image.open(params.evaluate.plots_dir / "samples.png")
    assert grid.size == (10 * 16 + 11,) * 2  # 10x10 cells of 16 px with 1 px padding
