"""Progress reports: the ETA from the pace so far, its wording, and the throttled log lines a user without a
terminal (Prefect UI, CI log) reads."""

from __future__ import annotations

import logging
import math

from runtime.progress import Progress, describe_duration, eta


def test_eta_is_the_pace_so_far_times_what_is_left():
    assert eta(10.0, 5, 100) == 200.0
    assert eta(10.0, 0, 100) == math.inf
    assert eta(10.0, 5, -3) == 0.0


def test_durations_read_at_a_glance():
    assert describe_duration(12.4) == "12s"
    assert describe_duration(250) == "4m 10s"
    assert describe_duration(2 * 3600 + 5 * 60) == "2h 05m"
    assert describe_duration(3 * 86400 + 4 * 3600) == "3d 4h"
    assert describe_duration(3 * 365.25 * 86400) == "3.0 years"
    assert describe_duration(math.inf) == "unknown"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_without_a_terminal_progress_is_logged_at_most_every_interval_with_an_eta(caplog):
    clock = Clock()
    progress = Progress("train", 100, logging.getLogger("tests.progress"), log_every_s=30, clock=clock)
    progress._terminal = False  # pytest's stderr may be a terminal; a Prefect worker's is not
    with caplog.at_level(logging.INFO, logger="tests.progress"):
        for step in range(1, 101):
            clock.now = step * 1.0  # one second per step
            progress.update(step, f"loss {3 - step / 100:.2f}", force=step == 100)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "train: 1/100 (1%), loss 2.99, ETA 1m 39s"
    assert len(lines) == 5  # steps 1, 31, 61, 91 and the forced last one
    assert lines[1].startswith("train: 31/100 (31%)") and "ETA 1m 09s" in lines[1]
    assert lines[-1] == "train: 100/100 (100%), loss 2.00"  # no ETA once done


def test_a_resumed_run_projects_from_its_own_pace_not_from_step_zero():
    clock = Clock()
    progress = Progress("train", 1000, logging.getLogger("tests.progress"), clock=clock)
    clock.now = 10.0  # 10 s for the 100 steps since resuming at 800
    assert progress.describe(900, start_done=800) == "train: 900/1000 (90%), ETA 10s"


def test_tracking_an_iterator_yields_every_item_and_reports_the_end(caplog):
    clock = Clock()
    progress = Progress("preprocess", 3, logging.getLogger("tests.progress"), log_every_s=1e9, clock=clock)
    progress._terminal = False
    with caplog.at_level(logging.INFO, logger="tests.progress"):
        assert list(progress.track(iter("abc"), "documents read")) == ["a", "b", "c"]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["preprocess: 1/3 (33%), documents read, ETA 0s", "preprocess: 3/3 (100%), documents read"]
