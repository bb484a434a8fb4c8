"""One pipeline run per workspace at a time: an advisory lock that the stage command lines and the flows take.

`dvc repro` runs each stage as `python -m tasks.<stage>`, which holds the lock while the stage runs; the Prefect
flow holds it for the whole run. A second run started meanwhile stops at once with a one-line message naming the
holder, instead of interleaving its stages with the first. The lock is an `flock` on `<root>/.genpipe/run.lock`:
the operating system releases it when its holder exits, however it exits (kill -9 included), so it never goes
stale. Processes started by the holder (it exports a token) pass through.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from runtime.errors import UserError

LOCK_FILE = Path(".genpipe") / "run.lock"
TOKEN_ENV = "GENPIPE_LOCK_TOKEN"  # set by the holder for its child processes


class Busy(UserError):
    """Another run holds the workspace lock."""

    exit_code = 3


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def describe_holder(info: dict) -> str:
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"{info.get('what', 'a run')} (pid {info.get('pid', '?')}, since {since})"


def _started_by_holder(path: Path) -> bool:
    """Whether this process descends from (or is) the lock's holder: its exported token is the one in the file."""
    token = os.environ.get(TOKEN_ENV)
    return bool(token) and _holder(path).get("token") == token


def _flock_or_busy(fd: int, root: Path, path: Path) -> None:
    """Take the exclusive flock on `fd` without waiting; raise Busy naming the holder if another process has it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise Busy(f"another run holds the lock on {Path(root).resolve()}: {describe_holder(_holder(path))}; "
                   "wait for it to finish or stop it") from None


def ensure_free(root: Path) -> None:
    """Raise Busy at once if another run holds the workspace lock of `root` (a probe: the lock is not kept). For
    command lines that would spend time starting up (a Prefect server, say) before taking the lock themselves."""
    path = Path(root) / LOCK_FILE
    if not path.exists() or _started_by_holder(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        _flock_or_busy(fd, root, path)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_lock(root: Path, what: str) -> Iterator[None]:
    """Hold the workspace lock of project `root` for the block; raise Busy at once if another run holds it."""
    path = Path(root) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if _started_by_holder(path):  # already covered
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _flock_or_busy(fd, root, path)
        token = uuid.uuid4().hex
        info = {"what": what, "pid": os.getpid(), "since": time.time(), "token": token}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        previous = os.environ.get(TOKEN_ENV)
        os.environ[TOKEN_ENV] = token
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(TOKEN_ENV, None)
            else:
                os.environ[TOKEN_ENV] = previous
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock
