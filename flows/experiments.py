"""Experiments and sweeps: param sets run as DVC experiments, all logged to one MLflow experiment, the best made
`challenger` and gated once.

Each param set is a mapping of dotted keys, the keys `dvc exp run -S` takes (`{"train.lr": 0.001}`). Every set
is validated by the params schema before anything runs. Each runs as `dvc exp run --temp` in a temporary copy of
the project, so the workspace (params.yaml, outputs, dvc.lock) is left exactly as it was and each set starts from
the committed baseline; the results appear in `dvc exp show`. Registry and checkpoints stay in the main project
(see `config.params.state_root`). Experiments register with `register.promote=never`; when all have run, the best
on `register.promote_metric` becomes `challenger` and goes through the champion gate.

Flows: `sweep(param_sets)` and `experiment(generator, overrides)` (one set: what the on-demand deployment runs).
Command line: `python -m flows.experiments '[{"train.lr": 0.001}, {"train.lr": 0.003}]'`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task

from config.params import PARAMS_FILE, GeneratorName, Params, load_params
from flows.errors import ExperimentFailed, quiet_expected_errors, run_cli
from flows.slots import workspace_slot
from registry.lineage import PREFECT_RUN_ENV
from runtime.errors import ParamsError

log = logging.getLogger("flows.experiments")

Generator = GeneratorName  # the deployment's dropdown lists every generator params.yaml accepts
SHARED_SECTIONS = ("register", "flow")  # one registry and one gate per sweep: not varied per set
PROGRESS = re.compile(r"\d+/\d+ \[[^]]*it/s\]")  # tqdm bars (artifact downloads): noise in a flow run's log


def set_args(overrides: dict[str, Any]) -> list[str]:
    """Return `-S ++key=value` arguments for `dvc exp run` (`++`: set the key even where params.yaml leaves it to
    its default; the schema has already checked it). Values are written as YAML: JSON, or a plain word."""
    args = []
    for key, value in overrides.items():
        plain = isinstance(value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:/@-]*", value) is not None
        args += ["-S", f"++{key}={value if plain else json.dumps(value)}"]
    return args


def exp_name(run_name: str, index: int) -> str:
    """A DVC experiment name (a valid git ref component) for param set `index` of the run `run_name`."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", run_name).strip("-")[:40] + f"-{index + 1}"


def best_version(rows: list[dict], greater_is_better: bool) -> str | None:
    """Return the version of the best finished row (ties: the earliest), or None when none has a finite value."""
    done = [r for r in rows if r.get("version") and r.get("value") is not None and math.isfinite(r["value"])]
    if not done:
        return None
    pick = (max if greater_is_better else min)(done, key=lambda r: r["value"])
    return pick["version"]


def routed(overrides: dict[str, Any], params: Params) -> dict[str, Any]:
    """Return `overrides` with each `train.<key>` that the chosen generator's own `model.<name>.train` sets moved
    there, so an explicit override takes effect (the generator's loop settings would otherwise win)."""
    own = params.model.hparams.train or {}
    out = {}
    for key, value in overrides.items():
        section, _, field = str(key).partition(".")
        out[f"model.{params.model.name}.train.{field}" if section == "train" and field in own else key] = value
    return out


def shared_register(sets: list[Params]):
    """Return the `register` section every param set shares: one registered model and one gate per sweep. Sets
    that register to different models (a text and an image generator) are refused in one line."""
    names: dict[str, list[int]] = {}
    for i, params in enumerate(sets):
        reg = params.register
        names.setdefault(f"{reg.model_name} gated on {reg.promote_metric}", []).append(i + 1)
    if len(names) > 1:
        parts = "; ".join(f"{name} (set{'s' * (len(ids) > 1)} {', '.join(map(str, ids))})" for name, ids in names.items())
        raise ParamsError(f"param sets: they register to different models ({parts}); one sweep gates one "
                          "registered model: run one sweep per model")
    return sets[0].register


def validate_sets(params_path: str, param_sets: list[dict[str, Any]]) -> list[Params]:
    """Validate every set against the params schema; raise one ParamsError naming the set and the key."""
    if not param_sets:
        raise ParamsError("param_sets: give at least one set of overrides")
    out = []
    for i, overrides in enumerate(param_sets):
        if not isinstance(overrides, dict):
            raise ParamsError(f"param set {i + 1}: expected a mapping of dotted keys to values")
        shared = sorted(k for k in overrides if str(k).split(".")[0] in SHARED_SECTIONS)
        if shared:
            raise ParamsError(f"param set {i + 1}: {', '.join(shared)}: the register and flow sections are shared "
                              "by every set of a sweep (one registry, one gate); set them in params.yaml")
        try:
            out.append(load_params(params_path, overrides))
        except ParamsError as exc:
            raise ParamsError(f"param set {i + 1} {json.dumps(overrides)}: {exc}") from None
    return out


