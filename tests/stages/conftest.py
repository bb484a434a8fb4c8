"""Fixtures of the stage tests: the tiny project with its data stages run, and MLflow isolated per test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest

from config.params import parse_params
from tasks.clean import clean
from tasks.ingest import ingest
from tasks.preprocess import preprocess

# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An sqlite file with MLflow's schema and nothing else: copying it saves each project the slow migrations."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def isolated_mlflow(monkeypatch):
    """No run or tracking URI leaks from one test into the next (MLflow keeps both in process-wide state)."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    before = tracking_utils._tracking_uri
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(before)


def prepare(root: Path, data: dict, empty_db: Path):
    """Run the data stages in `root` with the params `data` (as in params.yaml); return the typed params."""
    params = parse_params(json.loads(json.dumps(data)), root=root)
    ingest(params)
    clean(params)
    preprocess(params)
    shutil.copyfile(empty_db, root / "mlflow.db")
    return params


@pytest.fixture
def staged(project, empty_mlflow_db):
    """`staged(**overrides)`: the tiny project with params written and the data stages already run."""

    def make(**overrides):
        project.write_corpus()
        project.make_params(**overrides)
        return prepare(project.root, project.data, empty_mlflow_db)

    return make


