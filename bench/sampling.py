"""Sampling speed of the default generators: the GPT's seeded KV-cache loop at batch 1 and 16 (against Hugging Face
`generate`, same weights), DCGAN and VAE images/s, and DDPM's full 1000-step ancestral sampler against DDIM 50 steps.

GPT: trained weights. By default a fresh clone of the last commit (sharing this venv) trains the default model with
`dvc repro train` (the default params.yaml: 600 steps) and that model is timed; `--model-dir DIR` times a model
trained elsewhere instead (e.g. artifacts/train of a clone kept by `bench/fresh_clone.py --shared-venv --keep`),
with the code of a fresh clone all the same. Temperature 1, top-k 50, from the document separator; the best of 3
calls after a warm-up; tokens/s counts every sequence of the batch. Lengths within and beyond the context (beyond
it, the pipeline re-encodes the latest half-window and continues; HF `generate` cannot go past `n_positions`).

Images: freshly initialised models of the default architecture in params.yaml for the embedded digits (16x16,
grayscale, 10 classes). Sampling cost does not depend on the weights' values (fixed step counts, no early stop), so
an untrained model samples at a trained one's speed. DCGAN and VAE: 256 images a call, best of 3 after a warm-up.
DDPM (EMA network, default UNet): DDIM at `model.ddpm.sample_steps` (50) and the 1000-step DDPM sampler, each at
batch 1 and at a larger batch, after a 2-step warm-up.

Usage: python bench/sampling.py [--model-dir DIR]   (writes bench/results/sampling.json)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("bench.sampling")

from bench.common import Timer

GPT_BATCHES = (1, 16)
IMAGE_GENERATORS = ("dcgan", "vae")
DDPM_RUNS = (("ddim", 1, 3), ("ddim", 64, 1), ("ddpm", 1, 1), ("ddpm", 16, 1))  # (sampler, batch, repeats)


def best_of(fn: Callable[[int], object], n: int, repeats: int) -> Timer:
    """Return the timer of the fastest of `repeats` calls `fn(n)`."""
    timers = []
    for _ in range(repeats):
        with Timer() as t:
            fn(n)
        timers.append(t)
    return min(timers, key=lambda t: t.seconds)


def tokens_per_second(fn: Callable[[int], object], n: int, repeats: int = 3, batch: int = 1) -> float:
    """Return the best rate of `fn(n)`, which generates n new tokens for each of `batch` sequences, after a warm-up."""
    fn(16)  # warm-up
    return batch * n / best_of(fn, n, repeats).seconds


def _cpu_over_wall(t: Timer) -> float:
    return round(t.cpu_seconds / t.seconds, 2)


def gpt_rows(model) -> list[dict]:
    """Time the pipeline's `generate` and HF `generate` at each batch size and length."""
    block = model.block_size
    rows = []
    for batch in GPT_BATCHES:
        start = torch.zeros((batch, 1), dtype=torch.long)
        for n in (block - 8, 2 * block):
            def ours(k: int, s=start) -> None:
                model.generate(s, k, temperature=1.0, top_k=50, generator=torch.Generator().manual_seed(0))

            ours(16)  # warm-up
            t = best_of(ours, n, 3)
            row = {"batch": batch, "new_tokens": n, "pipeline_tokens_per_second": round(batch * n / t.seconds, 1),
                   "cpu_over_wall": _cpu_over_wall(t)}
            if n < block:  # HF generate cannot go past n_positions
                with torch.inference_mode():
                    hf = tokens_per_second(
                        lambda k, s=start: model.net.generate(s, attention_mask=torch.ones_like(s), max_new_tokens=k,
                                                              min_new_tokens=k, do_sample=True, top_k=50,
                                                              pad_token_id=0), n, batch=batch)
                row["hf_generate_tokens_per_second"] = round(hf, 1)
            rows.append(row)
            log.info(json.dumps(row))
    return rows


def fresh_image_model(name: str, params_path: Path):
    """Build generator `name` of the default architecture for 16x16 grayscale digits of 10 classes, untrained."""
    from config.params import load_params
    from training.trainer import build_model

    params = load_params(params_path, overrides={"model.name": name})
    meta = {"modality": "image", "image_size": params.preprocess.image_size, "channels": 1, "n_classes": 10}
    return build_model(params, meta).eval()


def image_rows(params_path: Path) -> list[dict]:
    """Time the one-shot image generators (images/s) and DDPM's two samplers (seconds per image)."""
    rows = []
    for name in IMAGE_GENERATORS:
        model = fresh_image_model(name, params_path)
        n = 256

        def draw(k: int, model=model) -> None:
            with torch.inference_mode():
                model.sample(k, generator=torch.Generator().manual_seed(0))

        draw(4)  # warm-up
        t = best_of(draw, n, 3)
        rows.append({"generator": name, "batch": n, "params": model.n_params(),
                     "images_per_second": round(n / t.seconds, 1), "seconds_per_image": round(t.seconds / n, 6),
                     "cpu_over_wall": _cpu_over_wall(t)})
        log.info(json.dumps(rows[-1]))
    model = fresh_image_model("ddpm", params_path)
    for sampler, batch, repeats in DDPM_RUNS:
        steps = model.config.num_train_timesteps if sampler == "ddpm" else model.config.sample_steps

        def draw(k: int, sampler=sampler, steps=steps) -> None:
            with torch.inference_mode():
                model.sample(k, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=steps)

        with torch.inference_mode():
            model.sample(1, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=2)  # warm-up
        t = best_of(draw, batch, repeats)
        rows.append({"generator": "ddpm", "sampler": sampler, "steps": steps, "batch": batch, "repeats": repeats,
                     "params": model.n_params(), "seconds_per_image": round(t.seconds / batch, 4),
                     "images_per_second": round(batch / t.seconds, 3), "cpu_over_wall": _cpu_over_wall(t)})
        log.info(json.dumps(rows[-1]))
    return rows


def main() -> None:
    from bench.common import Result, commit_of, fresh_clone, import_from, remove_clone, run, stage_env

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="a trained GPT (generator.json + weights) to time")
    args = parser.parse_args()
    result = Result("sampling")
    clone = fresh_clone("genpipe-sampling-")
    commit = commit_of(clone)
    if args.model_dir:
        model_dir = args.model_dir.resolve()
        train_info = {"model_dir": str(model_dir)}
        metrics = model_dir.parent.parent / "metrics" / "train.json"  # <clone>/artifacts/train -> <clone>/metrics
        if metrics.exists():
            train = json.loads(metrics.read_text())
            train_info.update(train_steps=train.get("steps"), train_seconds=train.get("train_seconds"))
    else:
        log.info("training the default GPT: dvc repro train ...")
        seconds = run(["dvc", "repro", "train"], clone, stage_env(clone)).seconds
        model_dir = clone / "artifacts" / "train"
        train = json.loads((clone / "metrics" / "train.json").read_text())
        train_info = {"model_dir": "artifacts/train of a fresh clone after `dvc repro train` (default params)",
                      "repro_train_seconds": round(seconds, 1), "train_steps": train.get("steps"),
                      "train_seconds": train.get("train_seconds")}
    import_from(clone)
    from models.base import load_generator

    model = load_generator(model_dir).eval()
    gpt = {**train_info, "n_params": model.n_params(), "block_size": model.block_size, "rows": gpt_rows(model)}
    del model
    images = {"weights": "freshly initialised, default architecture (sampling cost does not depend on the weights)",
              "rows": image_rows(clone / "params.yaml")}
    result.write({"gpt": gpt, "images": images}, commit)
    remove_clone(clone)


if __name__ == "__main__":
    main()
