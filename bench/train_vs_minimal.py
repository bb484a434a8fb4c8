"""The product's GPT trainer against a minimal GPT trainer written for speed (bench/minimal_gpt.py), and against a
bare loop around Hugging Face's `GPT2LMHeadModel`: tokens/s and validation loss at equal steps, in one process.

Configurations:
- `small-cpu-char`: the minimal trainers' own small CPU config: char-level tokens, 4 layers, 4 heads, 128 dims,
  block 64, batch 12, dropout 0, lr 1e-3 with 100 warm-up steps and cosine to 1e-4, betas (0.9, 0.99), weight
  decay 0.1, clip 1.0, 2,000 steps, fp32;
- `default`: params.yaml as it is (byte-level BPE 2,048, block 128, batch 16, dropout 0.1, 600 steps);
- `lstm-char`, `dcgan`: the product's LSTM (char-level) and DCGAN (embedded digits, 400 steps) against the plain
  PyTorch loops of bench/minimal_rnn_dcgan.py (no bare-HF side; the GAN gets no validation score).

Each configuration prepares its data with the real ingest/clean/preprocess stages on the default corpus, then every
side trains from the same seed for the same number of steps with the same lr schedule (`training.trainer.lr_at`),
batch, optimizer settings, clipping and dtype. The sides alternate in blocks of `--block-steps` steps, the order
rotating every round, so load from other processes falls on all alike; tokens/s per side is the median over its
blocks, the ratio product/other the median of the per-round ratios (with its interquartile range).

The product side is `training.trainer.Trainer` stepped exactly as `Trainer.fit` steps it (`Trainer.step`),
without fit's periodic validation and checkpoints. After the last step each side's final weights score the same
held-out tokens: every non-overlapping window of block_size + 1 tokens of the validation split; reported as mean
nats per token, and the product's paired difference to each other side with its standard error over windows.

With `--profile N`, after the timed run each side runs N more steps under `torch.profiler` (one side after the
other, after the timed ones so they do not perturb them): self CPU time per step by kind of kernel (matrix
products, attention, convolution, recurrent, activation, norm, optimizer and clipping, the rest) and the matrix
products' GFLOP/s from the profiler's FLOP counts, beside what the BLAS reaches on large square products at the
same thread count (`gemm_ceiling_gflops_per_s`): where the time goes, side by side, and how much of it is kernels
already near the machine's ceiling. Self time of the autograd engine and of Python-side module calls falls in
"other", as does the profiler's own cost.

Usage: python bench/train_vs_minimal.py [--configs small-cpu-char default lstm-char dcgan]
       [--sides product minimal hf] [--steps N] [--threads N] [--profile N] [--result NAME]
       (writes bench/results/NAME.json, default train_vs_minimal, unless --steps shortens the runs)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
log = logging.getLogger("bench.train_vs_minimal")

from bench.common import Result, commit_of, load_averages  # noqa: E402

CONFIGS = {
    "small-cpu-char": {"preprocess.tokenizer": "char", "model.gpt.n_layer": 4, "model.gpt.n_head": 4,
                       "model.gpt.n_embd": 128, "model.gpt.block_size": 64, "model.gpt.dropout": 0.0,
                       "train.batch_size": 12, "train.lr": 1e-3, "train.warmup_steps": 100,
                       "train.min_lr_ratio": 0.1, "train.beta2": 0.99, "train.weight_decay": 0.1,
                       "train.grad_clip": 1.0, "train.max_steps": 2000, "train.precision": "fp32"},
    "default": {"train.precision": "fp32"},
    # the other families where a reference is a few lines (bench/minimal_rnn_dcgan.py): the product's defaults
    "lstm-char": {"preprocess.tokenizer": "char", "model.name": "lstm", "train.precision": "fp32"},
    "dcgan": {"model.name": "dcgan", "model.dcgan.train.max_steps": 400, "train.precision": "fp32"},
}
SIDES = {"gpt": ("product", "minimal", "hf"), "lstm": ("product", "minimal"), "dcgan": ("product", "minimal")}
SCORE_BATCH = 32


@dataclass
class Side:
    name: str
    step: Callable[[int], Any]  # update i; returns the loss (a tensor or a float)
    logits: Callable[[torch.Tensor], torch.Tensor]  # eval-mode next-token logits of (B, T) tokens
    module: torch.nn.Module
    tokens_per_step: int
    detail: dict


def prepare(root: Path, overrides: dict) -> Any:
    """Ingest, clean and preprocess the default corpus under `root` with `overrides`; return the params."""
    from config.params import apply_overrides, parse_params, read_params_data
    from tasks.clean import clean
    from tasks.ingest import ingest
    from tasks.preprocess import preprocess

    data = apply_overrides(read_params_data(REPO / "params.yaml"),
                           {"model.name": "gpt", "model.init_from": None, "model.lora": None, **overrides})
    params = parse_params(data, root)
    for stage in (ingest, clean, preprocess):
        stage(params)
    return params


def product_side(params: Any) -> Side:
    from training.trainer import Trainer

    trainer = Trainer(params)
    model = trainer.model.train()
    cfg = trainer.cfg

    def logits(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        return out[0] if isinstance(out, tuple) else out  # recurrent models also return their state

    detail = {"attn_implementation": model.net.config._attn_implementation if hasattr(model, "net") else None,
              "activation": str(model.net.config.activation_function) if hasattr(model, "net") else None,
              "n_params": model.n_params()}
    per_step = cfg.batch_size * cfg.grad_accum * (1 if trainer.image else model.block_size)
    return Side("product", lambda i: trainer.step(i)["loss"], logits, model, per_step, detail)


def minimal_side(params: Any, meta: dict) -> Side:
    from training.trainer import lr_at

    if params.model.name == "lstm":
        return minimal_lstm_side(params, meta)
    if params.model.name == "dcgan":
        return minimal_dcgan_side(params, meta)
    from bench.minimal_gpt import MinimalTrainer

    cfg, hp = params.train, params.model.gpt
    ref = MinimalTrainer(params.preprocess.out_dir, meta["vocab_size"], hp.block_size, hp.n_layer, hp.n_head,
                         hp.n_embd, hp.dropout, cfg.batch_size, cfg.lr, (cfg.beta1, cfg.beta2), cfg.weight_decay,
                         cfg.grad_clip, cfg.seed)
    n_params = sum(p.numel() for p in ref.model.parameters())
    return Side("minimal", lambda i: ref.step(lr_at(i, cfg)), ref.model, ref.model,
                cfg.batch_size * hp.block_size, {"n_params": n_params})


def minimal_lstm_side(params: Any, meta: dict) -> Side:
    from bench.minimal_rnn_dcgan import MinimalLSTMTrainer
    from training.trainer import lr_at

    cfg, hp = params.train, params.model.lstm
    ref = MinimalLSTMTrainer(params.preprocess.out_dir, "lstm", meta["vocab_size"], hp.n_layer, hp.n_embd,
                             hp.n_hidden, hp.dropout, hp.block_size, cfg.batch_size, cfg.lr, (cfg.beta1, cfg.beta2),
                             cfg.weight_decay, cfg.grad_clip, cfg.seed)
    return Side("minimal", lambda i: ref.step(lr_at(i, cfg)), lambda x: ref.model(x)[0], ref.model,
                cfg.batch_size * hp.block_size, {"n_params": sum(p.numel() for p in ref.model.parameters())})


def minimal_dcgan_side(params: Any, meta: dict) -> Side:
    from bench.minimal_rnn_dcgan import MinimalDCGANStep
    from dataprep.tokenize import load_images
    from models.dcgan import DCGAN, DCGANConfig
    from training.trainer import lr_at

    cfg, hp = params.train, params.model.dcgan
    torch.manual_seed(cfg.seed)
    nets = DCGAN(DCGANConfig(image_size=meta["image_size"], channels=meta["channels"], n_z=hp.n_z, ngf=hp.ngf,
                             ndf=hp.ndf))  # the product's architecture and init; the loop is the reference's
    images, _ = load_images(params.preprocess.out_dir, "train")
    ref = MinimalDCGANStep(nets.G, nets.D, images, hp.n_z, cfg.batch_size, cfg.lr, (cfg.beta1, cfg.beta2), cfg.seed)
    return Side("minimal", lambda i: ref.step(lr_at(i, cfg)), None, nets, cfg.batch_size,
                {"n_params": sum(p.numel() for p in nets.parameters())})


def hf_side(params: Any, meta: dict) -> Side:
    """The bare Hugging Face loop: `GPT2LMHeadModel` with transformers' defaults, torch's default AdamW."""
    from bench.train_throughput import bare_hf_model
    from training.trainer import lr_at

    cfg, block, batch = params.train, params.model.gpt.block_size, params.train.batch_size
    model, opt = bare_hf_model(params, meta)
    tokens = np.load(params.preprocess.out_dir / "train.npy", mmap_mode="r")
    gen = torch.Generator().manual_seed(cfg.seed)

    def step(i: int) -> torch.Tensor:
        for group in opt.param_groups:
            group["lr"] = lr_at(i, cfg)
        starts = torch.randint(len(tokens) - block - 1, (batch,), generator=gen).tolist()
        xy = torch.from_numpy(np.stack([tokens[s : s + block + 1] for s in starts]).astype(np.int64))
        logits = model(xy[:, :-1]).logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), xy[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return Side("hf", step, lambda x: model(x).logits, model, batch * block,
                {"n_params": sum(p.numel() for p in model.parameters())})


KERNEL_KINDS = (  # (kind, aten op name prefixes), first match wins; the rest is "other"
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("attention", ("aten::_scaled_dot_product", "aten::_flash_attention")),
    ("convolution", ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d",
                     "aten::_convolution", "aten::mkldnn_convolution_backward")),
    ("recurrent", ("aten::mkldnn_rnn", "aten::_thnn_fused", "aten::lstm", "aten::gru")),
    ("activation", ("aten::gelu", "aten::tanh", "aten::sigmoid", "aten::leaky_relu", "aten::relu")),
    ("norm", ("aten::native_layer_norm", "aten::native_batch_norm", "aten::_batch_norm")),
    ("optimizer", ("aten::_fused_adam", "aten::_foreach", "aten::linalg_vector_norm", "Optimizer.")),
)


def kernel_kind(op: str) -> str:
    return next((kind for kind, prefixes in KERNEL_KINDS if op.startswith(prefixes)), "other")


def profile_side(side: Side, first_step: int, steps: int) -> dict[str, Any]:
    """Run `steps` updates of `side` under torch.profiler; return self CPU ms per step by kernel kind and the
    matrix products' GFLOP/s. The FLOPs come from one more step profiled with shapes (`with_flops`), which is
    left out of the times: recording shapes costs more than some of the kernels it records."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as counted:
        float(side.step(first_step))
    matmul_flops = sum(e.flops or 0 for e in counted.key_averages() if kernel_kind(e.key) == "matmul")
    del counted
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        last = None
        for i in range(first_step + 1, first_step + 1 + steps):
            last = side.step(i)
        float(last)
    ms: dict[str, float] = {kind: 0.0 for kind, _ in KERNEL_KINDS} | {"other": 0.0}
    for event in prof.key_averages():
        ms[kernel_kind(event.key)] += event.self_cpu_time_total / 1e3 / steps
    total = sum(ms.values())
    return {"steps": steps, "self_cpu_ms_per_step": {k: round(v, 2) for k, v in ms.items()},
            "total_ms_per_step": round(total, 2),
            "share": {k: round(v / total, 3) for k, v in ms.items()},
            "matmul_gflops_per_s": round(matmul_flops / ms["matmul"] / 1e6, 1) if ms["matmul"] else None}


