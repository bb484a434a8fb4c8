"""The pipeline as a Prefect flow: the same stage functions DVC runs, with DVC deciding what is stale.

Each task asks DVC whether its stage is up to date (content hashes of code, data and params against dvc.lock).
If it is, the task does nothing; otherwise it runs the stage function in-process and commits the stage, so
dvc.lock and DVC's cache end up exactly as after `dvc repro`, and `dvc status` is clean when the flow ends.
The DVC repository lock is held while a stage runs, so a concurrent `dvc repro` stops at once instead of racing.

Failure handling comes from params.yaml's `flow` section: per-stage time limits, and retries with exponential
backoff for ingest only when a network source is unreachable (a 404 or bad data is not retried). A failed stage
ends the flow run Failed with "<stage>: <reason>"; stage outputs are written atomically, so nothing half-written
is left for DVC or a later stage to accept.

Each run publishes a markdown artifact (key `genpipe-report`): the challenger's metrics beside the champion's,
the gate's decision, lineage and samples.

Run: `python -m flows.pipeline [--params path/to/params.yaml]` (or `genpipe flow`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, task

from config.params import PARAMS_FILE, STAGES, Params, load_params
from flows.errors import StageFailed, quiet_expected_errors, run_cli
from flows.slots import workspace_slot
from runtime.errors import UserError

log = logging.getLogger("flows.pipeline")


def stage_function(name: str) -> Callable[[Params], dict]:
    """Return the stage body `tasks.<name>.<name>`."""
    import importlib

    return getattr(importlib.import_module(f"tasks.{name}"), name)


def _retry_if_transient(task, task_run, state) -> bool:
    """Prefect retry condition: retry only failures that another attempt may fix."""
    try:
        state.result()
    except StageFailed as exc:
        return exc.transient
    except Exception:  # noqa: BLE001 (anything else is a bug or a time limit: retrying will not help)
        return False
    return False


@task(name="stage", retries=0, retry_condition_fn=_retry_if_transient)
def run_stage(name: str, params_path: str) -> dict[str, Any]:
    """Run one stage if DVC considers it stale, then record it in dvc.lock; skip it otherwise."""
    import contextlib

    from dvc.lock import LockError
    from dvc.repo import Repo, lock_repo

    from runtime.errors import SourceUnavailable
    from runtime.lock import Busy

    params = load_params(params_path)
    repo = Repo(str(params.root))
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(lock_repo(repo))
        except LockError:
            raise Busy(f"another run holds the lock on {params.root}: a DVC command (dvc repro, dvc exp run, ...) "
                       "is running in this workspace; wait for it to finish or stop it") from None
        if not repo.status(targets=[name]):
            log.info("%s: up to date, skipped", name)
            return {"stage": name, "ran": False}
        log.info("%s: stale, running", name)
        try:
            summary = stage_function(name)(params)
        except UserError as exc:
            raise StageFailed(name, str(exc), transient=isinstance(exc, SourceUnavailable)) from None
        repo.commit(name, force=True)
    return {"stage": name, "ran": True, "summary": summary}


def stage_task(name: str, params: Params):
    """`run_stage` with this stage's time limit and, for ingest, retries with exponential backoff."""
    from prefect.tasks import exponential_backoff

    options: dict[str, Any] = {"name": name, "timeout_seconds": params.flow.timeout(name)}
    if name == "ingest" and params.flow.ingest_retries:
        options.update(retries=params.flow.ingest_retries,
                       retry_delay_seconds=exponential_backoff(backoff_factor=params.flow.retry_delay_s))
    return run_stage.with_options(**options)


def publish_report(params: Params, ran: list[str]) -> str:
    """Publish the run report as a Prefect artifact (when running under Prefect) and return its markdown."""
    from prefect.artifacts import create_markdown_artifact

    from flows.report import ARTIFACT_KEY, model_versions, read_samples, report_markdown

    latest, champion = model_versions(params)
    challenger = latest if "register" in ran else None
    markdown = report_markdown(params.register.model_name, ran, challenger, champion, read_samples(params),
                               params.register.tracking_uri)
    create_markdown_artifact(markdown=markdown, key=ARTIFACT_KEY,
                             description=f"{params.register.model_name}: challenger vs champion")
    return markdown


@flow(name="genpipe-pipeline")
def pipeline(params_path: str = PARAMS_FILE) -> dict[str, bool]:
    """Run ingest → clean → preprocess → train → evaluate → register, skipping what DVC says is up to date."""
    quiet_expected_errors()
    params_path = str(Path(params_path).resolve())
    params = load_params(params_path)  # fail before any stage runs if params.yaml is invalid
    from cli.preflight import check_inputs
    from runtime.lock import run_lock

    check_inputs(params)  # before DVC hashes the inputs: a FIFO there would hang it

    ran = {}
    # A deployed run queues for the workspace slot (flows/slots.py); the lock then stops anything else at once.
    with workspace_slot(params.root), run_lock(params.root, "Prefect flow genpipe-pipeline"):
        for name in STAGES:
            try:
                ran[name] = stage_task(name, params)(name, params_path)["ran"]
            except TimeoutError:
                limit = params.flow.timeout(name)
                raise StageFailed(name, f"exceeded its time limit of {limit:g} s (flow.timeouts_s.{name}); "
                                        "a rerun resumes from the last checkpoint where the stage keeps one") from None
    names = [n for n, r in ran.items() if r]
    log.info("pipeline: ran %s", names or "nothing (all up to date)")
    publish_report(params, names)
    return ran


def main(argv: list[str] | None = None) -> None:
    """Command line: run the flow; a failed stage or bad params end it with one line and a non-zero status."""
    from cli.stage import parser_for

    parser = parser_for("python -m flows.pipeline", __doc__.split("\n\n")[0] + "\n\n" + pipeline.__doc__)
    parser.add_argument("params_path", nargs="?", default=None, metavar="PARAMS", help=argparse.SUPPRESS)
    parser.add_argument("--params", default=None, metavar="PATH", help="the params file (default: params.yaml here)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    path = args.params or args.params_path or PARAMS_FILE
    params = run_cli("pipeline", lambda: load_params(path))  # a missing or bad params file: one line, no Prefect
    from runtime.lock import ensure_free

    run_cli("pipeline", lambda: ensure_free(params.root))  # a busy workspace: one line before Prefect starts up
    run_cli("pipeline", lambda: pipeline(path))


if __name__ == "__main__":
    main()
