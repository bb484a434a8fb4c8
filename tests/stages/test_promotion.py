"""Fair promotion: the champion is re-scored under the challenger's evaluation protocol (its test documents, its
real images and feature extractor, its seeds) and the challenger wins only with confidence. Every case runs the
real stages on tiny data against a real MLflow registry."""

from __future__ import annotations

import math

import mlflow
import pytest

from config.catalog import CLEAN_FILE
from runtime.io import read_json
from tasks.classifier import classifier
from tasks.clean import clean
from tasks.evaluate import evaluate
from tasks.ingest import ingest
from tasks.preprocess import preprocess
from tasks.register import register
from tasks.train import train
from tests.stages.test_image_model_stages import image_params

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def client_for(params):
    mlflow.set_tracking_uri(params.register.tracking_uri)
    return mlflow.MlflowClient()


def rescored_bpb(params, version: str) -> float:
    """Bits per byte of a registered version on this workspace's test documents, computed independently."""
    import torch

    from dataprep.tokenize import iter_split
    from evaluation.champion import load_registered
    from evaluation.scoring import document_scores

    docs = list(iter_split(params.clean.out_dir / CLEAN_FILE, "test", params.preprocess))
    py = load_registered(f"models:/{params.register.model_name}/{version}")
    scores = document_scores(py.model, py.tokenizer, docs, 4, torch.device("cpu"))
    return scores["nll"].sum() / math.log(2) / scores["bytes"].sum()


def test_after_a_data_change_the_champion_is_rescored_on_the_new_test_split(project, staged):
    params = staged()
    train(params)
    evaluate(params)
    assert register(params)["promoted"]
    client = client_for(params)
    v1 = client.get_model_version(params.register.model_name, "1")

    project.write_corpus(n_docs=400)  # more documents: the test split grows, the tokenizer is retrained
    for stage in (ingest, clean, preprocess, train, evaluate):
        stage(params)
    second = register(params)

    v2 = client.get_model_version(params.register.model_name, str(second["version"]))
    assert v2.tags["protocol.test_sha256"] != v1.tags["protocol.test_sha256"]
    assert int(v2.tags["protocol.test_documents"]) > int(v1.tags["protocol.test_documents"])
    rescored = float(v2.tags["champion_rescored.test_bpb"])
    assert rescored == pytest.approx(rescored_bpb(params, "1"), rel=1e-6)  # v1 on the new split
    assert rescored != pytest.approx(float(v1.tags["metric.test_bpb"]), rel=1e-6)  # not its stored number
    assert second["comparison"]["n_units"] == int(v2.tags["protocol.test_documents"])
    gain = float(v2.tags["comparison.gain"])
    assert gain == pytest.approx(rescored - float(v2.tags["metric.test_bpb"]), abs=1e-5)
    assert v2.tags["decision"] == expected_decision(second["comparison"], 0.0)  # the decision follows those numbers


def expected_decision(c: dict, min_improvement: float) -> str:
    if not c["gain"] > min_improvement:
        return "kept_champion"
    return "promoted" if c["ci_low"] > 0 else "not_significant"


def test_a_rerun_differing_only_by_seed_is_judged_paired_and_a_margin_absorbs_seed_noise(project, staged):
    params = staged()
    train(params)
    evaluate(params)
    assert register(params)["promoted"]

    reseeded = project.params_with({"train": {"seed": 7}})
    train(reseeded)
    evaluate(reseeded)
    second = register(reseeded)

    c = second["comparison"]
    assert abs(c["gain"]) < 0.05 * c["champion"]  # near-identical quality
    assert second["decision"] == expected_decision(c, 0.0) and second["promoted"] is (second["decision"] == "promoted")
    # The interval is over test documents: it says how sure the gain is on this data, not how much another
    # training seed would change it. A margin of a few percent of the metric keeps a reseeded run out.
    margin = project.params_with({"train": {"seed": 7}, "register": {"min_improvement": 0.05 * c["champion"]}})
    third = register(margin)
    assert third["promoted"] is False and third["decision"] == "kept_champion"
    assert third["decision_rule"].startswith("register.min_improvement")
    assert str(client_for(params).get_model_version_by_alias(params.register.model_name, "champion").version) == "1"


def run_images(params):
    for stage in (ingest, clean, preprocess, classifier, train, evaluate):
        stage(params)
    return register(params)


def test_images_after_a_data_change_are_rescored_with_the_retrained_extractor(project):
    project.write_images(per_class=20)
    params = image_params(project, "dcgan")
    assert run_images(params)["promoted"]
    client = client_for(params)
    v1 = client.get_model_version(params.register.model_name, "1")

    project.write_images(per_class=30, seed=1)  # new images: the classifier stage retrains the extractor
    second = run_images(params)

    v2 = client.get_model_version(params.register.model_name, "2")
    assert v2.tags["protocol.extractor_sha256"] != v1.tags["protocol.extractor_sha256"]
    assert v2.tags["protocol.real_sha256"] != v1.tags["protocol.real_sha256"]
    c = second["comparison"]
    assert c["metric"] == "fid" and c["n_units"] == int(v2.tags["protocol.n_images"])
    assert float(v2.tags["champion_rescored.fid"]) == pytest.approx(c["champion"])
    assert c["champion"] != pytest.approx(float(v1.tags["metric.fid"]), rel=1e-3)  # another feature space
    assert math.isfinite(c["ci_low"]) and c["ci_low"] <= c["gain"] <= c["ci_high"]
    assert second["decision"] in {"promoted", "not_significant", "kept_champion"}


def test_an_incomparable_champion_keeps_the_alias_with_the_reason(project):
    project.write_images(per_class=20)
    params = image_params(project, "dcgan")
    assert run_images(params)["promoted"]

    bigger = image_params(project, "dcgan", preprocess={**params_preprocess(params), "image_size": 16})
    second = run_images(bigger)

    assert second["promoted"] is False
    assert second["decision"].startswith("incomparable: "), second["decision"]
    assert "16" in second["decision"]
    client = client_for(bigger)
    assert str(client.get_model_version_by_alias(bigger.register.model_name, "champion").version) == "1"
    assert client.get_model_version(bigger.register.model_name, "2").tags["decision"] == second["decision"]
    assert read_json(bigger.register.metrics_path)["incomparable"] in second["decision"]


def params_preprocess(params) -> dict:
    return {"val_fraction": params.preprocess.val_fraction, "test_fraction": params.preprocess.test_fraction}
