"""The MLflow connection shared by the stages that log (train and register)."""

from __future__ import annotations

import contextlib
import logging

from config.params import RegisterParams

log = logging.getLogger(__name__)


SQLITE_PREFIX = "sqlite:///"


def use_wal(tracking_uri: str) -> None:
    """Switch a SQLite tracking store to write-ahead logging (persistent in the file), so that readers never block
    the writer and concurrent runs wait for each other (MLflow sets a 20 s busy timeout) instead of failing with
    "database is locked"."""
    import sqlite3

    if not tracking_uri.startswith(SQLITE_PREFIX):
        return
    with contextlib.closing(sqlite3.connect(tracking_uri.removeprefix(SQLITE_PREFIX), timeout=30)) as db:
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            db.execute("PRAGMA journal_mode=WAL")


def connect(cfg: RegisterParams) -> str:
    """Point MLflow at `register.tracking_uri` and return the id of `register.experiment_name` (created if new)."""
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(cfg.experiment_name)  # creates the store on first use
    use_wal(cfg.tracking_uri)
    if exp is not None:
        return exp.experiment_id
    cfg.artifacts_dir.mkdir(parents=True, exist_ok=True)
    return client.create_experiment(cfg.experiment_name, artifact_location=cfg.artifacts_dir.resolve().as_uri())


def run_exists(run_id: str | None) -> bool:
    """Return whether `run_id` names a run in the connected tracking store."""
    import mlflow

    if not run_id:
        return False
    try:
        mlflow.MlflowClient().get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False
