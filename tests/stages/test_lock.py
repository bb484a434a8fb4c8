"""The workspace lock: a second run stops at once naming the holder; a killed holder leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from runtime.lock import LOCK_FILE, TOKEN_ENV, Busy, ensure_free, run_lock
from tests.conftest import REPO_ROOT

HOLD = """
import sys, time
from pathlib import Path
from runtime.lock import run_lock
with run_lock(Path(sys.argv[1]), "test holder"):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_in_subprocess(root) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop(TOKEN_ENV, None)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_stops_at_once_naming_the_holder_and_a_kill_releases_the_lock(tmp_path):
    holder = hold_in_subprocess(tmp_path)
    try:
        start = time.monotonic()
        with pytest.raises(Busy) as info, run_lock(tmp_path, "second"):
            pass
        assert time.monotonic() - start < 1  # at once, not after a wait
        message = str(info.value)
        assert "another run holds the lock" in message and f"test holder (pid {holder.pid}" in message
        assert info.value.exit_code == 3
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with run_lock(tmp_path, "after the kill"):  # the OS released it: nothing stale to clean up
        assert (tmp_path / LOCK_FILE).exists()


def test_the_probe_refuses_a_held_workspace_and_leaves_a_free_one_free(tmp_path):
    ensure_free(tmp_path)  # never locked: no lock file yet
    holder = hold_in_subprocess(tmp_path)
    try:
        with pytest.raises(Busy) as info:
            ensure_free(tmp_path)
        assert f"test holder (pid {holder.pid}" in str(info.value)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    ensure_free(tmp_path)
    with run_lock(tmp_path, "after the probe"):  # the probe kept nothing
        ensure_free(tmp_path)  # the holder's own process passes


def test_processes_started_by_the_holder_pass_through(tmp_path):
    with run_lock(tmp_path, "flow"):
        token = os.environ[TOKEN_ENV]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        code = "import sys; from pathlib import Path; from runtime.lock import run_lock\n" \
               "with run_lock(Path(sys.argv[1]), 'child'): print('ok')"
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                             check=True)
        assert out.stdout.strip() == "ok"
        with run_lock(tmp_path, "nested in-process"):  # re-entrant for the holder's own code too
            assert os.environ[TOKEN_ENV] == token
    assert TOKEN_ENV not in os.environ


def test_a_stage_command_line_refuses_to_run_while_another_run_holds_the_lock(project):
    project.write_corpus()
    holder = hold_in_subprocess(project.root)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        env.pop(TOKEN_ENV, None)
        proc = subprocess.run([sys.executable, "-m", "tasks.ingest"], cwd=project.root, env=env, capture_output=True,
                              text=True, check=False)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ingest: another run holds the lock on")
    assert "Traceback" not in proc.stderr
    assert not project.path("data", "raw").exists()  # nothing ran