def gemm_ceiling(n: int = 1024, repeats: int = 20) -> float:
    """GFLOP/s of torch's float32 (n, n) @ (n, n) at the current thread count, best of `repeats`: what the BLAS does
    on this machine when shapes are no obstacle, the yardstick for the training step's matrix products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return round(2 * n**3 / best / 1e9, 1)


def window_losses(side: Side, tokens: np.ndarray, block_size: int) -> np.ndarray:
    """Mean nats per token of each non-overlapping (block_size + 1)-token window of `tokens`."""
    n = (len(tokens) - 1) // block_size
    starts = np.arange(n) * block_size
    out = []
    side.module.eval()
    with torch.inference_mode():
        for i in range(0, n, SCORE_BATCH):
            rows = torch.from_numpy(np.stack([tokens[s : s + block_size + 1] for s in starts[i : i + SCORE_BATCH]])
                                    .astype(np.int64))
            logits = side.logits(rows[:, :-1])
            nll = F.cross_entropy(logits.flatten(0, 1).float(), rows[:, 1:].flatten(), reduction="none")
            out.append(nll.view(len(rows), -1).mean(dim=1).numpy())
    side.module.train()
    return np.concatenate(out)


def run_config(name: str, overrides: dict, sides: list[str], steps: int | None, block_steps: int,
               warmup: int, profile_steps: int = 0) -> dict:
    """Train every side of one configuration for the same steps, alternating; return rates, ratios and losses."""
    from dataprep.tokenize import load_tokens

    root = Path(tempfile.mkdtemp(prefix=f"genpipe-vs-minimal-{name}-"))
    try:
        params = prepare(root, overrides | ({"train.max_steps": steps} if steps else {}))
        meta = json.loads((params.preprocess.out_dir / "meta.json").read_text())
        make = {"product": lambda: product_side(params), "minimal": lambda: minimal_side(params, meta),
                "hf": lambda: hf_side(params, meta)}
        built = [make[s]() for s in sides if s in SIDES[params.model.name]]
        total = params.train.max_steps
        rates: dict[str, list[float]] = {s.name: [] for s in built}
        losses: dict[str, list[float]] = {s.name: [] for s in built}
        step, r, t0 = 0, 0, time.perf_counter()
        while step < total:
            n = min(block_steps, total - step)
            order = built[r % len(built):] + built[: r % len(built)]
            for side in order:
                start = time.perf_counter()
                last = None
                for i in range(step, step + n):
                    last = side.step(i)
                loss = float(last)  # one host read per block, inside the timed block
                if step >= warmup:  # the first blocks allocate, warm caches and fault pages in
                    rates[side.name].append(n * side.tokens_per_step / (time.perf_counter() - start))
                losses[side.name].append(loss)
            step, r = step + n, r + 1
            if r % 20 == 0:
                log.info("%s: step %d/%d, %.0f s; losses %s", name, step, total, time.perf_counter() - t0,
                         {k: round(v[-1], 3) for k, v in losses.items()})
        image = params.model.name == "dcgan"  # a GAN's losses rank nothing: no validation scores
        val = None if image else load_tokens(params.preprocess.out_dir, "val")
        block = None if image else params.model.hparams.block_size
        scored = {} if image else {s.name: window_losses(s, val, block) for s in built}
        row: dict[str, Any] = {
            "config": name, "overrides": overrides, "steps": total, "block_steps": block_steps,
            "warmup_steps_untimed": warmup, "vocab_size": meta.get("vocab_size"), "tokenizer": meta.get("tokenizer"),
            ("images_per_step" if image else "tokens_per_step"): built[0].tokens_per_step,
            "val_windows": None if image else int(len(scored[built[0].name])),
            "val_tokens_scored": None if image else int(len(scored[built[0].name]) * block),
            "seconds": round(time.perf_counter() - t0, 1),
            "sides": {},
        }
        for s in built:
            row["sides"][s.name] = {
                ("images_per_second" if image else "tokens_per_second"): round(statistics.median(rates[s.name]), 1),
                "blocks": len(rates[s.name]),
                "final_train_loss": round(losses[s.name][-1], 4),
                "val_loss_nats": None if image else round(float(scored[s.name].mean()), 4),
                **s.detail,
            }
        if "product" in rates:
            for other in (s.name for s in built if s.name != "product"):
                ratios = [a / b for a, b in zip(rates["product"], rates[other])]
                q1, _, q3 = statistics.quantiles(ratios, n=4)
                row[f"product_over_{other}"] = {
                    "ratio_median": round(statistics.median(ratios), 3), "interquartile": [round(q1, 3), round(q3, 3)]}
                if not image:
                    diff = scored["product"] - scored[other]
                    row[f"product_over_{other}"] |= {
                        "val_loss_difference": round(float(diff.mean()), 4),
                        "val_loss_difference_se": round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4)}
        if profile_steps:
            row["profile"] = {s.name: profile_side(s, total, profile_steps) for s in built}
            row["profile"]["gemm_ceiling_gflops_per_s"] = gemm_ceiling()
        log.info("%s: %s", name, json.dumps({k: v for k, v in row.items() if k.startswith(("sides", "product_",
                                                                                          "profile"))}))
        return row
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("transformers", "tasks", "httpx", "dataprep", "training"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--sides", nargs="+", default=["product", "minimal", "hf"], choices=["product", "minimal", "hf"])
    parser.add_argument("--steps", type=int, help="train this many steps instead of the config's (a quick look; "
                        "the result goes to the temporary directory)")
    parser.add_argument("--block-steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--warmup", type=int, default=20, help="first steps left out of the rates")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after the timed run, profile N more steps of each side (kernel time by kind)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--result", default="train_vs_minimal", help="result file name in bench/results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = Result(args.result)
    rows = [run_config(c, CONFIGS[c], args.sides, args.steps, args.block_steps, args.warmup, args.profile)
            for c in args.configs]
    figures = {"rows": rows, "torch_threads": torch.get_num_threads(), "loadavg_end": load_averages()}
    if args.steps:
        out = Path(tempfile.gettempdir()) / "train_vs_minimal.quick.json"
        out.write_text(json.dumps(figures, indent=2) + "\n")
        log.info("wrote %s", out)
    else:
        result.write(figures, commit_of(REPO))


if __name__ == "__main__":
    main()
