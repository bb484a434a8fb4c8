"""The champion gate: when a challenger takes the champion alias, decided on a paired comparison with the
champion re-scored under the challenger's protocol, and which rule decided."""

from __future__ import annotations

import math

import numpy as np
import pytest

from config.params import RegisterParams
from evaluation.paired import ratio_comparison, statistic_comparison, summarize
from registry.gate import comparison_tags, decide

NAN = float("nan")
CFG = RegisterParams(promote_metric="test_bpb", model_name="m")


def versus(challenger, champion, ci_low, ci_high, gain=None, p=0.01, version="3"):
    gain = champion - challenger if gain is None else gain
    return {"champion_version": version, "incomparable": None,
            "comparison": {"metric": "test_bpb", "challenger": challenger, "champion": champion, "gain": gain,
                           "ci_low": ci_low, "ci_high": ci_high, "p_value": p, "confidence": 0.95, "n_units": 50,
                           "n_resamples": 1000}}


def test_no_champion_yet_promotes_any_real_value():
    assert decide(1.5, {"champion_version": None}, [], CFG)[::2] == ("promoted", True)
    assert decide(NAN, {"champion_version": None}, [], CFG)[::2] == ("kept_champion", False)


def test_a_clear_win_promotes_and_says_why():
    decision, rule, promote = decide(1.0, versus(1.0, 1.2, 0.15, 0.25), [], CFG)
    assert (decision, promote) == ("promoted", True)
    assert "excludes 0" in rule and "[0.15, 0.25]" in rule


def test_a_win_whose_interval_includes_zero_is_not_significant():
    decision, rule, promote = decide(1.0, versus(1.0, 1.01, -0.02, 0.04), [], CFG)
    assert (decision, promote) == ("not_significant", False)
    assert rule.startswith("register.min_confidence") and "includes 0" in rule


def test_a_loss_or_a_tie_keeps_the_champion_by_the_margin_rule():
    for v in (versus(1.2, 1.0, -0.3, -0.1), versus(1.0, 1.0, -0.01, 0.01)):
        decision, rule, promote = decide(v["comparison"]["challenger"], v, [], CFG)
        assert (decision, promote) == ("kept_champion", False) and rule.startswith("register.min_improvement")


def test_the_margin_applies_to_the_gain_over_the_rescored_champion():
    cfg = RegisterParams(promote_metric="test_bpb", model_name="m", min_improvement=0.25)
    assert decide(1.0, versus(1.0, 1.2, 0.15, 0.25), [], cfg)[0] == "kept_champion"  # 0.2 < 0.25
    assert decide(1.0, versus(1.0, 1.5, 0.4, 0.6), [], cfg)[0] == "promoted"


def test_guards_and_incomparable_champions_keep_the_alias_unless_told_otherwise():
    assert decide(1.0, versus(1.0, 2.0, 0.9, 1.1), ["memorization 0.9 > 0.5"], CFG)[::2] == ("refused_by_guard", False)
    other = {"champion_version": "2", "incomparable": "it generates images of shape [1, 8, 8], the data has [1, 16, 16]",
             "comparison": None}
    decision, rule, promote = decide(30.0, other, [], CFG)
    assert decision == "incomparable: it generates images of shape [1, 8, 8], the data has [1, 16, 16]"
    assert promote is False and rule == "register.on_incomparable: keep"
    anyway = RegisterParams(promote_metric="fid", model_name="m", on_incomparable="promote")
    assert decide(30.0, other, [], anyway)[0].startswith("promoted_incomparable: it generates")
    assert decide(30.0, other, [], anyway)[2] is True


def test_a_champion_that_rescored_to_nan_is_replaced():
    assert decide(1.0, versus(1.0, NAN, NAN, NAN, gain=NAN), [], CFG)[::2] == ("promoted", True)


def test_comparison_tags_carry_both_values_and_the_interval():
    tags = comparison_tags(versus(1.0, 1.2, 0.15, 0.25))
    assert tags["champion_rescored.test_bpb"] == "1.2" and tags["champion_rescored.version"] == "3"
    assert tags["comparison.ci_low"] == "0.15" and tags["comparison.n_units"] == "50"
    assert comparison_tags({"champion_version": None}) == {}


# ---------------------------------------------------------------------------------------------- the bootstrap


def test_identical_models_give_an_interval_around_zero_and_a_large_p():
    rng = np.random.default_rng(0)
    nll, size = rng.gamma(5, 20, 200), rng.integers(50, 500, 200)
    c = ratio_comparison("test_bpb", nll, nll * (1 + rng.normal(0, 0.01, 200)), size, size, 1 / math.log(2),
                         False, 0.95, 1000, seed=1)
    assert c.ci_low < 0 < c.ci_high and c.p_value > 0.05


def test_a_consistently_better_model_wins_with_a_tight_interval():
    rng = np.random.default_rng(0)
    nll, size = rng.gamma(5, 20, 200), rng.integers(50, 500, 200)
    c = ratio_comparison("test_bpb", nll * 0.9, nll, size, size, 1 / math.log(2), False, 0.95, 1000, seed=1)
    assert c.gain == pytest.approx(0.1 * nll.sum() / size.sum() / math.log(2))
    assert 0 < c.ci_low <= c.gain <= c.ci_high and c.p_value < 0.01


def test_pairing_removes_the_variation_both_models_share():
    rng = np.random.default_rng(0)
    hard = rng.gamma(1, 50, 100)  # documents differ a lot in difficulty, the same for both models
    a, b = hard * 0.98, hard
    paired = statistic_comparison("m", lambda i: a[i].mean(), lambda i: b[i].mean(), 100, False, 0.95, 500, 3)
    assert paired.ci_low > 0  # a 2% improvement is certain when both are scored on the same documents


def test_summarize_orients_the_gain_for_either_direction():
    boot = np.array([0.1, 0.2, 0.3])
    assert summarize("bleu", 0.5, 0.3, boot, True, 0.9, 10).gain == pytest.approx(0.2)
    assert summarize("fid", 10.0, 12.0, boot, False, 0.9, 10).gain == pytest.approx(2.0)
