"""The project's Prefect deployments, served from this checkout.

- `retrain`: the pipeline flow on params.yaml, on the cron schedule in `flow.cron` (`flow.timezone`); DVC decides
  what reruns, so a scheduled run with no changed code, data or params does nothing.
- `train-on-demand`: one variant (generator, dotted-key overrides) entered in the Prefect UI; validated by the
  params schema and run as a DVC experiment; its model goes through the champion gate.
- `sweep`: a list of param sets run as DVC experiments; the best becomes challenger and is gated once.

Run `python -m flows.deploy` (or `make deploy`) with PREFECT_API_URL pointing at a Prefect server: it applies the
deployments and then executes their runs until stopped (Ctrl-C). Stopping it does not pause the schedules: runs
that come due while nothing serves them wait as Late and start when `make deploy` runs again. Runs start from the Prefect UI, from
`prefect deployment run genpipe-pipeline/retrain`, from the API, or on the schedule.

`python -m flows.deploy --pool NAME` registers the same deployments on a work pool instead and exits: a worker of
that pool (`prefect worker start --pool NAME`, a process pool on a machine holding this checkout) runs them, in
this project's directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from config.params import PARAMS_FILE, Params, load_params
from flows.slots import ensure_slot

RETRAIN, ON_DEMAND, SWEEP = "retrain", "train-on-demand", "sweep"


def deployments(params: Params, params_path: Path, for_pool: bool = False) -> list:
    """Build the three deployments; every run reads `params_path` (absolute, so the runner's cwd is irrelevant).

    `for_pool`: for a work pool's process worker, which imports the flows by module path from the project
    directory (no image and no remote storage: the code is this checkout)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType

    from flows.experiments import experiment, sweep
    from flows.pipeline import pipeline

    path = str(params_path.resolve())
    cfg = params.flow
    schedules = [CronSchedule(cron=cfg.cron, timezone=cfg.timezone)] if cfg.cron else None
    # One retrain at a time: a scheduled run that comes due while the previous one still runs waits for it
    # (ENQUEUE) instead of failing on the workspace lock, which stays as the guard against everything else.
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    where = {"entrypoint_type": EntrypointType.MODULE_PATH,
             "job_variables": {"working_dir": str(params.root.resolve())}} if for_pool else {}
    return [
        pipeline.to_deployment(RETRAIN, schedules=schedules, parameters={"params_path": path},
                               concurrency_limit=one_at_a_time,
                               description="Retrain on the committed params; DVC reruns only what changed.",
                               tags=["genpipe"], **where),
        experiment.to_deployment(ON_DEMAND, parameters={"params_path": path},
                                 description="Train one variant (generator, dotted-key overrides) as a DVC "
                                             "experiment; its model goes through the champion gate.",
                                 tags=["genpipe"], **where),
        sweep.to_deployment(SWEEP, parameters={"params_path": path, "param_sets": []},
                            description="Run param sets as DVC experiments; the best becomes challenger.",
                            tags=["genpipe"], **where),
    ]


def _deploy_on_pool(params: Params, params_path: Path, pool: str) -> None:
    from prefect import deploy

    from runtime.errors import UserError

    try:
        deploy(*deployments(params, params_path, for_pool=True), work_pool_name=pool, build=False, push=False,
               ignore_warnings=True)
    except ValueError as exc:  # e.g. no such work pool
        raise UserError(str(exc)) from None


def main(argv: list[str] | None = None) -> None:
    """Apply the deployments and serve their runs until interrupted, or register them on a work pool (--pool)."""
    from prefect import serve

    from cli.stage import parser_for
    from flows.errors import run_cli

    parser = parser_for("python -m flows.deploy", __doc__)
    parser.add_argument("params_path", nargs="?", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--params", default=None, metavar="PATH", help="the params file (default: params.yaml here)")
    parser.add_argument("--pool", help="register on this work pool (a worker runs them) instead of serving here")
    args = parser.parse_args(argv)
    path = Path(args.params or args.params_path or PARAMS_FILE)
    params = run_cli("deploy", lambda: load_params(path))
    run_cli("deploy", lambda: _reachable(lambda: ensure_slot(params.root)))
    if args.pool:
        run_cli("deploy", lambda: _reachable(lambda: _deploy_on_pool(params, path, args.pool)))
    else:
        # Stopping this process leaves the schedules active (Prefect's default would pause them): runs that come
        # due meanwhile wait, Late, until a serve process or worker is back.
        serve(*deployments(params, path), pause_on_shutdown=False)


def _reachable(call):
    """Run `call`, turning "no Prefect server answers at PREFECT_API_URL" into one line instead of a traceback."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    from runtime.errors import UserError

    try:
        return call()
    except (httpx.ConnectError, httpx.ConnectTimeout, ConnectionError) as exc:
        url = PREFECT_API_URL.value() or "(PREFECT_API_URL is not set)"
        raise UserError(f"no Prefect server answers at {url} ({type(exc).__name__}); start one with "
                        "`make prefect-server` and set PREFECT_API_URL=http://127.0.0.1:4200/api") from None


if __name__ == "__main__":
    main()
