"""Where a registered model came from: git commit, the dvc.lock entries of the stages that made it, the Prefect
flow run (when Prefect ran it). Recorded as tags on the MLflow run and model version."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

UPSTREAM = ("ingest", "clean", "preprocess", "train", "evaluate")  # the stages whose outputs make a model
PREFECT_RUN_ENV = "PREFECT__FLOW_RUN_ID"  # Prefect's own variable for the flow run a process belongs to


def lock_digest(lock: dict | None, stages: tuple[str, ...] = UPSTREAM) -> str:
    """Return the sha256 of the dvc.lock entries (cmd, deps, params, outs with their hashes) of `stages`.

    Two models with the same digest were built from the same code, data and params. "none" when a stage has no
    entry (it never completed under DVC).
    """
    entries = (lock or {}).get("stages", {})
    if any(name not in entries for name in stages):
        return "none"
    canonical = json.dumps({name: entries[name] for name in stages}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def prefect_flow_run_id() -> str | None:
    """Return the id of the Prefect flow run this code runs in, or None outside Prefect."""
    if "prefect" in sys.modules:  # in-process task: ask Prefect's context (never import Prefect just for this)
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        if ctx is not None and ctx.flow_run is not None:
            return str(ctx.flow_run.id)
    return os.environ.get(PREFECT_RUN_ENV) or None  # a stage process started by a flow (e.g. `dvc exp run`)


def lineage_tags(root: Path) -> dict[str, str]:
    """Return the lineage tags for a model built in the project at `root`."""
    lock_file = Path(root) / "dvc.lock"
    lock = yaml.safe_load(lock_file.read_text()) if lock_file.is_file() else None
    commit = _git(root, "rev-parse", "HEAD")
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    tags = {"git_commit": commit or "none",
            "git_dirty": "unknown" if dirty is None else str(bool(dirty)).lower(),
            "dvc_lock_sha256": lock_digest(lock)}
    run_id = prefect_flow_run_id()
    if run_id:
        tags["prefect_flow_run_id"] = run_id
    if os.environ.get("DVC_EXP_NAME"):  # set by DVC for the stages of `dvc exp run`
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    return tags
