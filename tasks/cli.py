"""The process entry point shared by every stage: `python -m tasks.<stage>` as DVC runs it."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from tasks.errors import UserError
from tasks.params import Params, load_params

log = logging.getLogger("tasks")

DEBUG_ENV = "GENPIPE_DEBUG"  # set to 1 to see tracebacks for user errors
DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}  # a write failed for lack of space (or a file size limit)


def setup_logging(level: int = logging.INFO) -> None:
    """Log the project's records (`tasks`, `flows`, `models`) to stderr as one line each.

    Levels are set on the project's loggers, not only the root: Prefect sets the root logger to WARNING and
    attaches its own handlers (console and UI) to the loggers named in PREFECT_LOGGING_EXTRA_LOGGERS."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("tasks", "flows", "models", "__main__"):
        logging.getLogger(name).setLevel(level)
    for noisy in ("httpx", "urllib3", "alembic", "mlflow", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(stage: Callable[[Params], Any]) -> None:
    """Load params.yaml, run one stage, and turn user errors into a one-line message and a non-zero exit."""
    from tasks.lock import run_lock

    setup_logging()
    try:
        params = load_params()
        # Data-parallel workers under torchrun: local rank 0 takes (or, started by the train stage, passes through)
        # the lock for its machine; the others train beside it.
        lock = run_lock(params.root, f"stage {stage.__name__} (`python -m tasks.{stage.__name__}`)")
        with lock if os.environ.get("LOCAL_RANK", "0") == "0" else contextlib.nullcontext():
            stage(params)
    except UserError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        sys.stderr.write(f"error: {stage.__name__}: {exc}\n")
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.errno not in DISK_FULL or os.environ.get(DEBUG_ENV):
            raise
        where = f" {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"error: {stage.__name__}: no space left to write{where} ({exc.strerror}); free disk space "
                         "and rerun (outputs are written atomically: nothing partial was kept)\n")
        sys.exit(1)
