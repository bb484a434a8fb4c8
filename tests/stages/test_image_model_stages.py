"""classifier → train → evaluate → register for every image generator on tiny data, and what the registered
model answers: PNG images of the requested class, and clear errors for bad requests."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from runtime.errors import DataError
from tasks.classifier import classifier
from tasks.clean import clean
from tasks.evaluate import evaluate
from tasks.ingest import ingest
from tasks.preprocess import preprocess
from tasks.register import register
from tasks.train import train
from tests.conftest import TINY_IMAGE

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

IMAGE_GENERATORS = ["dcgan", "cdcgan", "vae", "ddpm"]


def image_params(project, name: str, **overrides):
    merged = {**TINY_IMAGE, **overrides}
    merged["model"] = {**TINY_IMAGE["model"], "name": name}
    return project.make_params(**merged)


@pytest.mark.parametrize("name", IMAGE_GENERATORS)
def test_each_image_generator_trains_evaluates_registers_and_serves_pngs(project, name):
    import mlflow

    project.write_images(per_class=20)
    params = image_params(project, name)
    for stage in (ingest, clean, preprocess, classifier):
        stage(params)
    trained = train(params)
    assert trained["steps"] == 4 and trained["images_per_second"] > 0
    metrics = evaluate(params)
    for key in ("fid", "kid", "precision", "recall", "fid_real_floor", "inception_score"):
        assert metrics[key] is not None and np.isfinite(metrics[key]), key
    assert metrics["fid"] >= 0 and 0 <= metrics["precision"] <= 1 and metrics["n_images"] == 20
    grid = Image.open(params.evaluate.plots_dir / "samples.png")
    assert grid.size == (4 * 8 + 5, 4 * 8 + 5)  # 4x4 images of 8 px with 1 px padding
    assert (params.evaluate.plots_dir / "reconstructions.png").exists() == (name == "vae")
    assert ("class_accuracy" in metrics) == (name == "cdcgan")
    assert 0 <= metrics["memorization"] <= 1 and 0 <= metrics["memorization_real"] <= 1
    assert metrics["diversity"] > 0 and metrics["copy_threshold"] > 0
    nearest = Image.open(params.evaluate.plots_dir / "nearest.png")
    assert nearest.size == (4 * 8 + 5, 2 * 8 + 3)  # 4 closest samples over their nearest training images

    result = register(params)
    assert result["promoted"] and result["challenger_fid"] == pytest.approx(metrics["fid"])
    mlflow.set_tracking_uri(params.register.tracking_uri)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(params.register.model_name, "champion")
    assert version.tags["generator"] == name and float(version.tags["metric.fid"]) == pytest.approx(metrics["fid"])
    run_artifacts = {a.path for a in client.list_artifacts(version.run_id, "evaluation")}
    assert "evaluation/samples.png" in run_artifacts
    assert "evaluation/nearest.png" in run_artifacts
    assert version.description.startswith("# Model card") and "- PASS: memorization" in version.description
    assert "Licence not declared" in version.description  # the image folder has no ingest.licenses entry
    graph = {"dcgan": "generator", "cdcgan": "generator", "vae": "decoder", "ddpm": "unet"}[name]
    assert {a.path for a in client.list_artifacts(version.run_id, "onnx")} == {"onnx/onnx.json", f"onnx/{graph}.onnx"}
    step_grids = [a.path for a in client.list_artifacts(version.run_id, "images")]
    assert len([p for p in step_grids if p.endswith(".png")]) == 2  # one grid per validation (steps 2 and 4)

    model = mlflow.pyfunc.load_model(f"models:/{params.register.model_name}@champion")
    request = {"n": [3], "seed": [7], "scale": [2]} | ({"class_label": [1]} if name == "cdcgan" else {})
    import pandas as pd

    out = model.predict(pd.DataFrame(request))  # one {"image", "index", "class_label", "seed"} per image
    assert len(out) == 3 and [o["index"] for o in out] == [0, 1, 2] and {o["seed"] for o in out} == {7}
    img = Image.open(io.BytesIO(base64.b64decode(out[0]["image"])))
    assert img.format == "PNG" and img.size == (16, 16) and img.mode == "L"
    assert [o["class_label"] for o in out] == ([1, 1, 1] if name == "cdcgan" else [-1, -1, -1])
    again = model.predict(pd.DataFrame(request))
    assert again == out  # same seed, same images


def test_serving_refuses_bad_requests_with_messages(project):
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    project.write_images(per_class=20)
    params = image_params(project, "cdcgan")
    for stage in (ingest, clean, preprocess, classifier, train, evaluate, register):
        stage(params)
    mlflow.set_tracking_uri(params.register.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{params.register.model_name}@champion")
    for request, message in [
        ({"n": [2], "class_label": [3]}, "field 'class_label': 3 is invalid; expected a class id in 0..2"),
        ({"n": [2], "class_label": [-1]}, "expected a class id in 0..2"),
        ({"n": [100000]}, "field 'n': 100000 is invalid; expected an integer in 1..256"),
        ({"n": [0]}, "field 'n'"),
        ({"n": [2], "steps": [0]}, "field 'steps'"),
        ({"n": [2], "class_label": [2.5]}, r"^field 'class_label': 2.5 is invalid; expected a class id in 0..2$"),
        ({"n": [2], "seed": [True]}, r"^field 'seed': True is invalid"),
        ({"n": [2], "colour": ["red"]}, r"^field 'colour' is unknown; allowed fields: n, seed, class_label, steps, "
                                        r"scale$"),
    ]:
        with pytest.raises(MlflowException, match=message):
            model.predict(pd.DataFrame(request))


def test_a_conditional_generator_needs_labelled_data(project):
    rng = np.random.default_rng(0)
    project.path("data", "inputs").mkdir(parents=True)
    np.save(project.path("data", "inputs", "x.npy"), rng.integers(0, 256, (60, 8, 8), dtype=np.uint8))
    params = image_params(project, "cdcgan", ingest={"image_sources": ["data/inputs/x.npy"]})
    for stage in (ingest, clean, preprocess):
        stage(params)
    metrics = classifier(params)
    assert metrics["task"] == "rotation" and metrics["n_classes"] == 4  # unlabelled: self-supervised extractor
    with pytest.raises(DataError, match="cdcgan is class-conditional but the data has 0 classes"):
        train(params)


def test_unlabelled_data_scores_without_an_inception_score(project):
    rng = np.random.default_rng(0)
    project.path("data", "inputs").mkdir(parents=True)
    np.save(project.path("data", "inputs", "x.npy"), rng.integers(0, 256, (60, 8, 8), dtype=np.uint8))
    params = image_params(project, "vae", ingest={"image_sources": ["data/inputs/x.npy"]})
    for stage in (ingest, clean, preprocess, classifier, train):
        stage(params)
    metrics = evaluate(params)
    assert metrics["inception_score"] is None and metrics["fid"] is not None
    assert metrics["feature_extractor"] == "classifier (rotation)"
    assert json.loads((params.classifier.out_dir / "task.json").read_text())["task"] == "rotation"


def test_text_data_skips_the_classifier(project):
    project.write_corpus()
    params = project.make_params()
    for stage in (ingest, clean, preprocess):
        stage(params)
    assert classifier(params) == {"skipped": True}
    assert (params.classifier.out_dir / "skipped.json").exists()
