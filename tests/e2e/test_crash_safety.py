"""Crash safety through the real command lines: `dvc repro` killed with SIGKILL inside each stage, then rerun,
completes and leaves `dvc status` clean; a flow started while `dvc repro` runs stops at once; the registry stays
consistent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from config.params import STAGES
from runtime.lock import LOCK_FILE
from tests.e2e.conftest import make_project

pytestmark = pytest.mark.e2e


def holder(root) -> str:
    try:
        return json.loads((root / LOCK_FILE).read_text() or "{}").get("what", "")
    except (OSError, ValueError):
        return ""


def start_repro(project, *args: str) -> subprocess.Popen:
    return subprocess.Popen(["dvc", "repro", *args], cwd=project.root, env=project.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def kill_during(project, stage: str, proc: subprocess.Popen, delay: float = 0.3, timeout: float = 300) -> bool:
    """Wait until `stage` holds the workspace lock, let it run `delay` s, then SIGKILL dvc and every child.
    Return False if the run finished before the stage was seen."""
    deadline = time.monotonic() + timeout
    while not holder(project.root).startswith(f"stage {stage} "):
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"stage {stage} did not start within {timeout} s"
        time.sleep(0.01)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    proj = make_project(tmp_path_factory.mktemp("crash"))
    proj.set_params({"train": {"max_steps": 120}})
    proj.run("git", "commit", "-qam", "longer training, so a kill lands inside it")
    return proj


# preflight, and on text data the classifier stage, only write a note, in milliseconds: too short a window to kill
# them inside.
@pytest.mark.parametrize("stage", [s for s in STAGES if s not in {"preflight", "classifier"}])
def test_sigkill_inside_a_stage_then_rerun_completes_and_status_is_clean(project, stage):
    proc = start_repro(project, "--force")  # every stage runs, so the run reaches `stage`
    # ingest of the embedded corpus takes about a tenth of a second: kill it as soon as it holds the lock, so the
    # kill lands inside the stage and not in DVC's own bookkeeping after it (DVC's rwlock is not kill-safe).
    delay = 0.0 if stage == "ingest" else 0.1
    assert kill_during(project, stage, proc, delay=delay), f"the run ended before {stage} started"
    assert proc.returncode == -signal.SIGKILL
    rerun = project.run("dvc", "repro", timeout=900)
    assert "Traceback" not in rerun.stderr
    status = project.run("dvc", "status").stdout
    assert "up to date" in status, status
    metrics = json.loads((project.root / "metrics/register.json").read_text())
    import mlflow

    mlflow.set_tracking_uri(project.tracking_uri())
    client = mlflow.MlflowClient()
    name = "text-generator"
    champion = client.get_model_version_by_alias(name, "champion")
    assert mlflow.pyfunc.load_model(f"models:/{name}/{champion.version}") is not None  # complete artifacts
    assert metrics["version"] >= int(champion.version)


def test_a_flow_started_during_dvc_repro_stops_at_once_and_repro_completes(project):
    project.set_params({"evaluate": {"n_samples": 3}, "train": {"max_steps": 121}})
    proc = start_repro(project)
    deadline = time.monotonic() + 300
    while not holder(project.root).startswith("stage train "):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    flow = project.run(sys.executable, "-m", "flows.pipeline", check=False)
    assert flow.returncode != 0
    assert "another run holds the lock" in flow.stderr, flow.stderr[-2000:]
    assert time.monotonic() - started < 60  # stops at once (the temporary Prefect server takes a few seconds)
    assert proc.wait(timeout=900) == 0  # the first run is not disturbed
    assert "up to date" in project.run("dvc", "status").stdout
    import mlflow

    mlflow.set_tracking_uri(project.tracking_uri())
    client = mlflow.MlflowClient()
    versions = client.search_model_versions("name='text-generator'")
    for v in versions:  # the registry is intact: every version and the champion load
        assert mlflow.pyfunc.load_model(f"models:/text-generator/{v.version}") is not None
    assert client.get_model_version_by_alias("text-generator", "champion").version in {v.version for v in versions}


def test_sigkill_inside_the_image_classifier_stage_then_rerun_completes(tmp_path_factory):
    """On image data the classifier stage trains a network for seconds: killed inside it, the rerun completes."""
    proj = make_project(tmp_path_factory.mktemp("crash-images"))
    train = {"max_steps": 4, "batch_size": 16, "eval_interval": 2, "eval_batches": 1, "warmup_steps": 0}
    proj.set_params({"model": {"name": "vae", "vae": {"latent_dim": 4, "base_channels": 8, "train": train}},
                     "classifier": {"steps": 400, "width": 8, "feature_dim": 16},
                     "evaluate": {"n_images": 50, "kid_subset_size": 20}})
    proj.run("git", "commit", "-qam", "tiny image settings")
    proc = start_repro(proj)
    assert kill_during(proj, "classifier", proc, delay=1.0), "the run ended before the classifier started"
    assert proc.returncode == -signal.SIGKILL
    assert not (proj.root / "artifacts/classifier/classifier.safetensors").exists()  # nothing half-written kept
    proj.run("dvc", "repro", timeout=900)
    assert "up to date" in proj.run("dvc", "status").stdout
    assert json.loads((proj.root / "metrics/classifier.json").read_text())["task"] == "labels"
