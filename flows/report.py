"""The run report each flow run publishes as a Prefect artifact: the challenger's metrics beside the champion's,
the gate's decision, lineage and a few samples.

`report_markdown` and `sweep_markdown` are pure; `model_versions` reads the registry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from config.catalog import SAMPLES_FILE
from config.params import Params

ARTIFACT_KEY = "genpipe-report"  # Prefect artifact keys: lowercase letters, digits and dashes
LINEAGE = ("git_commit", "git_dirty", "dvc_lock_sha256", "data_sha256", "prefect_flow_run_id", "dvc_experiment")


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.4g}" if abs(number) < 1e5 else f"{number:.0f}"


def _metrics(tags: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix("metric."): v for k, v in tags.items() if k.startswith("metric.")}


def mlflow_links(tracking_uri: str, model_name: str, version: dict) -> list[str]:
    """Markdown lines pointing at a model version and its training run in the MLflow UI.

    `version` is {"version", "run_id", "experiment_id"} (the ids may be missing). An http(s) tracking server gives
    direct links; a local store (sqlite, files) gives the `mlflow ui` command to run and the page to open there."""
    v, run_id, exp = version["version"], version.get("run_id"), version.get("experiment_id")
    pages = [("model version", f"#/models/{model_name}/versions/{v}")]
    if run_id and exp:
        pages.append(("training run", f"#/experiments/{exp}/runs/{run_id}"))
    if tracking_uri.startswith(("http://", "https://")):
        base = tracking_uri.rstrip("/")
        return ["MLflow: " + ", ".join(f"[{what}]({base}/{page})" for what, page in pages)]
    local = "http://127.0.0.1:5000"
    return [f"MLflow: run `mlflow ui --backend-store-uri {tracking_uri}`, then open "
            + ", ".join(f"{what} <{local}/{page}>" for what, page in pages)]


def comparison_table(metric: str, version: str, tags: dict[str, str]) -> list[str]:
    """The challenger against the champion re-scored on the challenger's protocol, with the gain's interval (the
    numbers the gate decided on), from the challenger's tags; [] when there was no comparison."""
    rescored = tags.get(f"champion_rescored.{metric}")
    if rescored is None:
        return []
    pct = _fmt(100 * float(tags.get("comparison.confidence", "nan")))
    return [f"| {metric} | challenger v{version} | champion v{tags.get('champion_rescored.version')}, re-scored | "
            f"gain | {pct}% interval | p |", "|---|---:|---:|---:|---|---:|",
            f"| {metric} | {_fmt(tags.get('challenger_value'))} | {_fmt(rescored)} | {_fmt(tags.get('comparison.gain'))} "
            f"| [{_fmt(tags.get('comparison.ci_low'))}, {_fmt(tags.get('comparison.ci_high'))}] | "
            f"{_fmt(tags.get('comparison.p_value'))} |", "",
            (f"Paired over {tags.get('comparison.n_units')} units ({tags.get('comparison.n_resamples')} bootstrap "
             "resamples): the champion re-scored on the challenger's test data, never its stored numbers."), ""]


