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


REACH_TIMEOUT_S = 5.0


def check_reachable(cfg: RegisterParams, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Raise ParamsError within `timeout_s` when `register.tracking_uri` is an MLflow server that does not answer
    (MLflow's own client would retry for minutes first). Local stores (sqlite, file) need no check."""
    import urllib.error
    import urllib.request

    from runtime.errors import ParamsError

    uri = cfg.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as resp:
            resp.read(64)
    except urllib.error.HTTPError:
        return  # something answers (a proxy may guard /health): MLflow's client reports anything further
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ParamsError(f"register.tracking_uri: no MLflow server answers at {uri} within {timeout_s:g} s "
                          f"({reason}); start it, or use a local store such as sqlite:///mlflow.db") from None


def connect(cfg: RegisterParams) -> str:
    """Point MLflow at `register.tracking_uri` and return the id of `register.experiment_name` (created if new)."""
    import mlflow

    check_reachable(cfg)
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
