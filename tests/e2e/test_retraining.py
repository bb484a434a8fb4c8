"""Retraining operations on a fresh copy of the project: Prefect deployments on a real `prefect server start`,
data-change retraining decided by DVC, failures that leave nothing valid, and a sweep of DVC experiments."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from config.params import load_params
from registry.lineage import lock_digest
from tests.e2e.conftest import Project, make_project, stop

pytestmark = pytest.mark.e2e

EXTRA = "data/inputs/notes.txt"
EXTRA_TEXT = ("Retraining notes. The pipeline reruns only what changed: DVC compares content hashes of code, data "
              "and params with dvc.lock, and the flow skips every stage that is up to date.\n\n") * 20
EVERY_MINUTE = "* * * * *"
SCHEDULER_ERRORS = ("Traceback", "InvalidRequestError", "Error in scheduler", "bulk DML")
ALL = {"ingest", "clean", "preprocess", "classifier", "train", "evaluate", "register"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Project:
    """A committed project whose corpus is the embedded one plus a local file under data/inputs (watched by DVC)."""
    project = make_project(tmp_path_factory.mktemp("retrain"))
    # Every minute: the deployment test waits for the server's scheduler to create and the serve process to run one.
    project.set_params({"ingest": {"sources": ["embedded:pydoc", "data/inputs"]}, "flow": {"cron": EVERY_MINUTE}})
    (project.root / EXTRA).write_text(EXTRA_TEXT, encoding="utf-8")
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "corpus: embedded + notes")
    return project


@contextlib.contextmanager
def background(cmd: list[str], project: Project, env: dict, log: Path) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=project.root, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            stop(proc)


def wait_until(check, what: str, timeout: float, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            value = check()
            if value:
                return value
        time.sleep(1)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    pytest.fail(f"{what} not reached within {timeout:.0f} s\n{tail}")


def registry(project: Project):
    import mlflow

    mlflow.set_tracking_uri(project.tracking_uri())
    return mlflow.MlflowClient()


def final(api: str, run_id: str) -> dict | None:
    state = requests.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"]
    return state if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None


def scheduled_runs(api: str, deployment_id: str) -> list[dict]:
    """The runs of a deployment that the server's scheduler created (not triggered by hand), earliest first."""
    runs = requests.post(f"{api}/flow_runs/filter", timeout=10, json={
        "flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_ASC"})
    runs.raise_for_status()
    return [r for r in runs.json() if r["auto_scheduled"]]


def create_run(api: str, deployment_id: str, parameters: dict) -> requests.Response:
    """Ask the server for a run of a deployment. A 5xx answer (the server's SQLite busy while a flow writes to it
    on a two-core machine) is retried a few times; any other answer is returned as it is."""
    for attempt in range(5):
        answer = requests.post(f"{api}/deployments/{deployment_id}/create_flow_run", timeout=30,
                               json={"parameters": parameters})
        if answer.status_code < 500:
            return answer
        time.sleep(2 * (attempt + 1))
    return answer


