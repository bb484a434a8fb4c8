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
    assert isinstance(first[0]["text"], str) and first[0]["text"]
    assert first == again  # same seed, same text
    other = model.predict(request.assign(seed=8))
    assert len(other) == 1 and set(other[0]) == {"text"}
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
    body = {"inputs": [{"prompt": "A function", "max_new_tokens": 10, "seed": 3, "temperature": 0.7}]}
    first = requests.post(f"{server}/invocations", json=body, timeout=60)
    assert first.status_code == 200, first.text
    predictions = first.json()["predictions"]
    assert isinstance(predictions[0]["text"], str) and predictions[0]["text"]
    again = requests.post(f"{server}/invocations", json=body, timeout=60).json()["predictions"]
    assert again == predictions
    only_prompt = requests.post(f"{server}/invocations", json={"inputs": [{"prompt": "x"}]}, timeout=60)
    assert only_prompt.status_code == 200, only_prompt.text
    rows = [{"prompt": p, "max_new_tokens": 10, "seed": i, "top_p": 0.9} for i, p in enumerate(["x", "A longer prompt"])]
    batch = requests.post(f"{server}/invocations", json={"inputs": rows}, timeout=60)
    assert batch.status_code == 200, batch.text
    alone = [requests.post(f"{server}/invocations", json={"inputs": [r]}, timeout=60).json()["predictions"][0]
             for r in rows]
    assert batch.json()["predictions"] == alone  # generated together, each as it is alone


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "x", "max_new_tokens": 100000}], "field 'max_new_tokens': 100000 is invalid; expected an integer in "
                                                  "1..1024"),
    ([{"prompt": "x", "max_new_tokens": 2.7}], "field 'max_new_tokens': 2.7 is invalid; expected an integer in "
                                               "1..1024"),  # not truncated to 2
    ([{"prompt": "x", "temperature": -1.0}], "field 'temperature': -1.0 is invalid; expected a number in 0..100 "
                                             "(0 = greedy)"),
    ([{"prompt": "x", "temperature": True}], "field 'temperature': True is invalid; expected a number in 0..100 "
                                             "(0 = greedy)"),
    ([{"max_new_tokens": 5}], "field 'prompt' is required and must be a string"),
    ([{"prompt": 5}], "field 'prompt' is required and must be a string (got 5)"),
    ([{"prompt": "x", "top_k": "many"}], "field 'top_k': 'many' is invalid; expected an integer >= 0 (0 = off)"),
    ([{"prompt": "x", "seed": 2**70}], f"field 'seed': {2**70} is invalid; expected an integer in 0..2**63-1"),
    ([{"prompt": "x", "max_tokens": 5}], "field 'max_tokens' is unknown; allowed fields: prompt, max_new_tokens, "
                                         "temperature, top_k, top_p, repetition_penalty, stop, seed"),
    ([{"prompt": "x"}] * 257, "the request has 257 rows; at most 256 per request"),
    ([{"prompt": "x", "top_p": -0.5}], "field 'top_p': -0.5 is invalid; expected a number in (0, 1] (1 = off)"),
    ([{"prompt": "x", "stop": "\n"}], "field 'stop': '\\n' is invalid; expected a list of 1..8 non-empty strings of at "
                                      "most 64 characters"),
])
def test_bad_requests_get_http_400_with_one_line_naming_the_field_and_the_server_stays_up(server, rows, message):
    resp = requests.post(f"{server}/invocations", json={"inputs": rows}, timeout=60)
    assert resp.status_code == 400, resp.text
    assert resp.json()["message"] == message  # the line alone: no dump of the request before it
    assert requests.get(f"{server}/ping", timeout=5).status_code == 200


@pytest.fixture(scope="module")
def stream_server(built):
    """`python -m serving.stream` on the champion; yield its base URL once /ping answers."""
    import socket
    import subprocess
    import sys
    import time

    from tests.e2e.conftest import stop

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "serving.stream", "--model", f"models:/{model_name(built)}@champion",
                             "--port", str(port)], cwd=built.root, env=dict(built.env, MLFLOW_TRACKING_URI=built.tracking_uri()),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the streaming endpoint did not answer /ping within 120 s"
            time.sleep(0.5)
        yield url
    finally:
        stop(proc)


def test_the_streaming_endpoint_sends_the_text_as_events_while_it_is_generated(server, stream_server):
    url = stream_server
    row = {"prompt": "A function", "max_new_tokens": 24, "seed": 5, "temperature": 0.9}
    pieces, events = [], []
    with requests.post(f"{url}/stream", json={"inputs": [row]}, stream=True, timeout=120) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
            elif line.startswith("data: ") and not events:
                pieces.append(json.loads(line.removeprefix("data: "))["text"])
    assert events == ["done"] and len(pieces) > 1  # several events, then the end
    whole = requests.post(f"{server}/invocations", json={"inputs": [row]}, timeout=60).json()["predictions"]
    assert "".join(pieces) == whole[0]["text"]  # the same text as /invocations for the same seed
    bad = requests.post(f"{url}/stream", json={"inputs": [{"prompt": "x", "top_p": 2}]}, timeout=60)
    assert bad.status_code == 400
    assert bad.json()["message"] == "field 'top_p': 2 is invalid; expected a number in (0, 1] (1 = off)"
    assert requests.get(f"{url}/ping", timeout=5).status_code == 200


def readme_snippets(section: str = "## Using a trained model") -> list[str]:
    """The Python code blocks of one README section, in order."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    part = text[text.index(section):]
    part = part[: part.index("\n## ", len(section))]
    return [block.split("\n```", 1)[0] for block in part.split("```python\n")[1:]]


def test_every_snippet_of_using_a_trained_model_runs_as_written(built, server, stream_server):
    import subprocess
    import sys

    snippets = readme_snippets()
    assert len(snippets) >= 4  # pyfunc, HTTP, streaming, Hugging Face (ONNX when present)
    for code in snippets:  # as written, except the servers' ports and a renamed model
        code = code.replace("http://127.0.0.1:5001", server).replace("http://127.0.0.1:5003", stream_server)
        code = code.replace('"text-generator', f'"{model_name(built)}')
        done = subprocess.run([sys.executable, "-c", code], cwd=built.root, env=built.env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"{code}\n---\n{done.stderr[-3000:]}"
        if "print(" in code:
            assert done.stdout.strip(), code  # it printed the generated text


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
    local = model.predict(pd.DataFrame([body]))[0]["text"]
    with built.serve(f"models:/{name}/{tuned.version}") as url:  # base + adapter, served over HTTP
        resp = requests.post(f"{url}/invocations", json={"inputs": [body]}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["predictions"][0]["text"] == local