@task(name="experiment")
def run_experiment(root: str, name: str, overrides: dict[str, Any], flow_run_id: str | None) -> int:
    """Run one param set as `dvc exp run --temp`; stream its log; return the exit status."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # stages run `python`
    if flow_run_id:
        env[PREFECT_RUN_ENV] = flow_run_id  # lineage: the registered version names this flow run
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", name, *set_args(overrides),
           "-S", "++register.promote=never"]
    log.info("%s: dvc exp run --temp %s", name, " ".join(set_args(overrides)))
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() and not PROGRESS.search(line):
            log.info("%s | %s", name, line.rstrip())
    return proc.wait()


def _versions_of_run(cfg, flow_run_id: str) -> dict[str, dict]:
    """Return {dvc experiment name: model version} for the versions this flow run registered under the sets'
    registered model (`cfg`: their shared register section)."""
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = mlflow.MlflowClient()
    found = {}
    for mv in client.search_model_versions(f"name='{cfg.model_name}'"):
        if mv.tags.get("prefect_flow_run_id") == flow_run_id and mv.tags.get("dvc_experiment"):
            found[mv.tags["dvc_experiment"]] = {"version": str(mv.version), "tags": mv.tags}
    return found


@flow(name="genpipe-sweep")
def sweep(param_sets: list[dict[str, Any]], params_path: str = PARAMS_FILE) -> dict[str, Any]:
    """Run each param set as a DVC experiment; make the best `challenger` and gate it once."""
    import mlflow
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import flow_run

    from flows.report import ARTIFACT_KEY, sweep_markdown
    from registry.tracking import connect
    from tasks.register import gate_version

    quiet_expected_errors()
    params_path = str(Path(params_path).resolve())
    base = load_params(params_path)
    sets = validate_sets(params_path, param_sets)
    cfg = shared_register(sets)  # the sets' registered model (a set may pick another modality than params.yaml)
    run_id, run_name = str(flow_run.id), str(flow_run.name or "sweep")
    connect(base.register)  # create the MLflow experiment in the main project before any copy runs
    # A deployed run queues for the workspace slot (flows/slots.py) behind a retrain or another sweep.
    with workspace_slot(base.root):
        rows = []
        for i, overrides in enumerate(param_sets):
            name = exp_name(run_name, i)
            code = run_experiment.with_options(name=name)(str(base.root), name, routed(overrides, sets[i]), run_id)
            rows.append({"name": name, "overrides": overrides,
                         "status": "done" if code == 0 else f"failed (exit {code})"})

        versions = _versions_of_run(cfg, run_id)
        for row in rows:
            found = versions.get(row["name"])
            if found:
                raw = found["tags"].get(f"metric.{cfg.promote_metric}")
                row.update(version=found["version"], value=None if raw is None else float(raw))
        best = best_version(rows, cfg.greater_is_better)
        decision = None
        if best is not None:
            mlflow.set_tracking_uri(cfg.tracking_uri)
            # the best set's params (its data paths and evaluation settings), with the shared register section
            chosen = sets[next(i for i, r in enumerate(rows) if r.get("version") == best)]
            decision = gate_version(chosen, mlflow.MlflowClient(), best)
    create_markdown_artifact(markdown=sweep_markdown(cfg.model_name, cfg.promote_metric, rows, best, decision),
                             key=ARTIFACT_KEY, description=f"{cfg.model_name}: sweep of {len(rows)} param sets")
    failed = [r["name"] for r in rows if r["status"] != "done"]
    if failed:
        raise ExperimentFailed(f"{len(failed)} of {len(rows)} param sets failed: {', '.join(failed)} "
                               "(their logs are in this flow run)")
    return {"experiments": rows, "best_version": best, "decision": decision}


@flow(name="genpipe-experiment")
def experiment(generator: Generator | None = None, overrides: dict[str, Any] | None = None,
               params_path: str = PARAMS_FILE) -> dict[str, Any]:
    """Train one variant on demand: `generator` picks model.name, `overrides` sets any other dotted params key.

    It runs as a DVC experiment (the workspace is untouched) and its model goes through the champion gate.
    """
    quiet_expected_errors()  # before the slot: its wait is logged
    merged = dict(overrides or {})
    if generator is not None:
        merged["model.name"] = generator
    # The slot is taken here, so the wait shows in the run the user started; the sweep subflow passes through.
    with workspace_slot(load_params(str(Path(params_path).resolve())).root):
        return sweep([merged], params_path)


def parse_cli(argv: list[str]) -> tuple[list[dict[str, Any]], str]:
    """Return (param sets, params path) from `'<JSON list of param sets>' [params.yaml]`."""
    if not argv:
        raise ParamsError("usage: python -m flows.experiments '<JSON list of param sets>' [params.yaml]")
    try:
        sets = json.loads(argv[0])
    except json.JSONDecodeError as exc:
        raise ParamsError(f"param sets: not valid JSON ({exc.msg})") from None
    return (sets if isinstance(sets, list) else [sets]), (argv[1] if len(argv) > 1 else PARAMS_FILE)


def main(argv: list[str] | None = None) -> None:
    """Command line: `python -m flows.experiments '<JSON list of param sets>' [--params params.yaml]`."""
    from cli.stage import parser_for

    parser = parser_for("python -m flows.experiments", sweep.__doc__)
    parser.add_argument("param_sets", metavar="PARAM_SETS", nargs="?",
                        help='a JSON list of dotted-key overrides, e.g. \'[{"train.lr": 0.001}, {"train.lr": 0.003}]\'')
    parser.add_argument("params_path", nargs="?", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--params", default=None, metavar="PATH", help="the params file (default: params.yaml here)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    cli = [a for a in (args.param_sets, args.params or args.params_path) if a is not None]
    run_cli("sweep", lambda: sweep(*parse_cli(cli)))


if __name__ == "__main__":
    main()