def created(answer: requests.Response) -> dict:
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def test_deployments_on_a_real_prefect_server_run_on_schedule_and_tag_lineage(proj, tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server_env = {k: v for k, v in proj.env.items() if k != "PREFECT_API_URL"}
    server_env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    client_env = dict(proj.env, PREFECT_API_URL=api, COLUMNS="250")  # wide enough that rich does not wrap names
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    with background(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], proj, server_env,
                    server_log):
        wait_until(lambda: requests.get(f"{api}/health", timeout=2).ok, "prefect server health", 180, server_log)
        names = ("genpipe-pipeline/retrain", "genpipe-experiment/train-on-demand", "genpipe-sweep/sweep")
        with background([sys.executable, "-m", "flows.deploy"], proj, client_env, serve_log) as serving:
            # `serve` applies the deployments one at a time: wait until the CLI lists all three.
            wait_until(lambda: (out := subprocess.run(["prefect", "deployment", "ls"], env=client_env,
                                                      capture_output=True, text=True, cwd=proj.root, check=False)
                                ).returncode == 0 and all(n in out.stdout for n in names),
                       "deployments applied", 120, serve_log)
            retrain = requests.get(f"{api}/deployments/name/genpipe-pipeline/retrain", timeout=10).json()
            crons = [s["schedule"].get("cron") for s in retrain["schedules"]]
            assert crons == [EVERY_MINUTE]
            # Overlapping retrains queue instead of failing Busy.
            assert retrain["global_concurrency_limit"]["limit"] == 1
            assert retrain["concurrency_options"]["collision_strategy"] == "ENQUEUE"

            # A bad generator is refused by the deployment's parameter schema before any run exists.
            demand = requests.get(f"{api}/deployments/name/genpipe-experiment/train-on-demand", timeout=10).json()
            refused = create_run(api, demand["id"], {"generator": "transformer"})
            assert refused.status_code in (409, 422), refused.text

            # A misspelt override is refused by the params schema: the run fails, naming the key.
            bad = created(create_run(api, demand["id"], {"overrides": {"train.max_stepz": 5}}))

            # Nobody triggers the retrain: the server's scheduler creates its runs from the cron schedule, and the
            # serve process executes the first one when it comes due (within a minute).
            run = wait_until(lambda: (runs := scheduled_runs(api, retrain["id"])) and runs[0], "a scheduled run",
                             120, server_log)
            # A valid on-demand run started while the retrain runs queues for the workspace slot, then completes.
            wait_until(lambda: requests.get(f"{api}/flow_runs/{run['id']}", timeout=10).json()["state"]["type"]
                       == "RUNNING", "the scheduled run running", 180, serve_log)
            queued = created(create_run(api, demand["id"],
                                        {"overrides": {"train.max_steps": 20, "train.eval_interval": 10}}))
            bad_state = wait_until(lambda: final(api, bad["id"]), "on-demand run finished", 300, serve_log)
            assert bad_state["type"] == "FAILED"
            assert "train.max_stepz: unknown key" in bad_state["message"]
            state = wait_until(lambda: final(api, run["id"]), "scheduled retrain run finished", 900, serve_log)
            assert state["type"] == "COMPLETED", (state, serve_log.read_text()[-4000:])
            artifacts = requests.post(f"{api}/artifacts/filter", timeout=10,
                                      json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}).json()
            queued_state = wait_until(lambda: final(api, queued["id"]), "queued on-demand run finished", 900, serve_log)
            assert queued_state["type"] == "COMPLETED", (queued_state, serve_log.read_text()[-4000:])
            logged = [log["message"] for log in requests.post(f"{api}/logs/filter", timeout=10, json={
                "logs": {"flow_run_id": {"any_": [queued["id"]]}}, "sort": "TIMESTAMP_ASC"}).json()]
            assert any("slot" in m and "acquired after" in m for m in logged), (logged[:20], serve_log.read_text()[-4000:])
            finished = {r: requests.get(f"{api}/flow_runs/{r}", timeout=10).json()["end_time"]
                        for r in (run["id"], queued["id"])}
            assert finished[queued["id"]] > finished[run["id"]]  # it waited for the retrain to end
            # Let a retrain that came due meanwhile (enqueued behind the first, then a no-op) finish before stopping.
            wait_until(lambda: not requests.post(f"{api}/flow_runs/filter", timeout=10, json={"flow_runs": {
                "state": {"type": {"any_": ["RUNNING", "PENDING"]}}}}).json(), "no run in progress", 300, serve_log)
        assert serving.returncode is not None

        # Stopping the serve process left the schedule active: the nightly retrain is not silently paused.
        after = requests.get(f"{api}/deployments/{retrain['id']}", timeout=10).json()
        assert after["paused"] is False
        assert [s["active"] for s in after["schedules"]] == [True]
    scheduler_log = [line for line in server_log.read_text().splitlines() if any(e in line for e in SCHEDULER_ERRORS)]
    assert not scheduler_log, "\n".join(scheduler_log[:20])

    # The run registered a version carrying its lineage, and left DVC's view clean.
    name = proj.model_name
    mv = registry(proj).get_model_version_by_alias(name, "champion")
    assert mv.tags["prefect_flow_run_id"] == run["id"]
    assert mv.tags["git_commit"] == proj.run("git", "rev-parse", "HEAD").stdout.strip()
    assert mv.tags["dvc_lock_sha256"] == lock_digest(yaml.safe_load((proj.root / "dvc.lock").read_text()))
    assert mv.tags["data_sha256"] == json.loads((proj.root / "metrics/ingest.json").read_text())["corpus_sha256"]
    assert "up to date" in proj.run("dvc", "status").stdout
    reports = [a for a in artifacts if a["key"] == "genpipe-report"]
    assert len(reports) == 1
    report = reports[0]["data"]
    assert f"challenger v{mv.version}" in report and "**Decision: promoted**" in report
    assert "test_bpb ◀ gate" in report and run["id"] in report
    uri = load_params(proj.root / "params.yaml").register.tracking_uri  # sqlite: how to open the MLflow UI on it
    assert f"run `mlflow ui --backend-store-uri {uri}`" in report
    assert f"#/models/{name}/versions/{mv.version}>" in report and f"/runs/{mv.run_id}>" in report
    bars = {a["key"]: a for a in artifacts if a["type"] == "progress"}  # the Prefect UI's progress bars
    assert bars["genpipe-train-progress"]["data"] == 100.0, bars
    assert bars["genpipe-train-progress"]["description"].startswith(f"train: {proj.params['train']['max_steps']}/")


def test_changed_raw_data_reruns_ingest_onward_and_a_param_only_its_readers(proj):
    if not (proj.root / "dvc.lock").exists():
        proj.run("dvc", "repro")
    assert proj.flow() == set()
    (proj.root / EXTRA).write_text(EXTRA_TEXT + "A new paragraph arrived with the nightly export.\n" * 30)
    assert proj.flow() == ALL
    proj.set_params({"train": {"max_steps": 50}})
    assert proj.flow() == {"preflight", "train", "evaluate", "register"}  # preflight checks every params key
    assert "up to date" in proj.run("dvc", "status").stdout
    name = proj.model_name
    versions = registry(proj).search_model_versions(f"name='{name}'")
    assert len({v.tags["data_sha256"] for v in versions}) == 2  # the data change is visible in the lineage


