"""Compare the text generators on the default corpus at one step budget, each through the real pipeline.

For every generator, `dvc exp run` in a fresh clone (sharing this checkout's .venv) trains, evaluates and registers
it; the script then reads the metrics and times sampling from the trained weights (batch 1, 256 new tokens,
temperature 1, top-k 50, best of 3 calls after a warm-up).

Usage: python bench/text_generators.py [--steps 600]   (writes bench/results/text_generators.json)
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
log = logging.getLogger("bench.text_generators")

# name -> `dvc exp run -S` settings (the rest is the default params.yaml)
GENERATORS = {
    "gpt-bpe": ["model.name=gpt", "preprocess.tokenizer=bpe"],
    "lstm-char": ["model.name=lstm", "preprocess.tokenizer=char"],
    "gru-char": ["model.name=gru", "preprocess.tokenizer=char"],
    # Both start from version 1, the gpt-bpe model registered by the first row in this clone's registry.
    "gpt-finetuned": ["model.name=gpt", "preprocess.tokenizer=bpe", "model.init_from=models:/text-generator/1"],
    "gpt-lora": ["model.name=gpt", "preprocess.tokenizer=bpe", "model.init_from=models:/text-generator/1",
                 "model.lora={r: 8, alpha: 16, dropout: 0.0, target_modules: [c_attn]}"],
}


def sampling_tokens_per_second(model_dir: Path, n_new: int = 256) -> float:
    import torch

    from bench.sampling import tokens_per_second
    from models.base import load_generator

    model = load_generator(model_dir).eval()
    start = torch.zeros((1, 1), dtype=torch.long)
    return tokens_per_second(lambda k: model.generate(start, k, temperature=1.0, top_k=50,
                                                      generator=torch.Generator().manual_seed(0)), n_new)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="genpipe-textgen-"))
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    rows = []
    for name, settings in GENERATORS.items():
        cmd = ["dvc", "exp", "run", "-n", name, "-S", f"train.max_steps={args.steps}"]
        for s in settings:
            cmd += ["-S", s]
        log.info("%s: %s", name, " ".join(cmd))
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=clone, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        ev = json.loads((clone / "metrics/evaluate.json").read_text())
        tr = json.loads((clone / "metrics/train.json").read_text())
        rows.append({
            "generator": name, "steps": args.steps, "test_bpb": ev["test_bpb"],
            "test_perplexity": ev["test_perplexity"], "bleu": ev["bleu"], "rouge_l": ev["rouge_l"],
            "params_trainable": tr["n_params_trainable"], "params_total": tr["n_params"], "train_seconds": tr["train_seconds"],
            "train_tokens_per_second": tr["tokens_per_second"], "pipeline_seconds": round(wall, 1),
            "sampling_tokens_per_second": round(sampling_tokens_per_second(clone / "artifacts/train"), 1),
            "test_unigram_bpb": ev["test_unigram_bpb"],
        })
        log.info(json.dumps(rows[-1]))
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                                 text=True).stdout.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "rows": rows,
    }
    out = REPO / "bench" / "results" / "text_generators.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
