"""Failures a flow expects (bad params, unreachable sources, a stage over its time limit) and how they are shown:
one line in the flow run's log and state message, never a traceback (unless GENPIPE_DEBUG is set)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
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


def run_cli(label: str, call: Callable[[], Any]) -> Any:
    """Run a flow's command line: logging set up, expected failures as `error: <label>: ...` and a non-zero exit."""
    from cli.stage import setup_logging

    setup_logging()
    try:
        return call()
    except (UserError, FlowError) as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        sys.stderr.write(f"error: {label}: {exc}\n")
        sys.exit(getattr(exc, "exit_code", 1))
