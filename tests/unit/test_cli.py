"""Every entry point answers --help with its usage and exits 0 without running anything; `genpipe` dispatches."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from config.params import STAGES
from runtime import PACKAGES

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = [f"tasks.{s}" for s in STAGES] + ["flows.pipeline", "flows.experiments", "flows.deploy",
                                                  "runtime.closure", "flows.genpipe", "cli.preflight",
                                                  "serving.stream", "serving.exports"]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_prints_usage_and_runs_nothing(module, tmp_path):
    # In an empty folder: no params.yaml, no data. Running anything would fail or write; --help must do neither.
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": str(Path(sys.executable).parent),
                                            "HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(tmp_path / ".prefect")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:") or module == "flows.genpipe", proc.stdout[:300]
    assert "--params" in proc.stdout or module in {"runtime.closure", "serving.stream", "serving.exports"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".prefect") == []


def test_a_stage_reads_the_params_file_it_is_given(tmp_path):
    bad = tmp_path / "elsewhere.yaml"
    bad.write_text("train: {max_steps: 0}\n")
    proc = subprocess.run([sys.executable, "-m", "tasks.train", "--params", str(bad)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: train: elsewhere.yaml: train.max_steps")


def test_genpipe_dispatches_and_refuses_unknown_commands(tmp_path):
    from flows.genpipe import COMMANDS

    ok = subprocess.run([sys.executable, "-m", "flows.genpipe", "ingest", "--help"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=120, env={"PYTHONPATH": str(ROOT)})
    assert ok.returncode == 0 and ok.stdout.startswith("usage: python -m tasks.ingest")
    bad = subprocess.run([sys.executable, "-m", "flows.genpipe", "trian"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(ROOT)})
    assert bad.returncode == 2
    assert bad.stderr == f"error: genpipe: unknown command 'trian'; allowed: {', '.join([*STAGES, *COMMANDS])}\n"


def test_the_installed_packages_are_the_project_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert tuple(project["tool"]["setuptools"]["packages"]) == PACKAGES
    assert {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name not in ("tests", "bench")} == set(PACKAGES)
    assert project["project"]["scripts"]["genpipe"] == "flows.genpipe:main"


def test_deploy_against_a_server_that_is_not_up_says_so_in_one_line(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    (tmp_path / "params.yaml").write_text("{}\n")
    env = {"PYTHONPATH": str(ROOT), "PATH": str(Path(sys.executable).parent), "HF_HUB_OFFLINE": "1",
           "PREFECT_HOME": str(tmp_path / ".prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_CLIENT_MAX_RETRIES": "0"}
    proc = subprocess.run([sys.executable, "-m", "flows.deploy"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: deploy: no Prefect server answers at http://127.0.0.1:{port}/api")
