"""The GPU training path, measured in one short run: the product's own GPT step (models/gpt.py, the trainer's
`Optimizers`: bf16 autocast, TF32, fused AdamW, gradient clipping) on the GPT-2 124M config (12 layers, 12 heads,
768 dims, block 1024, vocab 50,257, dropout 0), eager and with `train.compile`'s in-place compile, as tokens/s
and MFU from `training.flops`; and the product's DDPM UNet step at 32x32 RGB, as iterations/s.

Batches are random token ids / images already on the device: this measures the step, not the data pipeline.
Every figure is the median of `--repeats` timed blocks of `--steps` steps, each block ending in a device sync.

Usage: python bench/gpu_check.py [--batch 16] [--steps 10] [--repeats 3] [--no-compile]
       python bench/gpu_check.py --smoke   (tiny sizes on CPU: checks the script, measures nothing of interest)
Writes bench/results/gpu_check.json (--smoke: the temporary directory).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("bench.gpu_check")

from bench.common import Result  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, device: torch.device, steps: int, repeats: int, warmup: int) -> tuple[list[float], float]:
    """Run `warmup` steps (timed apart: compiling happens there), then `repeats` blocks of `steps`; return the
    seconds per step of each block and the warm-up seconds."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm = time.perf_counter() - t0
    blocks = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        float(loss)
        sync(device)
        blocks.append((time.perf_counter() - t0) / steps)
    return blocks, warm


def optimizers(model, device: torch.device):
    from config.params import TrainParams
    from training.trainer import Optimizers

    return Optimizers(model, TrainParams(precision="auto", lr=3e-4), device)


def gpt_row(args: argparse.Namespace, device: torch.device, compiled: bool) -> dict:
    from models.gpt import GPT, GPTConfig
    from training.flops import gpt_train_flops_per_token, mfu, peak_flops

    if args.smoke:
        cfg = GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64, dropout=0.0)
    else:
        cfg = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(cfg).to(device).train()
    opt = optimizers(model, device)
    if compiled:
        for part in model.compile_targets():
            part.compile()
    x = torch.randint(cfg.vocab_size, (args.batch, cfg.block_size + 1), device=device)
    batch = (x[:, :-1], x[:, 1:])
    blocks, warm = timed(lambda: model.train_step([batch], opt)["loss"], device, args.steps, args.repeats,
                         args.warmup)
    per_token = gpt_train_flops_per_token(cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.vocab_size)
    rate = args.batch * cfg.block_size / statistics.median(blocks)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(name, bf16=opt.dtype is not None) if device.type == "cuda" else None
    share = mfu(rate, per_token, peak)
    row = {"row": f"gpt2-124M config, {'compiled' if compiled else 'eager'}", "n_params": model.n_params(),
           "batch": args.batch, "block_size": cfg.block_size, "precision": "bf16" if opt.dtype else "fp32",
           "compiled": compiled, "warmup_seconds": round(warm, 1), "seconds_per_step": [round(b, 4) for b in blocks],
           "tokens_per_second": round(rate, 1), "train_flops_per_token": per_token,
           "mfu": None if share is None else round(share, 4)}
    log.info("%s", row)
    return row


def ddpm_row(args: argparse.Namespace, device: torch.device) -> dict:
    from models.ddpm import DDPM, DDPMConfig

    torch.manual_seed(0)
    cfg = DDPMConfig(image_size=16 if args.smoke else 32, channels=3,
                     block_out_channels=(16, 32) if args.smoke else (64, 128, 256, 256), layers_per_block=1 if
                     args.smoke else 2, norm_num_groups=8 if args.smoke else 32)
    model = DDPM(cfg).to(device).train()
    opt = optimizers(model, device)
    x = torch.rand(args.image_batch, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    y = torch.zeros(args.image_batch, dtype=torch.long, device=device)
    blocks, warm = timed(lambda: model.train_step([(x, y)], opt)["loss"], device, args.steps, args.repeats,
                         args.warmup)
    it = 1 / statistics.median(blocks)
    row = {"row": f"ddpm unet {cfg.image_size}x{cfg.image_size} RGB, eager", "n_params": model.n_params(),
           "batch": args.image_batch, "block_out_channels": list(cfg.block_out_channels),
           "precision": "bf16" if opt.dtype else "fp32", "warmup_seconds": round(warm, 1),
           "seconds_per_step": [round(b, 4) for b in blocks], "iterations_per_second": round(it, 2),
           "images_per_second": round(it * args.image_batch, 1)}
    log.info("%s", row)
    return row


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="GPT sequences per step")
    parser.add_argument("--image-batch", type=int, default=128, help="DDPM images per step")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiling happens there)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled GPT row")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.image_batch, args.steps, args.repeats, args.warmup = 2, 4, 2, 2, 1
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True  # as the trainer sets them on CUDA
        torch.backends.cudnn.allow_tf32 = True
    else:
        raise SystemExit("no CUDA device: this benchmark measures the GPU path (--smoke checks the script on CPU)")
    result = Result("gpu_check")
    rows = [gpt_row(args, device, compiled=False)]
    if not args.no_compile:
        rows.append(gpt_row(args, device, compiled=True))
    rows.append(ddpm_row(args, device))
    figures = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "rows": rows}
    if args.smoke:
        out = Path(tempfile.gettempdir()) / "gpu_check.smoke.json"
        out.write_text(json.dumps(figures, indent=2) + "\n")
        log.info("wrote %s", out)
    else:
        result.write(figures)


if __name__ == "__main__":
    main()
