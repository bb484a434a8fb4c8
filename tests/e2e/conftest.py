"""End-to-end fixtures: a copy of the project in a fresh git repository, driven through its real command lines."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# Small enough to train in seconds on 2 CPU cores, large enough to learn (it must beat the unigram baseline).
TINY = {
    "preprocess": {"vocab_size": 512},
    "model": {"gpt": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "dropout": 0.0}},
    "train": {"max_steps": 60, "batch_size": 8, "warmup_steps": 5, "eval_interval": 30, "eval_batches": 4,
              "log_interval": 10, "lr": 0.003},
    "evaluate": {"n_prompts": 4, "prompt_tokens": 16, "continuation_tokens": 8, "n_samples": 2, "sample_tokens": 16},
}
# Run outputs of a developer's checkout that a fresh clone does not have.
NOT_SOURCE = ("dvc.lock", "metrics/", "plots/")


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def project_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PREFECT_HOME": str(root / ".prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "tasks,flows,models,config,runtime,cli,dataprep,training,evaluation,registry,serving",
        "HF_HUB_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
    })
    env.pop("GENPIPE_DEBUG", None)
    return env


def stop(proc: subprocess.Popen) -> None:
    """Terminate a background process; kill it if it has not exited within 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


class Project:
    """A fresh clone-like copy of the repository with tiny params, and helpers to run commands in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = project_env(root)

    def run(self, *cmd: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    @property
    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    @property
    def model_name(self) -> str:
        """The registered model name, as the pipeline resolves it (params.yaml may leave it to the modality)."""
        from config.params import load_params

        return load_params(self.root / "params.yaml").register.model_name

    def set_params(self, overrides: dict) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(deep_merge(self.params, overrides), sort_keys=False))

    def flow(self) -> set[str]:
        """Run the Prefect flow and return the stages it executed (from its log)."""
        proc = self.run(sys.executable, "-m", "flows.pipeline")
        log = proc.stdout + proc.stderr
        assert "Finished in state Completed" in log, log[-3000:]
        return {line.split(" - ")[-1].split(":")[0] for line in log.splitlines() if ": stale, running" in line}

    def tracking_uri(self) -> str:
        return "sqlite:///" + str(self.root / "mlflow.db")

    @contextlib.contextmanager
    def serve(self, model_uri: str) -> Iterator[str]:
        """Run `mlflow models serve` on `model_uri`; yield its base URL once /ping answers."""
        import requests

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(self.env, MLFLOW_TRACKING_URI=self.tracking_uri())
        proc = subprocess.Popen(["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
                                 "--host", "127.0.0.1", "--port", str(port)],
                                cwd=self.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"mlflow models serve exited {proc.returncode}: {proc.stdout.read()[-3000:]}")
                try:
                    if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("mlflow models serve did not answer /ping within 120 s")
                time.sleep(0.5)
            yield url
        finally:
            stop(proc)


def make_project(tmp: Path) -> Project:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if rel.startswith(NOT_SOURCE) or not (REPO / rel).is_file():
            continue
        dst = tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dst)
    project = Project(tmp)
    project.set_params(TINY)
    project.run("git", "init", "-q")
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "fresh clone")
    return project


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Project:
    """A project on which `dvc repro` has run the whole default pipeline once."""
    project = make_project(tmp_path_factory.mktemp("project"))
    project.run("dvc", "repro")
    return project
