"""Peak memory of the train stage at the default params, against a bare `import torch, transformers` process.

In a fresh clone of the last commit (sharing this venv): `dvc repro preprocess`, then the real stage process,
`python -m tasks.train` as DVC runs it, under `/usr/bin/time -v` (its "Maximum resident set size": the peak RSS of the
largest process) while a poller samples the RSS of the whole process tree with psutil every 0.1 s. For comparison,
the same measurement of `python -c "import torch, transformers"` and of a process that also builds the default
`GPT2LMHeadModel` through transformers (`transformers` imports its model code lazily, so the bare import holds none).

Usage: python bench/train_memory.py [--max-steps N]   (default: the params.yaml value, 600; N overrides
train.max_steps in the clone's params.yaml; writes bench/results/train_memory.json)
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("bench.train_memory")

MB = 1024 * 1024
BUILD_GPT = ("import torch, transformers; from transformers import GPT2Config, GPT2LMHeadModel; "
             "GPT2LMHeadModel(GPT2Config(vocab_size=2048, n_positions=128, n_embd=128, n_layer=4, n_head=4))")


def tree_rss(proc: psutil.Process) -> int:
    """Return the summed RSS (bytes) of `proc` and its descendants (0 once it has exited)."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def measured(cmd: list[str], cwd: Path, env: dict[str, str], out_dir: Path, interval: float = 0.1) -> dict:
    """Run `cmd` under `/usr/bin/time -v`; return wall seconds, its max RSS and the polled peak RSS of the tree."""
    report = out_dir / f"time-{time.monotonic_ns()}.txt"
    log_file = out_dir / f"log-{time.monotonic_ns()}.txt"
    start = time.perf_counter()
    with log_file.open("w") as out:
        proc = subprocess.Popen(["/usr/bin/time", "-v", "-o", str(report), *cmd], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    peak, timeline = [0], []
    ps = psutil.Process(proc.pid)

    def poll() -> None:
        while proc.poll() is None:
            rss = tree_rss(ps)
            peak[0] = max(peak[0], rss)
            timeline.append((round(time.perf_counter() - start, 1), round(rss / MB, 1)))
            time.sleep(interval)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    code = proc.wait()
    poller.join()
    seconds = time.perf_counter() - start
    if code:
        raise SystemExit(f"{' '.join(cmd)} failed with exit {code}:\n{log_file.read_text()[-3000:]}")
    text = report.read_text()

    def field(label: str) -> float:
        return float(re.search(rf"{re.escape(label)}: ([\d.]+)", text).group(1))

    return {"seconds": round(seconds, 1), "cpu_seconds": round(field("User time (seconds)")
                                                               + field("System time (seconds)"), 1),
            "max_rss_mb": round(field("Maximum resident set size (kbytes)") * 1024 / MB, 1),
            "polled_tree_peak_rss_mb": round(peak[0] / MB, 1), "log": log_file,
            "rss_timeline_s_mb": timeline[:: max(1, len(timeline) // 40)]}  # about 40 (seconds, MB) points


def main() -> None:
    from bench.common import Result, commit_of, fresh_clone, remove_clone, run, stage_env

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, help="override train.max_steps (default: params.yaml's)")
    args = parser.parse_args()
    result = Result("train_memory")

    clone = fresh_clone("genpipe-trainmem-")
    env = stage_env(clone)
    if args.max_steps:
        data = yaml.safe_load((clone / "params.yaml").read_text())
        data["train"]["max_steps"] = args.max_steps
        (clone / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    log.info("dvc repro preprocess ...")
    run(["dvc", "repro", "preprocess"], clone, env)
    python = str(clone / ".venv" / "bin" / "python")
    figures = {}
    for name, code in (("bare_import_torch_transformers", "import torch, transformers"),
                       ("import_and_build_default_gpt", BUILD_GPT)):
        row = measured([python, "-c", code], clone, env, clone.parent)
        row.pop("log")
        row.pop("rss_timeline_s_mb")
        figures[name] = row
        log.info("%s: %s", name, row)
    log.info("python -m tasks.train (default params%s) ...",
             f", train.max_steps={args.max_steps}" if args.max_steps else "")
    row = measured([python, "-m", "tasks.train"], clone, env, clone.parent)
    row.pop("log")
    train = json.loads((clone / "metrics" / "train.json").read_text())
    figures["train_stage"] = {**row, "steps": train.get("steps"), "train_seconds": train.get("train_seconds"),
                              "tokens_per_second": train.get("tokens_per_second"), "n_params": train.get("n_params"),
                              "max_steps_override": args.max_steps}
    log.info("train stage: %s", figures["train_stage"])
    figures["train_over_bare_import_mb"] = round(row["max_rss_mb"] - figures["bare_import_torch_transformers"]
                                                 ["max_rss_mb"], 1)
    result.write(figures, commit_of(clone))
    remove_clone(clone)


if __name__ == "__main__":
    main()