def report_markdown(model_name: str, ran: list[str], challenger: dict | None, champion: dict | None,
                    samples: list[str], tracking_uri: str | None = None) -> str:
    """Render one flow run's report. `challenger` / `champion` are {"version": str, "tags": {...}} (plus the
    "run_id" and "experiment_id" of the version's run, for links to the MLflow UI when `tracking_uri` is given)
    or None."""
    lines = [f"# {model_name}", "",
             f"Stages run: {', '.join(ran) if ran else 'none (DVC found every stage up to date)'}", ""]
    if challenger is None:
        lines += ["No new model version.", ""]
        if champion is not None:
            lines += [f"Champion: version {champion['version']}.", ""]
        return "\n".join(lines).rstrip() + "\n"
    ctags = challenger["tags"]
    metric = ctags.get("promote_metric", "")
    decision = ctags.get("decision", "unknown")
    lines += [(f"**Decision: {decision}** (version {challenger['version']}; gate metric `{metric}`, "
               f"min improvement {ctags.get('min_improvement', '–')})"), ""]
    if ctags.get("decision_rule"):
        lines += [f"Rule: {ctags['decision_rule']}", ""]
    lines += comparison_table(metric, challenger["version"], ctags)
    if tracking_uri:
        lines += mlflow_links(tracking_uri, model_name, challenger) + [""]
    if ctags.get("refused_by", "none") != "none":
        lines += [f"Refused champion by guard: {ctags['refused_by']}", ""]
    cm = _metrics(ctags)
    champion_is_new = champion is not None and champion["version"] == challenger["version"]
    before = ctags.get("champion_version_before", "None")
    head, rule, other = f"| metric | challenger v{challenger['version']} |", "|---|---:|", None
    if champion is not None and not champion_is_new:  # the champion stayed: all its metrics
        other, head = _metrics(champion["tags"]), head + f" champion v{champion['version']} |"
    elif before not in ("None", ""):  # the challenger took over: the gate metric of the champion it replaced
        other, head = {metric: ctags.get("champion_value_before")}, head + f" champion before (v{before}) |"
    lines += [head, rule + "---:|" * (other is not None)]
    for name in sorted(cm):
        mark = " ◀ gate" if name == metric else ""
        row = f"| {name}{mark} | {_fmt(cm[name])} |"
        lines.append(row if other is None else row + f" {_fmt(other.get(name))} |")
    lines += ["", "Lineage:", ""]
    lines += [f"- {key}: `{ctags[key]}`" for key in LINEAGE if key in ctags]
    if samples:
        lines += ["", "Samples:", ""]
        for text in samples:
            lines += ["```text", text.replace("```", "'''"), "```"]
    return "\n".join(lines) + "\n"


def sweep_markdown(model_name: str, metric: str, rows: list[dict], best: str | None, decision: dict | None) -> str:
    """Render a sweep's report: one row per param set (name, overrides, version, metric, status)."""
    lines = [f"# Sweep of {model_name}: {len(rows)} param sets", "",
             f"| experiment | overrides | version | {metric} | status |", "|---|---|---:|---:|---|"]
    for row in rows:
        overrides = ", ".join(f"{k}={json.dumps(v)}" for k, v in row["overrides"].items()) or "(none)"
        star = " ★" if best is not None and row.get("version") == best else ""
        lines.append(f"| {row['name']}{star} | {overrides} | {row.get('version') or '–'} | "
                     f"{_fmt(row.get('value'))} | {row['status']} |")
    if decision is not None:
        lines += ["", (f"Best: version {best} became challenger; gate decision: **{decision['decision']}** "
                       f"({decision.get('decision_rule', '')}; champion is version {decision['champion_version']}).")]
        c = decision.get("comparison")
        if c:
            lines += ["", (f"{metric}: challenger {_fmt(c['challenger'])}, champion re-scored {_fmt(c['champion'])}, "
                           f"gain {_fmt(c['gain'])}, {_fmt(100 * c['confidence'])}% interval [{_fmt(c['ci_low'])}, "
                           f"{_fmt(c['ci_high'])}], p={_fmt(c['p_value'])}")]
    else:
        lines += ["", "No param set produced a model: nothing was gated."]
    return "\n".join(lines) + "\n"


def model_versions(params: Params) -> tuple[dict | None, dict | None]:
    """Return (the version registered by the last register run, the current champion) from the registry."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from runtime.io import read_json

    cfg = params.register
    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = mlflow.MlflowClient()
    latest = None
    if Path(cfg.metrics_path).is_file():
        version = str(read_json(cfg.metrics_path)["version"])
        try:
            mv = client.get_model_version(cfg.model_name, version)
            latest = {"version": version, "tags": mv.tags, "run_id": mv.run_id,
                      "experiment_id": client.get_run(mv.run_id).info.experiment_id if mv.run_id else None}
        except MlflowException:
            latest = None
    try:
        mv = client.get_model_version_by_alias(cfg.model_name, "champion")
        champion = {"version": mv.version, "tags": mv.tags}
    except MlflowException:
        champion = None
    return latest, champion


def read_samples(params: Params, limit: int = 3) -> list[str]:
    path = params.evaluate.out_dir / SAMPLES_FILE
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row.get("text", "") for row in rows[:limit]]
