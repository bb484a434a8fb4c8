"""Benchmark what a new user waits for on a fresh clone: install, the default pipeline to a champion, and the overhead
of reruns with nothing to do, both as a no-op `dvc repro` and as a no-op run of the Prefect flow.

Default: `make setup` (a new venv, from the network), then `dvc repro`. With `--shared-venv` the clone's `.venv` is a
link to the venv running this script (no install, works offline) and `make run` is timed from start to champion
(`make -o .venv/.installed run`: make does not recreate the linked venv; the rest of `make run` is unchanged).

Then, both ways: five no-op `dvc repro` (median), and no-op flow runs, `python -m flows.pipeline` as `make flow` runs
it, each starting Prefect's temporary local server (no PREFECT_API_URL): the first with a new Prefect database (the
clone's own PREFECT_HOME), then three more (median). A no-op flow run must skip every stage: the script checks the
flow's per-stage log records (`<stage>: up to date, skipped`, never `stale, running`), that dvc.lock is unchanged and
that `dvc status` is clean, and fails otherwise.

Usage: python bench/fresh_clone.py [--shared-venv] [--keep]   (from the repository root; writes
bench/results/fresh_clone.json, or bench/results/fresh_clone_shared_venv.json with --shared-venv)
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Result, commit_of, fresh_clone, remove_clone, run, stage_env

log = logging.getLogger("bench.fresh_clone")

NOOP_REPROS = 5
NOOP_FLOWS = 3  # after the first one, which also creates the Prefect database


def noop_flow(clone: Path, env: dict[str, str], stages: list[str]) -> dict:
    """Run the flow once with nothing stale; return its wall time and which stages it skipped and ran."""
    lock_before = (clone / "dvc.lock").read_bytes()
    seconds, cpu_seconds, out = run(["python", "-m", "flows.pipeline"], clone, env)
    skipped = sorted(set(re.findall(r"(\w+): up to date, skipped", out)))
    ran = sorted(set(re.findall(r"(\w+): stale, running", out)))
    status = run(["dvc", "status"], clone, env).output
    run_row = {"seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2), "stages_skipped": len(skipped), "stages_reexecuted": len(ran),
               "reexecuted": ran, "dvc_lock_unchanged": (clone / "dvc.lock").read_bytes() == lock_before,
               "dvc_status_clean": "up to date" in status.lower()}
    if ran or skipped != sorted(stages) or not run_row["dvc_lock_unchanged"] or not run_row["dvc_status_clean"]:
        raise SystemExit(f"the no-op flow run was not a no-op: {run_row}\n{out[-3000:]}")
    return run_row


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared-venv", action="store_true",
                        help="link the clone's .venv to this venv and time `make run` without the install")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = parser.parse_args()
    result = Result("fresh_clone_shared_venv" if args.shared_venv else "fresh_clone")

    clone = fresh_clone("genpipe-bench-", shared_venv=args.shared_venv)
    env = stage_env(clone, clone / ".venv")
    figures: dict = {"venv": "shared (a link to this checkout's .venv; no install)" if args.shared_venv
                     else "installed by `make setup`"}
    if args.shared_venv:
        log.info("make run (default pipeline to champion; venv shared)...")
        ran = run(["make", "-o", ".venv/.installed", "run"], clone, env)
        figures["make_run_seconds"], figures["make_run_cpu_seconds"] = round(ran.seconds, 1), round(ran.cpu_seconds, 1)
        log.info("make run: %.1f s (%.1f CPU s)", ran.seconds, ran.cpu_seconds)
    else:
        log.info("installing (make setup)...")
        figures["install_seconds"] = round(run(["make", "setup"], clone, env).seconds, 1)
        log.info("install %.1f s; running the default pipeline (dvc repro)...", figures["install_seconds"])
        figures["default_pipeline_seconds"] = round(run(["dvc", "repro"], clone, env).seconds, 1)

    noop = [run(["dvc", "repro"], clone, env) for _ in range(NOOP_REPROS)]
    figures["noop_repro_seconds"] = [round(r.seconds, 3) for r in noop]
    figures["noop_repro_cpu_seconds"] = [round(r.cpu_seconds, 3) for r in noop]
    figures["noop_repro_seconds_median_of_5"] = round(statistics.median(r.seconds for r in noop), 3)
    log.info("no-op dvc repro: median %.3f s", figures["noop_repro_seconds_median_of_5"])

    stages = list(yaml.safe_load((clone / "dvc.yaml").read_text())["stages"])
    flows = [noop_flow(clone, env, stages) for _ in range(1 + NOOP_FLOWS)]
    figures["noop_flow_runs"] = flows
    figures["noop_flow_first_seconds"] = flows[0]["seconds"]
    figures["noop_flow_seconds_median_of_3"] = round(statistics.median(f["seconds"] for f in flows[1:]), 2)
    figures["noop_flow_stages_reexecuted"] = sum(f["stages_reexecuted"] for f in flows)
    log.info("no-op flow: first %.2f s, then median %.2f s; stages re-executed: %d",
             figures["noop_flow_first_seconds"], figures["noop_flow_seconds_median_of_3"],
             figures["noop_flow_stages_reexecuted"])

    metrics = json.loads((clone / "metrics" / "evaluate.json").read_text())
    train = json.loads((clone / "metrics" / "train.json").read_text())
    registered = json.loads((clone / "metrics" / "register.json").read_text())
    figures.update({
        "train_seconds": train.get("train_seconds"),
        "train_tokens_per_second": train["tokens_per_second"],
        "evaluate_scoring_tokens_per_second": metrics.get("scoring_tokens_per_second"),
        "test_bpb": metrics["test_bpb"],
        "test_unigram_bpb": metrics["test_unigram_bpb"],
        "test_perplexity": metrics["test_perplexity"],
        "bleu": metrics["bleu"],
        "rouge_l": metrics["rouge_l"],
        "champion_version": registered["champion_version"],
    })
    if not registered["champion_version"]:
        raise SystemExit(f"the default run registered no champion: {registered}")
    result.write(figures, commit_of(clone))
    log.info(json.dumps(figures, indent=2))
    if not args.keep:
        remove_clone(clone)


if __name__ == "__main__":
    sys.exit(main())
