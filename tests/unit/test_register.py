"""The champion gate: when a challenger takes the champion alias."""

from __future__ import annotations

import pytest

from registry.gate import should_promote

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "challenger,champion,greater_is_better,min_improvement,expected",
    [
        # no champion yet: any real value wins, in either direction
        (5.0, None, False, 0.0, True),
        (0.1, None, True, 0.0, True),
        (5.0, None, False, 10.0, True),  # the margin is relative to a champion; there is none
        # a champion whose metric is unknown (NaN) is replaced by a challenger with a real value
        (5.0, NAN, False, 0.0, True),
        # lower is better (bits per byte, perplexity)
        (1.0, 1.5, False, 0.0, True),
        (1.5, 1.0, False, 0.0, False),
        (1.0, 1.0, False, 0.0, False),  # a tie keeps the champion
        (1.0, 1.75, False, 0.5, True),  # wins by more than the margin
        (1.0, 1.25, False, 0.5, False),  # better, but by less than the margin
        (1.0, 1.5, False, 0.5, False),  # exactly the margin is not enough
        # greater is better (BLEU, ROUGE-L)
        (0.75, 0.5, True, 0.0, True),
        (0.5, 0.75, True, 0.0, False),
        (0.5, 0.5, True, 0.0, False),
        (0.75, 0.5, True, 0.125, True),
        (0.625, 0.5, True, 0.25, False),
        # a challenger without a real value never wins
        (NAN, None, False, 0.0, False),
        (NAN, None, True, 0.0, False),
        (NAN, 1.0, False, 0.0, False),
        (NAN, 1.0, True, 0.0, False),
        (NAN, NAN, False, 0.0, False),
        (INF, 1.0, False, 0.0, False),
        (INF, 1.0, True, 0.0, False),
    ],
)
def test_should_promote(challenger, champion, greater_is_better, min_improvement, expected):
    assert should_promote(challenger, champion, greater_is_better, min_improvement) is expected


@pytest.mark.parametrize("greater_is_better", [False, True])
def test_direction_decides_which_side_wins(greater_is_better):
    low, high = 1.0, 2.0
    assert should_promote(high, low, greater_is_better, 0.0) is greater_is_better
    assert should_promote(low, high, greater_is_better, 0.0) is not greater_is_better


def test_the_margin_is_absolute_in_metric_units():
    # 0.3 better than the champion: enough for a 0.25 margin, not for 0.5, whatever the scale of the metric
    assert should_promote(99.7, 100.0, False, 0.25)
    assert not should_promote(99.7, 100.0, False, 0.5)


def test_a_sqlite_tracking_store_is_switched_to_write_ahead_logging(tmp_path):
    import sqlite3

    from registry.tracking import use_wal

    path = tmp_path / "mlflow.db"
    sqlite3.connect(path).close()
    use_wal(f"sqlite:///{path}")
    use_wal(f"sqlite:///{path}")  # idempotent
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    use_wal("http://127.0.0.1:5000")  # other stores are left alone
