"""What the benchmarks share: a fresh clone that uses this checkout's venv, the environment stages run in, and a
result file that says which command measured it, on what machine, when, at which commit and under what load.

The machine may be shared, so every result records `os.getloadavg()` when its benchmark started and ended: a 1-minute
load above the core count means the figures were taken while other work competed for the CPU.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Self

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
VENV = Path(sys.prefix)  # the venv running the benchmark; clones link to it instead of installing their own

log = logging.getLogger("bench")


def load_averages() -> dict[str, float]:
    """Return the 1, 5 and 15-minute load averages."""
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def machine() -> dict[str, Any]:
    """Describe the machine and software stack the figures belong to."""
    import torch

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }


def commit_of(path: Path) -> str:
    """Return the short hash of the commit checked out at `path`."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True, text=True,
                          check=True).stdout.strip()


def fresh_clone(prefix: str, *, shared_venv: bool = True) -> Path:
    """`git clone` this repository (its last commit, not the working tree) into a new temporary directory and
    return the clone; with `shared_venv`, its `.venv` is a link to the venv running this script."""
    if shared_venv and not (VENV / "bin" / "dvc").exists():
        raise SystemExit(f"run the benchmark with the project's venv (.venv/bin/python): {VENV} has no dvc")
    clone = Path(tempfile.mkdtemp(prefix=prefix)) / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    if shared_venv:
        (clone / ".venv").symlink_to(VENV, target_is_directory=True)
    log.info("clone of %s at %s", commit_of(clone), clone)
    return clone


def remove_clone(clone: Path) -> None:
    """Delete the temporary directory holding `clone`."""
    shutil.rmtree(clone.parent, ignore_errors=True)


def stage_env(clone: Path, venv: Path | None = None) -> dict[str, str]:
    """Return the environment `make run` gives stages (Makefile exports), for commands run in `clone`."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PREFECT_API_URL")}
    env.update({
        "PATH": f"{(venv or VENV) / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "tasks,flows,models,config,runtime,cli,dataprep,training,evaluation,registry,serving",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        "PREFECT_HOME": str(clone / ".prefect"),  # this clone's own Prefect database, not the user's
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
    })
    return env


class Ran(NamedTuple):
    seconds: float  # wall clock
    cpu_seconds: float  # user + system time of the command and its children: less sensitive to other load
    output: str  # stdout and stderr


def children_cpu_seconds() -> float:
    """Return the user + system CPU seconds of every waited-for child process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> Ran:
    """Run `cmd` to completion and return its wall and CPU seconds and output; on failure, log the output's
    tail and raise."""
    cpu, start = children_cpu_seconds(), time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    seconds, cpu = time.perf_counter() - start, children_cpu_seconds() - cpu
    if proc.returncode:
        log.error("%s failed with exit %d after %.1f s:\n%s", shlex.join(cmd), proc.returncode, seconds,
                  proc.stdout[-4000:])
        raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout)
    return Ran(seconds, cpu, proc.stdout)


class Timer:
    """Wall and CPU seconds of a block run in this process (CPU time counts every thread, torch's included).

    With torch's default of one thread per core, CPU seconds near cores x wall mean the block had the machine to
    itself; much less means other processes took turns on the cores."""

    def __enter__(self) -> Self:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = time.process_time() - self._cpu


@dataclass
class Result:
    """A benchmark's result file: `bench/results/<name>.json`. Create it when the benchmark starts."""

    name: str
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    load_start: dict[str, float] = field(default_factory=load_averages)

    def write(self, figures: dict[str, Any], commit: str | None = None) -> Path:
        """Write the figures with the command, machine, dates, commit and load averages; return the path."""
        result = {
            "command": "python " + shlex.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
            "date": self.started.isoformat(timespec="seconds"),
            "ended": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": commit,
            "machine": machine(),
            "load_average_start": self.load_start,
            "load_average_end": load_averages(),
            **figures,
        }
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"{self.name}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        log.info("wrote %s", out.relative_to(REPO))
        return out


def import_from(clone: Path) -> None:
    """Make `import models`, `tasks`, `flows` and `tests` load the clone's code (its commit), not this checkout's
    working tree, which other people may be editing."""
    import bench  # noqa: F401 (bench stays this checkout's package: its modules keep loading from here)

    for name in [m for m in sys.modules if m.split(".")[0] in ("models", "tasks", "flows", "tests")]:
        del sys.modules[name]
    sys.path.insert(0, str(clone))
