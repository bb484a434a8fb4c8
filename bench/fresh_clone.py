"""Benchmark what a new user waits for: install, the default pipeline, and a no-op `dvc repro`, on a fresh clone.

Usage: python bench/fresh_clone.py [--keep]   (from the repository root; writes bench/results/fresh_clone.json)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.fresh_clone")


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="genpipe-bench-"))
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("VIRTUAL_ENV", None)
    log.info("clone at %s; installing (make setup)...", clone)
    install_s = timed(["make", "setup"], clone, env)
    env["PATH"] = f"{clone / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    log.info("install %.1fs; running the default pipeline (dvc repro)...", install_s)
    run_s = timed(["dvc", "repro"], clone, env)
    noop = [timed(["dvc", "repro"], clone, env) for _ in range(5)]
    metrics = json.loads((clone / "metrics" / "evaluate.json").read_text())
    train = json.loads((clone / "metrics" / "train.json").read_text())
    registered = json.loads((clone / "metrics" / "register.json").read_text())
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                                 text=True).stdout.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "install_seconds": round(install_s, 1),
        "default_pipeline_seconds": round(run_s, 1),
        "noop_repro_seconds_median_of_5": round(statistics.median(noop), 3),
        "train_tokens_per_second": train["tokens_per_second"],
        "test_bpb": metrics["test_bpb"],
        "test_unigram_bpb": metrics["test_unigram_bpb"],
        "test_perplexity": metrics["test_perplexity"],
        "bleu": metrics["bleu"],
        "rouge_l": metrics["rouge_l"],
        "champion_version": registered["champion_version"],
    }
    out = REPO / "bench" / "results" / "fresh_clone.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log.info(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
