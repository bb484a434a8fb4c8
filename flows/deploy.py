"""The project's Prefect deployments, served from this checkout.

- `retrain`: the pipeline flow on params.yaml, on the cron schedule in `flow.cron` (`flow.timezone`); DVC decides
  what reruns, so a scheduled run with no changed code, data or params does nothing.
- `train-on-demand`: one variant (generator, dotted-key overrides) entered in the Prefect UI; validated by the
  params schema and run as a DVC experiment; its model goes through the champion gate.
- `sweep`: a list of param sets run as DVC experiments; the best becomes challenger and is gated once.

Run `python -m flows.deploy` (or `make deploy`) with PREFECT_API_URL pointing at a Prefect server: it applies the
deployments and then executes their runs until stopped (Ctrl-C). Runs start from the Prefect UI, from
`prefect deployment run genpipe-pipeline/retrain`, from the API, or on the schedule.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tasks.params import PARAMS_FILE, Params, load_params

RETRAIN, ON_DEMAND, SWEEP = "retrain", "train-on-demand", "sweep"


def deployments(params: Params, params_path: Path) -> list:
    """Build the three deployments; every run reads `params_path` (absolute, so the runner's cwd is irrelevant)."""
    from prefect.client.schemas.schedules import CronSchedule

    from flows.experiments import experiment, sweep
    from flows.pipeline import pipeline

    path = str(params_path.resolve())
    cfg = params.flow
    schedules = [CronSchedule(cron=cfg.cron, timezone=cfg.timezone)] if cfg.cron else None
    return [
        pipeline.to_deployment(RETRAIN, schedules=schedules, parameters={"params_path": path},
                               description="Retrain on the committed params; DVC reruns only what changed.",
                               tags=["genpipe"]),
        experiment.to_deployment(ON_DEMAND, parameters={"params_path": path},
                                 description="Train one variant (generator, dotted-key overrides) as a DVC "
                                             "experiment; its model goes through the champion gate.",
                                 tags=["genpipe"]),
        sweep.to_deployment(SWEEP, parameters={"params_path": path, "param_sets": []},
                            description="Run param sets as DVC experiments; the best becomes challenger.",
                            tags=["genpipe"]),
    ]


def main(argv: list[str] | None = None) -> None:
    """Apply the deployments and serve their runs until interrupted."""
    from prefect import serve

    from flows.errors import run_cli

    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0] if argv else PARAMS_FILE)
    params = run_cli("deploy", lambda: load_params(path))
    serve(*deployments(params, path))


if __name__ == "__main__":
    main()