@contextlib.contextmanager
def http_404() -> Iterator[str]:
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/corpus.txt"
    finally:
        server.shutdown()


def failed_flow(project: Project) -> tuple[list[str], str]:
    proc = project.run(sys.executable, "-m", "flows.pipeline", check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr.split("Finished in state Failed")[-1]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    return errors, log


def test_unreachable_source_fails_the_run_after_the_configured_retries_leaving_nothing_valid(proj):
    url = f"http://127.0.0.1:{free_port()}/corpus.txt"  # nothing listens there
    proj.set_params({"ingest": {"sources": [url]}, "flow": {"ingest_retries": 2, "retry_delay_s": 0.1}})
    errors, log = failed_flow(proj)
    assert len(errors) == 1 and errors[0].startswith(f"error: pipeline: ingest: source '{url}': could not fetch")
    assert log.count("ingest: stale, running") == 3  # the first attempt and two retries
    assert "Finished in state Failed" in log
    status = proj.run("dvc", "status").stdout
    assert "ingest" in status and "up to date" not in status

    with http_404() as missing:  # a 404 will not fix itself: no retry
        proj.set_params({"ingest": {"sources": [missing]}})
        errors, log = failed_flow(proj)
    assert errors == [f"error: pipeline: ingest: source '{missing}': HTTP 404 Not Found"]
    assert log.count("ingest: stale, running") == 1


def test_a_stage_over_its_time_limit_fails_the_run_and_the_rerun_completes(proj):
    proj.set_params({"ingest": {"sources": ["embedded:pydoc", "data/inputs"]}})
    proj.flow()  # back to a clean state
    proj.set_params({"train": {"max_steps": 400}, "flow": {"timeouts_s": {"train": 2}}})
    errors, _ = failed_flow(proj)
    assert errors[0].startswith("error: pipeline: train: exceeded its time limit of 2 s (flow.timeouts_s.train)")
    status = proj.run("dvc", "status").stdout
    assert "train" in status and "up to date" not in status
    proj.set_params({"train": {"max_steps": 60}, "flow": {"timeouts_s": {"train": None}}})
    assert "train" in proj.flow()
    assert "up to date" in proj.run("dvc", "status").stdout


def test_sweep_runs_dvc_experiments_into_one_mlflow_experiment_and_makes_the_best_challenger(proj):
    proj.run("git", "add", "-A")
    proj.run("git", "commit", "-qm", "baseline for the sweep")
    params_before = (proj.root / "params.yaml").read_text()
    sets = [{"train.max_steps": 20}, {"train.max_steps": 40, "train.lr": 0.005}, {"model.name": "gru",
            "model.gru.n_hidden": 64, "model.gru.n_layer": 1, "train.max_steps": 30}]
    proc = proj.run(sys.executable, "-m", "flows.experiments", json.dumps(sets))
    log = proc.stdout + proc.stderr
    assert "Finished in state Completed" in log

    shown = json.loads(proj.run("dvc", "exp", "show", "--json").stdout)
    exps = {rev["name"]: rev["data"] for entry in shown for e in (entry.get("experiments") or [])
            for rev in e["revs"] if rev.get("name")}
    ours = {n: d for n, d in exps.items() if d["params"]["params.yaml"]["data"]["register"]["promote"] == "never"}
    assert len(ours) == 3
    assert {d["params"]["params.yaml"]["data"]["model"]["name"] for d in ours.values()} == {"gpt", "gru"}

    client = registry(proj)
    name = proj.model_name
    versions = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get("dvc_experiment") in ours]
    assert len(versions) == 3
    assert len({client.get_run(v.run_id).info.experiment_id for v in versions}) == 1
    best = min(versions, key=lambda v: float(v.tags["metric.test_bpb"]))
    assert client.get_model_version_by_alias(name, "challenger").version == best.version
    assert best.tags["decision"] in ("promoted", "kept_champion", "not_significant") and best.tags["decision_rule"]
    assert {v.tags["decision"] for v in versions if v.version != best.version} == {"not_gated"}
    # The workspace is untouched: same params, and DVC still finds it up to date.
    assert (proj.root / "params.yaml").read_text() == params_before
    assert "up to date" in proj.run("dvc", "status").stdout


def test_a_sweep_with_a_misspelt_key_stops_before_running_anything(proj):
    proc = proj.run(sys.executable, "-m", "flows.experiments", json.dumps([{"train.lr": 0.001}, {"train.lr_": 1}]),
                    check=False)
    assert proc.returncode == 2
    assert "error: sweep: param set 2 {\"train.lr_\": 1}: params.yaml: train.lr_: unknown key" in proc.stderr
    assert "dvc exp run" not in proc.stdout + proc.stderr
