"""Paired comparison of two models scored on the same units (test documents, prompts, images): the difference of
a metric with a bootstrap confidence interval and p-value. Pure numpy: no model, no IO.

Both models are scored on the same units, and every bootstrap resample draws the same unit indices for both, so
the interval measures the difference itself (unit-to-unit variation that hits both models alike cancels), not two
independent noisy numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Comparison:
    """A challenger-minus-champion difference of one metric, oriented so that `gain > 0` favours the challenger."""

    metric: str
    challenger: float
    champion: float
    gain: float  # challenger better by this much (champion - challenger when lower is better)
    ci_low: float  # `confidence` interval of the gain (percentile bootstrap)
    ci_high: float
    p_value: float  # two-sided bootstrap p-value of "no difference"
    confidence: float
    n_units: int
    n_resamples: int

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in asdict(self).items()}


def resample_indices(n_units: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_units) unit indices drawn with replacement, the same for both models."""
    return np.random.default_rng(seed).integers(0, n_units, size=(n_resamples, n_units))


def summarize(metric: str, challenger: float, champion: float, boot_gain: np.ndarray, greater_is_better: bool,
              confidence: float, n_units: int) -> Comparison:
    """Turn bootstrap gains into a Comparison: percentile interval at `confidence`, two-sided p-value."""
    gain = challenger - champion if greater_is_better else champion - challenger
    boot = boot_gain[np.isfinite(boot_gain)]
    if not len(boot):
        return Comparison(metric, challenger, champion, gain, math.nan, math.nan, math.nan, confidence, n_units, 0)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    # share of resamples on the other side of zero from the observed gain, doubled (at most 1)
    p = min(1.0, 2 * min(np.mean(boot <= 0), np.mean(boot >= 0)) + 1 / (len(boot) + 1))
    return Comparison(metric, challenger, champion, gain, float(low), float(high), float(p), confidence, n_units,
                      len(boot))


def ratio_comparison(metric: str, num_a: np.ndarray, num_b: np.ndarray, den_a: np.ndarray, den_b: np.ndarray,
                     scale: float, greater_is_better: bool, confidence: float, n_resamples: int,
                     seed: int) -> Comparison:
    """Compare metrics of the form scale * sum(num) / sum(den) over units (bits per byte: summed NLL over summed
    bytes), challenger `a` against champion `b`, resampling units with replacement."""
    num_a, num_b, den_a, den_b = (np.asarray(x, dtype=np.float64) for x in (num_a, num_b, den_a, den_b))
    value_a, value_b = scale * num_a.sum() / den_a.sum(), scale * num_b.sum() / den_b.sum()
    idx = resample_indices(len(num_a), n_resamples, seed)
    boot_a = scale * num_a[idx].sum(axis=1) / den_a[idx].sum(axis=1)
    boot_b = scale * num_b[idx].sum(axis=1) / den_b[idx].sum(axis=1)
    boot_gain = boot_a - boot_b if greater_is_better else boot_b - boot_a
    return summarize(metric, float(value_a), float(value_b), boot_gain, greater_is_better, confidence, len(num_a))


def statistic_comparison(metric: str, stat_a: Callable[[np.ndarray], float], stat_b: Callable[[np.ndarray], float],
                         n_units: int, greater_is_better: bool, confidence: float, n_resamples: int,
                         seed: int) -> Comparison:
    """Compare any statistic of a set of units (corpus BLEU of prompts, FID of images): `stat_x(indices)` scores
    model x on those units (indices may repeat)."""
    everything = np.arange(n_units)
    value_a, value_b = stat_a(everything), stat_b(everything)
    idx = resample_indices(n_units, n_resamples, seed)
    boot_a = np.array([stat_a(i) for i in idx])
    boot_b = np.array([stat_b(i) for i in idx])
    boot_gain = boot_a - boot_b if greater_is_better else boot_b - boot_a
    return summarize(metric, float(value_a), float(value_b), boot_gain, greater_is_better, confidence, n_units)
