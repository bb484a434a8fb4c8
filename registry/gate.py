"""The champion gate: a new version becomes `challenger` and takes `champion` only when it passes the guards and
beats the current champion, re-scored under the challenger's own evaluation protocol, by
`register.min_improvement` with confidence `register.min_confidence`. Every decision is tagged with the rule that
made it and its numbers.

The champion's stored metrics are never compared: they may come from other test documents, another feature
extractor or other seeds. The caller (tasks/register.py) re-scores the champion through the registry and passes
the paired comparison (evaluation/paired.py) here; this module only decides and records.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from config.params import RegisterParams
from registry.cards import guards

log = logging.getLogger(__name__)


CHAMPION, CHALLENGER = "champion", "challenger"


def decide(value: float, versus: dict[str, Any], refused: list[str], cfg: RegisterParams) -> tuple[str, str, bool]:
    """Return (decision, the rule that decided, promote?) for a challenger worth `value` on the promote metric.

    `versus` is `compare_with_champion`'s result: the champion's version, the paired comparison, or why the two
    cannot be compared."""
    if refused:
        return "refused_by_guard", "guards", False
    if not math.isfinite(value):
        return "kept_champion", f"the challenger's {cfg.promote_metric} is not a number", False
    if versus.get("champion_version") is None:
        return "promoted", "no champion yet", True
    if versus.get("incomparable"):
        reason = versus["incomparable"]
        if cfg.on_incomparable == "promote":
            return f"promoted_incomparable: {reason}", "register.on_incomparable: promote", True
        return f"incomparable: {reason}", "register.on_incomparable: keep", False
    c = versus["comparison"]
    if c["champion"] is None or not math.isfinite(c["champion"]):
        return "promoted", "the re-scored champion's value is not a number", True
    if not c["gain"] > cfg.min_improvement:
        return "kept_champion", f"register.min_improvement: gain {c['gain']:.4g} <= {cfg.min_improvement:g}", False
    if c["ci_low"] is None or not c["ci_low"] > 0:
        return ("not_significant", f"register.min_confidence: the {c['confidence']:g} interval of the gain "
                f"[{c['ci_low']:.4g}, {c['ci_high']:.4g}] includes 0 (p={c['p_value']:.3g})", False)
    return ("promoted", f"gain {c['gain']:.4g} > {cfg.min_improvement:g} and its {c['confidence']:g} interval "
            f"[{c['ci_low']:.4g}, {c['ci_high']:.4g}] excludes 0 (p={c['p_value']:.3g})", True)


def current_champion(client, name: str, metric: str) -> tuple[str | None, float | None]:
    """Return the champion's version and its stored value of `metric`, or (None, None) when there is no champion.
    The stored value is shown for history only: decisions use the champion re-scored."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    value = mv.tags.get(f"metric.{metric}")
    return mv.version, float(value) if value is not None else None


def comparison_tags(versus: dict[str, Any]) -> dict[str, str]:
    """The challenger's tags for the comparison: `champion_rescored.<metric>` and `comparison.*`."""
    c = versus.get("comparison")
    if not c:
        return {}
    tags = {f"champion_rescored.{c['metric']}": c["champion"], "champion_rescored.version": versus["champion_version"]}
    tags |= {f"comparison.{k}": c[k] for k in ("gain", "ci_low", "ci_high", "p_value", "confidence", "n_units",
                                                "n_resamples")}
    return {k: str(v) for k, v in tags.items()}


def gate(client, cfg: RegisterParams, version: str, versus: dict[str, Any]) -> dict:
    """Make `version` the challenger and promote it to champion when it wins; record why.

    The version's own metrics are read from its `metric.*` tags (so a sweep can gate any registered version);
    the champion's come re-scored in `versus` (tasks/register.py: compare_with_champion)."""
    tags = client.get_model_version(cfg.model_name, version).tags
    raw = tags.get(f"metric.{cfg.promote_metric}")
    value = float("nan") if raw is None else float(raw)
    champion_version, champion_stored = current_champion(client, cfg.model_name, cfg.promote_metric)
    refused = [g.describe() for g in guards({k.removeprefix("metric."): v for k, v in tags.items()
                                             if k.startswith("metric.")}, cfg) if not g.passed]
    decision, rule, promote = decide(value, versus, refused, cfg)
    c = versus.get("comparison") or {}
    record = {"decision": decision, "decision_rule": rule, "promote_metric": cfg.promote_metric,
              "challenger_value": str(value), "champion_version_before": str(champion_version),
              "champion_value_before": str(champion_stored), "min_improvement": str(cfg.min_improvement),
              "min_confidence": str(cfg.min_confidence), "refused_by": "; ".join(refused) or "none",
              **comparison_tags(versus)}
    for key, val in record.items():
        client.set_model_version_tag(cfg.model_name, version, key, val[:5000])
    client.set_registered_model_alias(cfg.model_name, CHALLENGER, version)
    if promote:
        client.set_registered_model_alias(cfg.model_name, CHAMPION, version)
    if refused:
        log.warning("register: %s version %s refused champion by guard: %s", cfg.model_name, version,
                    "; ".join(refused))
    log.info("register: %s version %s -> %s (%s)", cfg.model_name, version, decision, rule)
    return {"version": int(version), "promoted": promote, "decision": decision, "decision_rule": rule,
            "refused_by": refused,
            "champion_version": int(version) if promote else (champion_version and int(champion_version)),
            f"challenger_{cfg.promote_metric}": value if math.isfinite(value) else None,  # JSON has no NaN
            f"champion_{cfg.promote_metric}_before": champion_stored,
            f"champion_rescored_{cfg.promote_metric}": c.get("champion"),
            "comparison": c or None, "incomparable": versus.get("incomparable")}
