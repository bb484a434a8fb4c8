"""The process entry point shared by every stage: `python -m tasks.<stage>` as DVC runs it."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from config.params import PARAMS_FILE, Params, load_params
from runtime import PACKAGES
from runtime.errors import ParamsError, UserError

log = logging.getLogger("tasks")

DEBUG_ENV = "GENPIPE_DEBUG"  # set to 1 to see tracebacks for user errors
DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}  # a write failed for lack of space (or a file size limit)


def setup_logging(level: int = logging.INFO) -> None:
    """Log the project's records (every package in `PACKAGES`) to stderr as one line each.

    Levels are set on the project's loggers, not only the root: Prefect sets the root logger to WARNING and
    attaches its own handlers (console and UI) to the loggers named in PREFECT_LOGGING_EXTRA_LOGGERS."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in (*PACKAGES, "__main__"):
        logging.getLogger(name).setLevel(level)
    for noisy in ("httpx", "urllib3", "alembic", "mlflow", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


EXIT_CODES = ("exit status: 0 done; 1 bad data, sources or a full disk; 2 bad params; 3 another run holds the "
              "workspace lock")


def uncommitted_hint(params_path: str) -> str:
    """Say how to get the committed params.yaml back when it differs from git's HEAD (as `dvc exp run -S key=value`
    leaves it after a failed run: DVC writes the override into the file before running); else ''."""
    folder, name = os.path.split(os.path.abspath(params_path))
    try:
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", name], cwd=folder, capture_output=True,
                                 timeout=30).returncode == 1
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (f" ({name} differs from the last commit, e.g. after `dvc exp run -S`: fix the value or run "
            f"`git checkout {name}`)" if changed else "")


def error_line(stage: str, exc: UserError, params_path: str) -> str:
    """The one line a user error ends a stage with; a params error also says how to restore the committed file."""
    hint = uncommitted_hint(params_path) if isinstance(exc, ParamsError) else ""
    return f"error: {stage}: {exc}{hint}\n"


def parser_for(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """Return the argument parser of an entry point: its docstring as help, `--params PATH`, the exit codes."""
    return argparse.ArgumentParser(prog=prog, description=(doc or "").strip(), epilog=EXIT_CODES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def main(stage: Callable[[Params], Any], argv: list[str] | None = None) -> None:
    """Parse the command line, load params, run one stage, and turn user errors into one line and a non-zero exit.

    `--help` prints the stage's description and exits 0 without loading params or running anything."""
    from runtime.lock import run_lock

    argv = sys.argv[1:] if argv is None else argv
    doc = sys.modules[stage.__module__].__doc__
    parser = parser_for(f"python -m tasks.{stage.__name__}", doc)
    parser.add_argument("--params", default=PARAMS_FILE, metavar="PATH",
                        help="the params file (default: params.yaml here); relative paths in it resolve against its "
                             "folder")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        params = load_params(args.params)
        # Data-parallel workers under torchrun: local rank 0 takes (or, started by the train stage, passes through)
        # the lock for its machine; the others train beside it.
        lock = run_lock(params.root, f"stage {stage.__name__} (`python -m tasks.{stage.__name__}`)")
        with lock if os.environ.get("LOCAL_RANK", "0") == "0" else contextlib.nullcontext():
            stage(params)
    except UserError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        sys.stderr.write(error_line(stage.__name__, exc, args.params))
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.errno not in DISK_FULL or os.environ.get(DEBUG_ENV):
            raise
        where = f" {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"error: {stage.__name__}: no space left to write{where} ({exc.strerror}); free disk space "
                         "and rerun (outputs are written atomically: nothing partial was kept)\n")
        sys.exit(1)
