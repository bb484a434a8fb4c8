"""The champion gate: a new version becomes `challenger` and takes `champion` when it passes the guards and beats
the current champion on `register.promote_metric` by `register.min_improvement`; every decision is tagged."""

from __future__ import annotations

import logging
import math

from config.params import RegisterParams
from registry.cards import guards

log = logging.getLogger(__name__)


CHAMPION, CHALLENGER = "champion", "challenger"


def should_promote(challenger: float, champion: float | None, greater_is_better: bool, min_improvement: float) -> bool:
    """Decide whether a challenger takes the champion alias."""
    if champion is None or not math.isfinite(champion):
        return math.isfinite(challenger)
    if not math.isfinite(challenger):
        return False
    gain = challenger - champion if greater_is_better else champion - challenger
    return gain > min_improvement


def current_champion(client, name: str, metric: str) -> tuple[str | None, float | None]:
    """Return the champion's version and its value of `metric`, or (None, None) when there is no champion."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    value = mv.tags.get(f"metric.{metric}")
    return mv.version, float(value) if value is not None else None


def gate(client, cfg: RegisterParams, version: str) -> dict:
    """Make `version` the challenger and promote it to champion when it beats the current one; record why.

    The version's metrics are read from its `metric.*` tags, so a sweep can gate any registered version.
    """
    tags = client.get_model_version(cfg.model_name, version).tags
    raw = tags.get(f"metric.{cfg.promote_metric}")
    value = float("nan") if raw is None else float(raw)
    champion_version, champion_value = current_champion(client, cfg.model_name, cfg.promote_metric)
    refused = [g.describe() for g in guards({k.removeprefix("metric."): v for k, v in tags.items()
                                             if k.startswith("metric.")}, cfg) if not g.passed]
    promote = not refused and should_promote(value, champion_value, cfg.greater_is_better, cfg.min_improvement)
    decision = "promoted" if promote else "refused_by_guard" if refused else "kept_champion"
    for key, val in {"decision": decision, "promote_metric": cfg.promote_metric, "challenger_value": str(value),
                     "champion_version_before": str(champion_version), "champion_value_before": str(champion_value),
                     "min_improvement": str(cfg.min_improvement), "refused_by": "; ".join(refused) or "none"}.items():
        client.set_model_version_tag(cfg.model_name, version, key, val)
    client.set_registered_model_alias(cfg.model_name, CHALLENGER, version)
    if promote:
        client.set_registered_model_alias(cfg.model_name, CHAMPION, version)
    if refused:
        log.warning("register: %s version %s refused champion by guard: %s", cfg.model_name, version,
                    "; ".join(refused))
    log.info("register: %s version %s (%s %.4f vs champion %s: %s) -> %s", cfg.model_name, version,
             cfg.promote_metric, value, champion_version, champion_value, decision)
    return {"version": int(version), "promoted": promote, "decision": decision, "refused_by": refused,
            "champion_version": int(version) if promote else (champion_version and int(champion_version)),
            f"challenger_{cfg.promote_metric}": value if math.isfinite(value) else None,  # JSON has no NaN
            f"champion_{cfg.promote_metric}_before": champion_value}
