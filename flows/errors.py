"""Failures a flow expects (bad params, unreachable sources, a stage over its time limit) and how they are shown:
one line in the flow run's log and state message, never a traceback (unless GENPIPE_DEBUG is set)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from cli.stage import DEBUG_ENV
from runtime.errors import UserError


class FlowError(Exception):
    """An expected failure of a flow run, reported in one line."""

    exit_code = 1


class StageFailed(FlowError):
    """A stage stopped on a problem the user can fix; `transient` when retrying may help (network sources)."""

    def __init__(self, stage: str, reason: str, transient: bool = False) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage, self.transient = stage, transient


class ExperimentFailed(FlowError):
    """One or more param sets of a sweep did not produce a model."""


class _NoTraceback(logging.Filter):
    """Drop the traceback Prefect attaches to its "task/flow run failed" records when the failure is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        expected = isinstance(exc, (UserError, FlowError)) or type(exc).__name__ == "TaskRunTimeoutError"
        if expected and not os.environ.get(DEBUG_ENV):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_expected_errors() -> None:
    """Called at the start of every flow (idempotent): show the project's INFO records (stage progress) in the flow
    run's log, also when a deployment runs it in a fresh process, and drop tracebacks of expected failures."""
    from runtime import PACKAGES

    for name in PACKAGES:
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.INFO)
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTraceback) for f in logger.filters):
            logger.addFilter(_NoTraceback())


EPHEMERAL_STARTUP_S = 120  # Prefect's default, 20 s, is too short on a loaded 2-core machine


@contextlib.contextmanager
def _patient_local_server() -> Iterator[None]:
    """Without PREFECT_API_URL a flow starts a local Prefect server for its run and gives up after 20 s; on a busy
    machine it takes longer than that, and the run would fail before it began. Wait up to EPHEMERAL_STARTUP_S
    unless the user chose a value (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as timeout
    from prefect.settings import temporary_settings

    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ or timeout.value() != timeout.default():
        yield
        return
    with temporary_settings(updates={timeout: EPHEMERAL_STARTUP_S}):
        yield


def run_cli(label: str, call: Callable[[], Any]) -> Any:
    """Run a flow's command line: logging set up, expected failures as `error: <label>: ...` and a non-zero exit."""
    from cli.stage import setup_logging

    setup_logging()
    try:
        with _patient_local_server():
            return call()
    except (UserError, FlowError) as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        sys.stderr.write(f"error: {label}: {exc}\n")
        sys.exit(getattr(exc, "exit_code", 1))
