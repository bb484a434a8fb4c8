"""What fair promotion costs: re-scoring the champion under the challenger's protocol, against the evaluate stage.

For each generator, in a fresh clone of the last commit (sharing this venv): `dvc repro` with `model.name=<name>`
(images: `max_steps` cut to --steps, since re-scoring cost does not depend on training length, and the guards off
so that version 1 becomes champion whatever its quality; every evaluate setting is the default: 1,000 images for FID/KID/IS, the whole test split for text) registers version 1 as
champion. Then, timed as processes: `python -m tasks.evaluate` (the stage's own time), and `python -m
tasks.register` twice: the first registers version 2 and re-scores version 1 (a cache miss), the second re-uses
that re-score (a hit). The re-scoring seconds come from the comparison the gate records (`comparison.seconds` in
metrics/register.json: loading the champion from the registry, scoring it, the paired bootstrap).

Usage: python bench/rescoring_cost.py [--only gpt] [--steps 100]   (writes bench/results/rescoring.json)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("bench.rescoring")

from bench.common import Result, commit_of, fresh_clone, remove_clone, run, stage_env  # noqa: E402

GENERATORS = ("gpt", "dcgan", "cdcgan", "vae", "ddpm")


def set_params(clone: Path, name: str, steps: int) -> None:
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["model"]["name"] = name
    if name != "gpt":
        params["model"][name]["train"]["max_steps"] = steps
        params["model"][name]["train"]["eval_interval"] = steps
    # a short run may fail the guards; version 1 must become champion for there to be something to re-score
    params["register"].update(min_diversity=0.0, max_memorization=1.0)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def measure(name: str, steps: int) -> dict:
    clone = fresh_clone(f"genpipe-rescore-{name}-")
    try:
        env = stage_env(clone)
        set_params(clone, name, steps)
        run(["dvc", "repro"], clone, env)
        evaluate = run([sys.executable, "-m", "tasks.evaluate"], clone, env)
        miss = run([sys.executable, "-m", "tasks.register"], clone, env)
        first = json.loads((clone / "metrics/register.json").read_text())
        hit = run([sys.executable, "-m", "tasks.register"], clone, env)
        second = json.loads((clone / "metrics/register.json").read_text())
        row = {"generator": name, "evaluate_s": round(evaluate.seconds, 2),
               "register_s_cache_miss": round(miss.seconds, 2), "register_s_cache_hit": round(hit.seconds, 2),
               "rescore_s_cache_miss": first["comparison"]["seconds"],
               "rescore_s_cache_hit": second["comparison"]["seconds"],
               "metric": first["comparison"]["metric"], "n_units": first["comparison"]["n_units"],
               "n_resamples": first["comparison"]["n_resamples"], "decision": first["decision"],
               "gain": first["comparison"]["gain"], "ci": [first["comparison"]["ci_low"], first["comparison"]["ci_high"]]}
        row["rescore_over_evaluate"] = round(row["rescore_s_cache_miss"] / row["evaluate_s"], 3)
        log.info("%s", row)
        return row, commit_of(clone)
    finally:
        remove_clone(clone)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=GENERATORS, action="append")
    parser.add_argument("--steps", type=int, default=100, help="training steps of the image generators")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = Result("rescoring")
    rows, commit = [], None
    for name in args.only or GENERATORS:
        row, commit = measure(name, args.steps)
        rows.append(row)
    result.write({"rows": rows}, commit)


if __name__ == "__main__":
    main()
