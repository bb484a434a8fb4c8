"""`dvc repro`, `dvc exp run` and the Prefect flow on a fresh copy of the project: one cache of record."""

from __future__ import annotations

import json
import sys

import pytest
import requests
import yaml

pytestmark = pytest.mark.e2e

ALL_STAGES = {"preflight", "ingest", "clean", "preprocess", "classifier", "train", "evaluate", "register"}


def test_repro_trains_a_model_that_beats_the_unigram_baseline(built):
    metrics = json.loads((built.root / "metrics/evaluate.json").read_text())
    assert metrics["test_bpb"] < 0.8 * metrics["test_unigram_bpb"]
    assert metrics["test_perplexity"] > 1
    samples = (built.root / "artifacts/evaluate/samples.jsonl").read_text().splitlines()
    assert len(samples) == 2 and all(json.loads(s)["text"] for s in samples)
    assert "up to date" in built.run("dvc", "status").stdout


def test_plots_show_the_loss_every_log_interval_and_the_samples(built):
    params = yaml.safe_load((built.root / "params.yaml").read_text())["train"]
    plots = json.loads(built.run("dvc", "plots", "show", "--json").stdout)
    assert not plots.get("errors"), plots.get("errors")
    rows = plots["data"]["loss"][0]["content"]["data"]["values"]
    train = [r["step"] for r in rows if r["filename::field"] == "train_steps.json::train_loss"]
    val = [r["step"] for r in rows if r["filename::field"] == "train.json::val_loss"]
    assert len(train) == -(-params["max_steps"] // params["log_interval"]) > len(val) > 0  # one per log interval
    assert plots["data"]["plots/evaluate/samples.png"][0]["type"] == "image"  # the text samples, rendered


def test_second_repro_runs_nothing(built):
    out = built.run("dvc", "repro").stdout
    assert "Running stage" not in out
    for stage in ALL_STAGES:
        assert f"Stage '{stage}' didn't change" in out


def stale_stages(project) -> set[str]:
    status = json.loads(project.run("dvc", "status", "--json").stdout)
    return set(status)


@pytest.mark.parametrize("library_file", ["dataprep/pii.py", "evaluation/memorization.py", "training/checkpoint.py",
                                          "registry/gate.py", "config/catalog.py", "models/vae.py"])
def test_editing_a_library_file_makes_exactly_the_stages_that_import_it_stale(built, library_file):
    from runtime.closure import ROOT, closure

    importers = {s for s in ALL_STAGES if ROOT / library_file in closure(f"tasks.{s}")}
    assert importers, library_file
    path = built.root / library_file
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# an edit\n")
        assert stale_stages(built) == importers
    finally:
        path.write_bytes(original)
    assert "up to date" in built.run("dvc", "status").stdout


def test_flow_after_repro_reexecutes_no_stage(built):
    assert built.flow() == set()
    assert "up to date" in built.run("dvc", "status").stdout


def test_flow_reruns_exactly_the_stages_a_param_change_affects(built):
    built.set_params({"evaluate": {"n_samples": 3}})
    assert built.flow() == {"preflight", "evaluate", "register"}  # preflight checks every params key
    assert "up to date" in built.run("dvc", "status").stdout
    lock = yaml.safe_load((built.root / "dvc.lock").read_text())
    assert lock["stages"]["evaluate"]["params"]["params.yaml"]["evaluate"]["n_samples"] == 3

    built.set_params({"preprocess": {"vocab_size": 500}})
    assert built.flow() == {"preflight", "preprocess", "classifier", "train", "evaluate", "register"}

    # No document is near a million characters: clean reruns, its output is byte-identical, and DVC's content
    # hashes stop the change there.
    built.set_params({"clean": {"max_chars": 999_999}})
    assert built.flow() == {"preflight", "clean"}
    assert "up to date" in built.run("dvc", "status").stdout


def test_exp_run_with_a_set_param_is_listed_by_exp_show(built):
    built.run("git", "add", "-A")
    built.run("git", "commit", "-qm", "baseline")
    built.run("dvc", "exp", "run", "-S", "train.max_steps=20", "-n", "short")
    shown = json.loads(built.run("dvc", "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    assert "short" in text and "test_bpb" in text and "max_steps" in text


def test_a_bad_value_in_exp_run_stops_at_preflight_and_keeps_every_output(built):
    built.run("git", "checkout", "--", "params.yaml")
    built.run("dvc", "repro")
    outputs = {p: p.stat().st_mtime_ns for p in (built.root / "artifacts/train").rglob("*") if p.is_file()}
    assert outputs
    proc = built.run("dvc", "exp", "run", "-S", "train.lr=-1", check=False, timeout=120)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Running stage 'train'" not in out and "Traceback" not in out
    line = next(x for x in out.splitlines() if x.startswith("error: "))
    assert line.startswith("error: preflight: params.yaml: train.lr: Input should be greater than 0 (got -1)")
    assert line.endswith("fix the value or run `git checkout params.yaml`)")  # DVC left the override in the file
    assert {p: p.stat().st_mtime_ns for p in outputs if p.exists()} == outputs  # train's outputs are untouched
    built.run("git", "checkout", "--", "params.yaml")
    assert "up to date" in built.run("dvc", "status").stdout


def test_lstm_on_characters_trains_registers_and_generates(built):
    built.run("dvc", "exp", "run", "-n", "lstm-char", "-S", "model.name=lstm", "-S", "preprocess.tokenizer=char",
              "-S", "model.lstm.n_layer=1", "-S", "model.lstm.n_hidden=128", "-S", "model.lstm.block_size=64",
              "-S", "train.max_steps=150")
    metrics = json.loads((built.root / "metrics/evaluate.json").read_text())
    assert metrics["test_bpb"] < 0.8 * metrics["test_unigram_bpb"]
    assert json.loads((built.root / "metrics/preprocess.json").read_text())["vocab_size"] < 300  # characters
    shown = json.dumps(json.loads(built.run("dvc", "exp", "show", "--json").stdout))
    assert "lstm-char" in shown

    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(built.tracking_uri())
    name = built.model_name
    version = json.loads((built.root / "metrics/register.json").read_text())["version"]
    assert mlflow.MlflowClient().get_model_version(name, str(version)).tags["generator"] == "lstm"
    body = {"prompt": "The ", "max_new_tokens": 30, "seed": 1}
    text = mlflow.pyfunc.load_model(f"models:/{name}/{version}").predict(pd.DataFrame([body]))[0]["text"]
    assert isinstance(text, str) and 0 < len(text) <= 30  # one character per token (end-of-text is not shown)
    with built.serve(f"models:/{name}/{version}") as url:
        resp = requests.post(f"{url}/invocations", json={"inputs": [body]}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["predictions"][0]["text"] == text


def test_missing_source_fails_with_one_line_and_nothing_valid_left(built):
    built.set_params({"ingest": {"sources": ["no/such/dir/*.txt"]}})
    proc = built.run("dvc", "repro", check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ingest:")]
    assert errors == ["error: ingest: source 'no/such/dir/*.txt': the glob matches no .txt, .md or .jsonl files"]
    assert "Traceback" not in proc.stderr
    status = built.run("dvc", "status").stdout
    assert "ingest" in status and "up to date" not in status  # nothing DVC would take as the new valid output


def test_bad_params_stop_the_flow_with_exit_code_2(built):
    built.set_params({"ingest": {"sources": ["embedded:pydoc"]}, "model": {"name": "transformer-xl"}})
    proc = built.run(sys.executable, "-m", "flows.pipeline", check=False)
    assert proc.returncode == 2
    assert "error: pipeline: params.yaml: model.name: 'transformer-xl' is not allowed; allowed values: 'gpt', 'lstm', " \
        "'gru', 'dcgan', 'cdcgan', 'vae' or 'ddpm'" in proc.stderr


def test_a_named_pipe_in_the_inputs_stops_make_run_and_the_flow_in_one_line_instead_of_hanging_dvc(built):
    import os

    built.run("git", "checkout", "--", "params.yaml")  # the committed params (an earlier test left bad ones)
    built.run("dvc", "repro")  # and the outputs DVC deleted for a failed stage, from the run cache
    fifo = built.root / "data/inputs/pipe.txt"
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    try:
        for cmd in ([sys.executable, "-m", "cli.preflight"], [sys.executable, "-m", "flows.pipeline"]):
            proc = built.run(*cmd, check=False, timeout=120)  # without the check, DVC blocks reading the pipe
            assert proc.returncode == 1, proc.stderr[-3000:]
            assert "data/inputs/pipe.txt is a named pipe (FIFO)" in proc.stderr and "Traceback" not in proc.stderr
        assert "python -m cli.preflight" in (built.root / "Makefile").read_text().split("\nrun:")[1].split("\n\n")[0]
    finally:
        fifo.unlink()
    assert "up to date" in built.run("dvc", "status").stdout  # nothing ran, nothing changed


def test_register_prints_no_colour_codes_duplicated_warnings_or_download_bars(built):
    built.run("git", "checkout", "--", "params.yaml")  # the committed params and outputs (earlier tests vary them)
    built.run("dvc", "repro")
    proc = built.run("dvc", "repro", "-f", "-s", "register")  # logs, registers and validates the model again
    out = proc.stdout + proc.stderr
    assert "Running stage 'register'" in out
    for noise in ("\x1b[", "Add type hints", "Downloading artifacts", "Traceback"):
        assert noise not in out, (noise, out[-3000:])
