"""Fault injection: kill `dvc repro` with SIGKILL at random points inside random stages, rerun, and check that
nothing was lost.

In a fresh clone with small params, a baseline `dvc repro` registers a champion. Then, for each trial: set a new
`train.seed` (so training and what follows are new work), start `dvc repro --force` (every stage runs), wait until the chosen stage holds the workspace lock
(`.genpipe/run.lock` names its holder), let it run a random time, SIGKILL dvc and every child, and rerun
`dvc repro`. A trial recovers when the rerun exits 0 and `dvc status` is clean. Data lost counts registered model
versions that no longer load, a champion alias that does not load, and outputs whose content no longer matches
dvc.lock after the rerun.

Usage: python bench/faults.py [--trials 20] [--seed 0]   (writes bench/results/faults.json, prints a table)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("bench.faults")

# Small enough that a trial takes under a minute on 2 CPU cores; train long enough to be killed mid-run.
PARAMS = {
    "preprocess": {"vocab_size": 512},
    "model": {"gpt": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "dropout": 0.0}},
    "train": {"max_steps": 150, "batch_size": 8, "warmup_steps": 5, "eval_interval": 10, "eval_batches": 2,
              "log_interval": 10},
    "evaluate": {"n_prompts": 4, "prompt_tokens": 16, "continuation_tokens": 8, "n_samples": 2, "sample_tokens": 16},
}
# Where to kill, and how long after the stage starts at most (seconds); weighted towards the long stages.
STAGES = {"ingest": 1.5, "clean": 0.5, "preprocess": 1.5, "train": 6.0, "evaluate": 3.0, "register": 3.0}


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def holder(root: Path) -> str:
    try:
        return json.loads((root / ".genpipe" / "run.lock").read_text() or "{}").get("what", "")
    except (OSError, ValueError):
        return ""


def registry_check(root: Path, name: str) -> tuple[int, int, bool]:
    """Return (versions, versions that fail to load, champion loads)."""
    code = f"""
import json, mlflow
mlflow.set_tracking_uri("sqlite:///{root / 'mlflow.db'}")
client = mlflow.MlflowClient()
versions = client.search_model_versions("name='{name}'")
bad = 0
for v in versions:
    try:
        mlflow.pyfunc.load_model(f"models:/{name}/{{v.version}}")
    except Exception:
        bad += 1
try:
    mlflow.pyfunc.load_model("models:/{name}@champion"); champion = True
except Exception:
    champion = False
print(json.dumps([len(versions), bad, champion]))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    tmp = Path(tempfile.mkdtemp(prefix="genpipe-faults-"))
    root = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(root)], check=True)
    params = deep_merge(yaml.safe_load((root / "params.yaml").read_text()), PARAMS)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("GENPIPE_LOCK_TOKEN", None)

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)

    run("git", "commit", "-qam", "small params for fault injection")
    assert run("dvc", "repro").returncode == 0, "baseline dvc repro failed"
    name = "text-generator"
    rows = []
    for trial in range(1, args.trials + 1):
        stage = rng.choices(list(STAGES), weights=[1, 1, 1, 3, 1, 1])[0]
        delay = round(rng.uniform(0, STAGES[stage]), 3)
        before, _, _ = registry_check(root, name)
        # A new seed each trial: train, evaluate and register meet inputs never seen before (no run-cache to
        # fall back on), so recovering means resuming from the checkpoint and finishing the work.
        params["train"]["seed"] = 1000 + trial
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        proc = subprocess.Popen(["dvc", "repro", "--force"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        seen, inside = False, False
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if holder(root).startswith(f"stage {stage} "):
                seen = True
                time.sleep(delay)
                inside = holder(root).startswith(f"stage {stage} ")
                break
            time.sleep(0.005)
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        t0 = time.perf_counter()
        rerun = run("dvc", "repro")
        recover_s = time.perf_counter() - t0
        status = run("dvc", "status")
        clean = rerun.returncode == 0 and "up to date" in status.stdout
        versions, bad, champion = registry_check(root, name)
        lost = bad + (0 if champion else 1) + (0 if clean else 1) + max(0, before - versions)
        row = {"trial": trial, "stage": stage, "delay_s": delay, "stage_seen": seen, "killed": killed,
               "killed_inside_stage": inside and killed, "rerun_exit": rerun.returncode,
               "recover_seconds": round(recover_s, 1), "dvc_status_clean": clean, "versions": versions,
               "versions_unloadable": bad, "champion_loads": champion, "data_lost": lost,
               "traceback_in_rerun": "Traceback" in rerun.stderr}
        rows.append(row)
        log.info(json.dumps(row))
    summary = {"faults_injected": sum(r["killed"] for r in rows),
               "killed_inside_the_chosen_stage": sum(r["killed_inside_stage"] for r in rows),
               "runs_recovered": sum(r["dvc_status_clean"] for r in rows),
               "data_lost": sum(r["data_lost"] for r in rows)}
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "commit": run("git", "rev-parse", "--short", "HEAD").stdout.strip(),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
              "summary": summary, "rows": rows}
    (REPO / "bench" / "results" / "faults.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| trial | stage | kill after (s) | killed inside | rerun exit | recovered in (s) | dvc status clean | data lost |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['trial']} | {r['stage']} | {r['delay_s']} | {r['killed_inside_stage']} | {r['rerun_exit']} | "
              f"{r['recover_seconds']} | {r['dvc_status_clean']} | {r['data_lost']} |")
    print(json.dumps(summary))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
