"""The MLflow registry as consumers use it: `models:/NAME@champion`, the champion gate, and HTTP serving."""

from __future__ import annotations

import json

import pytest
import requests

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(built):
    import mlflow

    mlflow.set_tracking_uri(built.tracking_uri())
    return mlflow.MlflowClient()


def model_name(project) -> str:
    return project.model_name


def test_champion_loads_by_alias_and_generates_seeded_text(built, client):
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(f"models:/{model_name(built)}@champion")
    request = pd.DataFrame([{"prompt": "The value of", "max_new_tokens": 12, "temperature": 0.8, "top_k": 20,
                             "seed": 7}])
    first, again = model.predict(request), model.predict(request)
    assert isinstance(first["text"][0], str) and first["text"][0]
    assert first["text"][0] == again["text"][0]  # same seed, same text
    other = model.predict(request.assign(seed=8))
    assert list(other.columns) == ["text"]
    version = client.get_model_version_by_alias(model_name(built), "champion")
    assert version.tags["decision"] == "promoted"
    assert float(version.tags["metric.test_bpb"]) > 0
    run = client.get_run(version.run_id)
    assert "val_loss" in run.data.metrics and "test_bpb" in run.data.metrics
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.digest


def test_worse_challenger_does_not_take_champion(built, client):
    name = model_name(built)
    champion = client.get_model_version_by_alias(name, "champion")
    built.set_params({"train": {"max_steps": 2, "warmup_steps": 1, "eval_interval": 1}})
    built.run("dvc", "repro")
    challenger = client.get_model_version_by_alias(name, "challenger")
    assert int(challenger.version) > int(champion.version)
    assert client.get_model_version_by_alias(name, "champion").version == champion.version
    assert challenger.tags["decision"] == "kept_champion"
    assert float(challenger.tags["challenger_value"]) > float(challenger.tags["champion_value_before"])
    decision = json.loads((built.root / "metrics/register.json").read_text())
    assert decision["promoted"] is False and decision["champion_version"] == int(champion.version)


@pytest.fixture(scope="module")
def server(built):
    with built.serve(f"models:/{model_name(built)}@champion") as url:
        yield url


def test_served_champion_answers_a_prompt_over_http(server):
    body = {"dataframe_records": [{"prompt": "A function", "max_new_tokens": 10, "seed": 3, "temperature": 0.7}]}
    first = requests.post(f"{server}/invocations", json=body, timeout=60)
    assert first.status_code == 200, first.text
    predictions = first.json()["predictions"]
    assert isinstance(predictions[0]["text"], str) and predictions[0]["text"]
    again = requests.post(f"{server}/invocations", json=body, timeout=60).json()["predictions"]
    assert again == predictions
    only_prompt = requests.post(f"{server}/invocations", json={"dataframe_records": [{"prompt": "x"}]}, timeout=60)
    assert only_prompt.status_code == 200, only_prompt.text


@pytest.mark.parametrize("record, needle", [
    ({"prompt": "x", "max_new_tokens": 100000}, "max_new_tokens"),
    ({"prompt": "x", "temperature": -1.0}, "temperature"),
    ({"max_new_tokens": 5}, "prompt"),
    ({"prompt": 5}, "prompt"),  # wrong type
    ({"prompt": "x", "top_k": "many"}, "top_k"),
])
def test_bad_requests_get_http_400_naming_the_field_and_the_server_stays_up(server, record, needle):
    resp = requests.post(f"{server}/invocations", json={"dataframe_records": [record]}, timeout=60)
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["message"]
    assert requests.get(f"{server}/ping", timeout=5).status_code == 200


def test_a_body_that_is_not_json_gets_http_400_and_the_server_stays_up(server):
    resp = requests.post(f"{server}/invocations", data=b"{not json", headers={"Content-Type": "application/json"},
                         timeout=60)
    assert resp.status_code == 400, resp.text
    assert resp.json()["message"]
    assert requests.get(f"{server}/ping", timeout=5).status_code == 200


def stdlib_docstrings(min_chars: int = 200) -> list[str]:
    """Another English corpus that needs no network: the docstrings of standard-library functions and classes."""
    import importlib
    import inspect

    docs = set()
    for name in ("os", "json", "re", "pathlib", "collections", "itertools", "functools", "argparse", "logging",
                 "subprocess", "shutil", "tarfile", "zipfile", "datetime", "statistics", "decimal", "textwrap"):
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj)
            if doc and len(doc) >= min_chars:
                docs.add(doc)
    return sorted(docs)


def test_finetune_the_champion_on_another_corpus_through_dvc_repro(built, client):
    name = model_name(built)
    champion = client.get_model_version_by_alias(name, "champion")
    docs = stdlib_docstrings()
    assert len(docs) > 200
    inputs = built.root / "data/inputs/docstrings.jsonl"
    inputs.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    built.set_params({"ingest": {"sources": ["data/inputs/docstrings.jsonl"]},
                      "model": {"init_from": f"models:/{name}/{champion.version}",
                                "lora": {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["c_attn"]}},
                      "register": {"lora_export": "adapter"},
                      "train": {"max_steps": 20, "eval_interval": 10, "warmup_steps": 2}})
    built.run("dvc", "repro")

    meta = json.loads((built.root / "data/processed/meta.json").read_text())
    assert meta["tokenizer"] == f"models:/{name}/{champion.version}"  # the champion's tokenizer, not a new one
    decision = json.loads((built.root / "metrics/register.json").read_text())
    tuned = client.get_model_version(name, str(decision["version"]))
    assert tuned.tags["init_from"] == f"models:/{name}/{champion.version}"
    assert tuned.tags["lora"] == "adapter"
    trained = json.loads((built.root / "metrics/train.json").read_text())
    assert trained["n_params_trainable"] < 0.05 * trained["n_params"]
    assert "up to date" in built.run("dvc", "status").stdout

    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(f"models:/{name}/{tuned.version}")
    body = {"prompt": "Return the", "max_new_tokens": 8, "seed": 0}
    local = model.predict(pd.DataFrame([body]))["text"][0]
    with built.serve(f"models:/{name}/{tuned.version}") as url:  # base + adapter, served over HTTP
        resp = requests.post(f"{url}/invocations", json={"dataframe_records": [body]}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["predictions"][0]["text"] == local
