"""Compare the image generators on the embedded digits, each through the real pipeline with its default params.

For every generator, `dvc exp run -S model.name=<name>` in a fresh clone (sharing this checkout's .venv) runs
ingest → clean → preprocess → classifier → train → evaluate → register; the script then reads the metrics and times
sampling from the trained weights (after a warm-up): 256 images for the one-shot generators; for DDPM, 64 images
with its fast sampler (DDIM, `model.ddpm.sample_steps`) and 16 images with the full 1000-step ancestral sampler.

Usage: python bench/image_generators.py [--only ddpm] [--steps N]   (writes bench/results/image_generators.json)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("bench.image_generators")

GENERATORS = ("dcgan", "cdcgan", "vae", "ddpm")
METRICS = ("fid", "fid_real_floor", "kid", "kid_real_floor", "inception_score", "inception_score_real", "precision",
           "recall", "precision_real", "recall_real", "class_accuracy", "n_images")


def images_per_second(model_dir: Path, n: int, **kwargs) -> float:
    import torch

    from models.base import load_generator

    model = load_generator(model_dir).eval()
    labels = torch.arange(n) % model.config.n_classes if getattr(model, "conditional", False) else None
    model.sample(min(n, 4), generator=torch.Generator().manual_seed(0),
                 labels=None if labels is None else labels[:4], **kwargs)  # warm-up
    start = time.perf_counter()
    model.sample(n, generator=torch.Generator().manual_seed(1), labels=labels, **kwargs)
    return n / (time.perf_counter() - start)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=GENERATORS, action="append", help="run only these generators")
    parser.add_argument("--steps", type=int, help="override every generator's train max_steps")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="genpipe-imagegen-"))
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    rows = []
    for name in args.only or GENERATORS:
        cmd = ["dvc", "exp", "run", "-n", name, "-S", f"model.name={name}"]
        if args.steps:
            cmd += ["-S", f"model.{name}.train.max_steps={args.steps}"]
        log.info("%s: %s", name, " ".join(cmd))
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=clone, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        ev = json.loads((clone / "metrics/evaluate.json").read_text())
        tr = json.loads((clone / "metrics/train.json").read_text())
        row = {"generator": name, "steps": tr["steps"], **{k: ev.get(k) for k in METRICS},
               "params": tr["n_params"], "train_seconds": tr["train_seconds"],
               "train_images_per_second": tr["images_per_second"], "pipeline_seconds": round(wall, 1)}
        model_dir = clone / "artifacts/train"
        if name == "ddpm":
            row["sampling_images_per_second_ddim50"] = round(images_per_second(model_dir, 64), 2)
            row["sampling_images_per_second_ddpm1000"] = round(
                images_per_second(model_dir, 16, sampler="ddpm", steps=1000), 3)
        else:
            row["sampling_images_per_second"] = round(images_per_second(model_dir, 256), 1)
        rows.append(row)
        log.info(json.dumps(row))
    classifier = json.loads((clone / "metrics/classifier.json").read_text())
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                                 text=True).stdout.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "feature_extractor": {k: classifier.get(k) for k in ("task", "test_accuracy", "steps")},
        "rows": rows,
    }
    out = REPO / "bench" / "results" / "image_generators.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
