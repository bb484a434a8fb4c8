"""Sampling speed of a trained GPT: the pipeline's seeded KV-cache loop against Hugging Face `generate`, same weights.

Usage: python bench/sampling.py [model_dir]   (default artifacts/train, i.e. after `make run`;
writes bench/results/sampling.json). Batch 1, temperature 1, top-k 50, after a warm-up call; lengths within and
beyond the model's context (beyond it, the pipeline re-encodes the latest half-window and continues).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("bench.sampling")


def tokens_per_second(fn, n: int, repeats: int = 3) -> float:
    fn(16)  # warm-up
    best = min(_timed(fn, n) for _ in range(repeats))
    return n / best


def _timed(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn(n)
    return time.perf_counter() - t0


def main() -> None:
    from models.base import load_generator

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "artifacts" / "train"
    model = load_generator(model_dir).eval()
    start = torch.zeros((1, 1), dtype=torch.long)
    block = model.block_size
    rows = []
    for n in (block - 8, 2 * block):
        ours = tokens_per_second(lambda k: model.generate(start, k, temperature=1.0, top_k=50,
                                                          generator=torch.Generator().manual_seed(0)), n)
        row = {"new_tokens": n, "pipeline_tokens_per_second": round(ours, 1)}
        if n < block:  # HF generate cannot go past n_positions
            with torch.inference_mode():
                hf = tokens_per_second(lambda k: model.net.generate(start, max_new_tokens=k, min_new_tokens=k,
                                                                    do_sample=True, top_k=50, pad_token_id=0), n)
            row["hf_generate_tokens_per_second"] = round(hf, 1)
        rows.append(row)
        log.info(json.dumps(row))
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "model_dir": str(model_dir),
              "n_params": model.n_params(), "block_size": block, "rows": rows}
    (REPO / "bench" / "results" / "sampling.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
