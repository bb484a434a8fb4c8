"""The pipeline as a Prefect flow: the same stage functions DVC runs, with DVC deciding what is stale.

Each task asks DVC whether its stage is up to date (content hashes of code, data and params against dvc.lock).
If it is, the task does nothing; otherwise it runs the stage function in-process and commits the stage, so
dvc.lock and DVC's cache end up exactly as after `dvc repro`, and `dvc status` is clean when the flow ends.
The DVC repository lock is held for the whole run, so a concurrent `dvc repro` stops at once instead of racing.

Run: `python -m flows.pipeline [path/to/params.yaml]`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, task

from tasks.params import PARAMS_FILE, Params, load_params

log = logging.getLogger("flows.pipeline")

STAGES = ("ingest", "clean", "preprocess", "train", "evaluate", "register")  # dvc.yaml order


def stage_function(name: str) -> Callable[[Params], dict]:
    """Return the stage body `tasks.<name>.<name>`."""
    import importlib

    return getattr(importlib.import_module(f"tasks.{name}"), name)


@task(name="stage", retries=0)
def run_stage(name: str, params_path: str) -> dict[str, Any]:
    """Run one stage if DVC considers it stale, then record it in dvc.lock; skip it otherwise."""
    from dvc.repo import Repo, lock_repo

    params = load_params(params_path)
    repo = Repo(str(params.root))
    with lock_repo(repo):
        if not repo.status(targets=[name]):
            log.info("%s: up to date, skipped", name)
            return {"stage": name, "ran": False}
        log.info("%s: stale, running", name)
        summary = stage_function(name)(params)
        repo.commit(name, force=True)
    return {"stage": name, "ran": True, "summary": summary}


@flow(name="genpipe-pipeline")
def pipeline(params_path: str = PARAMS_FILE) -> dict[str, bool]:
    """Run ingest → clean → preprocess → train → evaluate → register, skipping what DVC says is up to date."""
    params_path = str(Path(params_path).resolve())
    load_params(params_path)  # fail before any stage runs if params.yaml is invalid
    ran = {}
    for name in STAGES:
        ran[name] = run_stage.with_options(name=name)(name, params_path)["ran"]
    log.info("pipeline: ran %s", [n for n, r in ran.items() if r] or "nothing (all up to date)")
    return ran


def main(argv: list[str] | None = None) -> None:
    """Command line: run the flow; user errors end it with one line and a non-zero status."""
    import os

    from tasks.cli import DEBUG_ENV, setup_logging
    from tasks.errors import UserError

    setup_logging()
    argv = sys.argv[1:] if argv is None else argv
    try:
        pipeline(argv[0] if argv else PARAMS_FILE)
    except UserError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        sys.stderr.write(f"error: pipeline: {exc}\n")
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
