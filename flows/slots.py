"""One deployed run per workspace at a time, queued by the Prefect server instead of refused.

Every flow run a deployment starts (a scheduled retrain, an on-demand experiment, a sweep) first takes the
workspace's slot: a Prefect global concurrency limit of 1 named after the project folder, which `flows.deploy`
creates. A run that finds the slot taken waits for it (the Prefect UI shows it Running, its log says it waits) and
then runs, so overlapping runs queue. Outside deployments (`python -m flows.pipeline`, tests) there is no server
to queue on and no slot is taken; the workspace lock (runtime/lock.py) stays the guard against everything else,
`dvc repro` in a terminal included, which it stops at once with a one-line Busy message.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("flows.slots")

LEASE_S = 600  # the slot's lease, renewed while the run lives; a crashed run's slot frees itself after this


def slot_name(root: Path) -> str:
    """The name of the workspace's global concurrency limit (one per project folder)."""
    digest = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return f"genpipe-workspace-{digest}"


def ensure_slot(root: Path) -> str:
    """Create the workspace's concurrency limit (limit 1) on the Prefect server if it is missing; return its name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    name = slot_name(root)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            log.info("deploy: created the workspace slot %s (one deployed run at a time; others queue)", name)
    return name


@contextlib.contextmanager
def workspace_slot(root: Path) -> Iterator[None]:
    """Hold the workspace slot for the block when this is a deployment's flow run; wait for it if another run
    holds it. A subflow (an experiment's sweep) takes nothing: its parent run holds the slot. Which run holds it is
    read from the flow run itself, not from process state: one serve process runs several flow runs at once."""
    from prefect.context import FlowRunContext
    from prefect.runtime import deployment

    context = FlowRunContext.get()
    if context is None or context.flow_run is None or context.flow_run.parent_task_run_id is not None \
            or deployment.id is None:
        yield
        return
    from prefect.concurrency.sync import concurrency

    name = slot_name(root)
    start = time.monotonic()
    log.info("waiting for the workspace slot %s (another deployed run may hold it)", name)
    with concurrency(name, occupy=1, lease_duration=LEASE_S, strict=False):
        log.info("workspace slot %s acquired after %.1f s", name, time.monotonic() - start)
        yield
