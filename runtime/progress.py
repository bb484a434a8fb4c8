"""Progress of long work (training steps, image sampling, tokenizer training) where a user watches it.

`Progress` reports a fraction done with a one-line description:
- under a Prefect flow run, as a progress artifact the Prefect UI draws as a bar (created on the first update,
  then updated in place), at most every `every_s` seconds;
- without a terminal (a Prefect UI, a CI log, `dvc repro > log`), as a log line at most every `log_every_s`
  seconds, because tqdm draws nothing there;
- in a terminal, tqdm's bar (owned by the caller) is enough and no extra lines are logged.

`eta` and `describe_duration` are pure. Prefect is never imported here: outside a flow run (a DVC stage process,
a torchrun worker) it has not been imported, and then no artifact is made.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def describe_duration(seconds: float) -> str:
    """'3.2 years', '3d 4h', '2h 05m', '4m 10s', '12s'."""
    if not math.isfinite(seconds):
        return "unknown"
    if seconds >= 365.25 * 86400:
        return f"{seconds / (365.25 * 86400):,.1f} years"
    s = int(round(max(seconds, 0)))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def eta(elapsed_s: float, done: int, remaining: int) -> float:
    """Seconds left for `remaining` units at the pace of the `done` units that took `elapsed_s` (inf if none done)."""
    if done <= 0:
        return math.inf
    return elapsed_s / done * max(remaining, 0)


def _artifact_key(name: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", f"genpipe-{name}-progress".lower()).strip("-")


class Progress:
    """Report `done` of `total` units of the work called `name` (the stage: train, evaluate, preprocess)."""

    def __init__(self, name: str, total: int, logger: logging.Logger, *, every_s: float = 2.0,
                 log_every_s: float = 30.0, clock=time.monotonic) -> None:
        self.name, self.total, self.log = name, max(int(total), 1), logger
        self.every_s, self.log_every_s, self.clock = every_s, log_every_s, clock
        self.started = clock()
        self._last_artifact = self._last_log = -math.inf
        self._artifact_id = None
        self._prefect = _in_prefect_run()
        self._terminal = sys.stderr.isatty()

    def describe(self, done: int, detail: str = "", *, start_done: int = 0) -> str:
        """'train: 120/1000 (12%), loss 2.345, ETA 1m 12s' (`start_done`: units done before this run resumed)."""
        left = eta(self.clock() - self.started, done - start_done, self.total - done)
        eta_text = f", ETA {describe_duration(left)}" if done < self.total else ""
        return f"{self.name}: {done}/{self.total} ({100 * done / self.total:.0f}%){', ' + detail if detail else ''}{eta_text}"

    def update(self, done: int, detail: str = "", *, start_done: int = 0, force: bool = False) -> None:
        """Report progress; cheap to call often (throttled). `force` reports now (the last unit, say)."""
        now = self.clock()
        text = None
        if self._prefect and (force or now - self._last_artifact >= self.every_s):
            text = self.describe(done, detail, start_done=start_done)
            self._publish(100.0 * done / self.total, text)
            self._last_artifact = now
        if not self._terminal and (force or now - self._last_log >= self.log_every_s):
            self.log.info("%s", text or self.describe(done, detail, start_done=start_done))
            self._last_log = now

    def track(self, items: Iterable[T], detail: str = "") -> Iterator[T]:
        """Yield `items`, reporting one unit per item (the last one forced): for work a library pulls from an
        iterator, such as BPE training reading documents."""
        done = 0
        for done, item in enumerate(items, 1):
            self.update(done, detail)
            yield item
        self.update(done, detail, force=True)

    def _publish(self, percent: float, text: str) -> None:
        try:
            from prefect.artifacts import create_progress_artifact, update_progress_artifact

            if self._artifact_id is None:
                self._artifact_id = create_progress_artifact(progress=percent, key=_artifact_key(self.name),
                                                             description=text)
            else:
                update_progress_artifact(self._artifact_id, progress=percent, description=text)
        except Exception as exc:  # noqa: BLE001 (the UI bar is a convenience: the work must go on without it)
            self.log.debug("progress artifact not updated: %s", exc)
            self._prefect = False


def _in_prefect_run() -> bool:
    """True inside a Prefect flow or task run (only possible when prefect is already imported)."""
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None
