"""Training throughput of the pipeline's trainer against a bare PyTorch loop, and test quality at equal wall-clock time.

Both sides train the same Hugging Face GPT-2 config on the same token array with the same batch, dtype (fp32 on
CPU), dropout, optimizer settings and torch threads, in one process:

- product: `training.trainer.Trainer` built from params (data made by the real ingest/clean/preprocess stages in a
  temporary project), stepped exactly as `Trainer.fit` steps it: `opt.set_lr(lr_at(step))`, then
  `model.train_step([windows() ...], opt)` (forward, loss, backward, grad clipping, fused AdamW, zero_grad). Fit's
  validation and checkpoint writes every `eval_interval` steps are left out of the timed blocks; their cost is
  measured apart (`eval_checkpoint_seconds`).
- bare: what a user writes in ten lines: `GPT2LMHeadModel(GPT2Config(...))` with transformers' defaults,
  `torch.optim.AdamW(model.parameters(), ...)` with torch's defaults, random windows from the memory-mapped token
  array, `loss.backward(); clip_grad_norm_; opt.step(); opt.zero_grad()`. Same lr schedule (`lr_at`), betas,
  weight decay and clipping as the product, so both do the same maths, but for one detail a ten-line loop skips:
  the product exempts biases and norm gains from weight decay.

Throughput: after a warm-up, blocks of N steps (default 1) alternate product, bare, bare, product, ... (the order
flips every round) for `--row-seconds`, so load from other processes on a shared machine falls on both sides alike;
each side's figure is the median over its blocks, and the ratio is the median of the per-round ratios product/bare
(with its interquartile range, and the ratio of the two medians).

Equal time (`--budget`): fresh models on the default params train for the same wall-clock budget each, in
alternating slices of `--slice` seconds (again so that load falls on both alike). The lr schedule is the product's
warm-up + cosine (`lr_at` over `train.max_steps`), driven by the fraction of its budget each side has used, so
each side runs the whole schedule in the steps it reaches. Then test bits per byte of each on the real test split,
with the product's definition (summed NLL over `scoring_windows` / test bytes, `evaluation.scoring.bits_per_byte`).

`--compile` adds a row timing torch.compile of the product's network (cold-cache compile time, steady-state speed,
and whether it pays over `train.max_steps`). `--threads N` sets torch's threads for both sides: on a 2-core machine
shared with other busy processes, torch's default 2 OpenMP threads spin-wait and run several times slower, so
`--threads 1` measures the code rather than the scheduler.

Usage: python bench/train_throughput.py [--quick] [--threads N] [--row-seconds S] [--budget S] [--compile]
(writes bench/results/train_throughput.json; --quick: a ~1-minute smoke run, written to the temporary directory)
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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers is imported later, inside the functions
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
log = logging.getLogger("bench.train_throughput")

# name -> params overrides on top of the repository's params.yaml (model.gpt and train sections)
ROWS = {
    "small-cpu": {"model.gpt.block_size": 64, "train.batch_size": 12},  # 4 layers, 4 heads, 128 dims (the defaults)
    "default": {},  # params.yaml as it is: block 128, batch 16
}
PROFILE_ROWS = 10


@dataclass
class Loop:
    """One side of the comparison: `step(i)` runs training update i and returns its loss."""

    name: str
    step: Callable[[int], float]
    model: torch.nn.Module
    tokens_per_step: int
    trainer: Any = None  # product: the training.trainer.Trainer
    optimizer: torch.optim.Optimizer | None = None  # bare: its AdamW


# ---------------------------------------------------------------------------------------------------- the two sides


def prepare_project(root: Path) -> dict:
    """Build the text data with the real stages (default embedded corpus) in `root`; return the params data."""
    from config.params import apply_overrides, parse_params, read_params_data
    from tasks.clean import clean
    from tasks.ingest import ingest
    from tasks.preprocess import preprocess

    data = apply_overrides(read_params_data(REPO / "params.yaml"), {"model.name": "gpt", "model.init_from": None,
                                                                     "model.lora": None})
    params = parse_params(data, root)
    for stage in (ingest, clean, preprocess):
        stage(params)
    return data


def product_loop(data: dict, root: Path, overrides: dict, schedule: Callable[[int], float] | None = None) -> Loop:
    """The pipeline's trainer, stepped as `Trainer.fit` steps it (without its periodic validation/checkpoint)."""
    from config.params import apply_overrides, parse_params
    from training.trainer import Trainer, lr_at

    trainer = Trainer(parse_params(apply_overrides(data, overrides), root))
    cfg, model = trainer.cfg, trainer.model
    model.train()
    recent: list[float] = []

    def step(i: int) -> float:
        trainer.opt.set_lr(schedule(i) if schedule else lr_at(i, cfg))
        metrics = model.train_step([trainer.windows() for _ in range(cfg.grad_accum)], trainer.opt)
        recent.append(metrics["loss"])
        return metrics["loss"]

    return Loop("product", step, model, cfg.batch_size * cfg.grad_accum * model.block_size, trainer=trainer)


def bare_hf_model(params: Any, meta: dict) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """`GPT2LMHeadModel` of the params' GPT config with transformers' defaults, and torch's default AdamW, seeded
    with train.seed: what a ten-line loop trains."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg, hp = params.train, params.model.gpt
    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=meta["vocab_size"], n_positions=hp.block_size, n_embd=hp.n_embd,
                                       n_layer=hp.n_layer, n_head=hp.n_head, resid_pdrop=hp.dropout,
                                       embd_pdrop=hp.dropout, attn_pdrop=hp.dropout)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            weight_decay=cfg.weight_decay)
    return model, opt


def bare_loop(data: dict, root: Path, overrides: dict, schedule: Callable[[int], float] | None = None) -> Loop:
    """A ten-line PyTorch loop on the same config, data, batch and optimizer settings."""
    from config.params import apply_overrides, parse_params
    from training.trainer import lr_at

    params = parse_params(apply_overrides(data, overrides), root)
    cfg, block, batch = params.train, params.model.gpt.block_size, params.train.batch_size
    model, opt = bare_hf_model(params, json.loads((params.preprocess.out_dir / "meta.json").read_text()))
    tokens = np.load(params.preprocess.out_dir / "train.npy", mmap_mode="r")
    gen = torch.Generator().manual_seed(cfg.seed)

    def step(i: int) -> float:
        for group in opt.param_groups:
            group["lr"] = schedule(i) if schedule else lr_at(i, cfg)
        starts = torch.randint(len(tokens) - block - 1, (batch,), generator=gen).tolist()
        xy = torch.from_numpy(np.stack([tokens[s : s + block + 1] for s in starts]).astype(np.int64))
        logits = model(xy[:, :-1]).logits  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), xy[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return Loop("bare", step, model, batch * block, optimizer=opt)


# ---------------------------------------------------------------------------------------------------- measuring


def warm_up(loops: list[Loop], n: int) -> dict[str, float]:
    """Run steps 0..n-1 of each loop; return each one's first-step seconds (allocation, tracing, compiling)."""
    first = {}
    for loop in loops:
        t0 = time.perf_counter()
        loop.step(0)
        first[loop.name] = time.perf_counter() - t0
        for i in range(1, n):
            loop.step(i)
    return first


def interleave(a: Loop, b: Loop, first_step: int, block_steps: int, seconds: float, min_rounds: int) -> dict:
    """Alternate blocks of `block_steps` steps of a and b (the order flips every round) for `seconds` of wall
    time and at least `min_rounds` rounds; return per-block tokens/s of each and the per-round ratios a/b.

    Short blocks put a and b close in time, so load from other processes falls on both alike; medians drop the
    blocks it hit hardest."""
    rates: dict[str, list[float]] = {a.name: [], b.name: []}
    step, t_end, r = first_step, time.perf_counter() + seconds, 0
    while r < min_rounds or time.perf_counter() < t_end:
        for loop in (a, b) if r % 2 == 0 else (b, a):
            t0 = time.perf_counter()
            for i in range(step, step + block_steps):
                loop.step(i)
            rates[loop.name].append(block_steps * loop.tokens_per_step / (time.perf_counter() - t0))
        step, r = step + block_steps, r + 1
    ratios = [x / y for x, y in zip(rates[a.name], rates[b.name])]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return {"rates": rates, "ratios": ratios, "rounds": r, "last_step": step, "summary": {
        f"{a.name}_tokens_per_second": round(statistics.median(rates[a.name]), 1),
        f"{b.name}_tokens_per_second": round(statistics.median(rates[b.name]), 1),
        f"ratio_{a.name}_over_{b.name}": round(statistics.median(ratios), 3),  # median of the per-round ratios
        "ratio_interquartile": [round(q1, 3), round(q3, 3)],
        "ratio_of_medians": round(statistics.median(rates[a.name]) / statistics.median(rates[b.name]), 3),
        "rounds": r, "steps_per_block": block_steps}}


def profile_table(loop: Loop, first: int, n: int) -> list[dict]:
    """Profile n steps; return the top ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(first, first + n):
            loop.step(i)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1e3 / n, 2),
             "self_cpu_pct": round(100 * e.self_cpu_time_total / total, 1), "calls_per_step": e.count // n}
            for e in events[:PROFILE_ROWS]]


def throughput_row(name: str, data: dict, root: Path, overrides: dict, args: argparse.Namespace) -> dict:
    """Interleave product and bare blocks of equal step counts; report medians, ratio and profiles."""
    product, bare = product_loop(data, root, overrides), bare_loop(data, root, overrides)
    warm_up([product, bare], args.warmup_steps)
    run = interleave(product, bare, args.warmup_steps, args.block_steps, args.row_seconds, args.min_rounds)
    trainer = product.trainer
    eval_ckpt = eval_checkpoint_seconds(trainer)
    row = {
        "row": name,
        "config": {"n_layer": trainer.params.model.gpt.n_layer, "n_head": trainer.params.model.gpt.n_head,
                   "n_embd": trainer.params.model.gpt.n_embd, "block_size": product.model.block_size,
                   "batch_size": trainer.cfg.batch_size, "dropout": trainer.params.model.gpt.dropout,
                   "vocab_size": trainer.meta["vocab_size"], "n_params": product.model.n_params()},
        "tokens_per_step": product.tokens_per_step, "warmup_steps": args.warmup_steps,
        **run["summary"],
        "product_blocks_tokens_per_second": [round(x) for x in run["rates"]["product"]],
        "bare_blocks_tokens_per_second": [round(x) for x in run["rates"]["bare"]],
        "attn_implementation": {"product": product.model.net.config._attn_implementation,
                                "bare": bare.model.config._attn_implementation},
        "activation_function": {"product": product.model.net.config.activation_function,
                                "bare": bare.model.config.activation_function},
        "adamw": {"product": _adamw_kind(next(iter(trainer.opt.optimizers.values()))),
                  "bare": _adamw_kind(bare.optimizer)},
        # what Trainer.fit adds every eval_interval steps and the timed blocks leave out
        "eval_checkpoint_seconds": round(eval_ckpt, 3),
        "eval_interval": trainer.cfg.eval_interval,
    }
    if args.profile_steps:
        step = run["last_step"] + 1
        row["profile_steps"] = args.profile_steps
        row["profile_product"] = profile_table(product, step, args.profile_steps)
        row["profile_bare"] = profile_table(bare, step, args.profile_steps)
    log.info("%s: product %.0f, bare %.0f tokens/s, ratio %.3f", name, row["product_tokens_per_second"],
             row["bare_tokens_per_second"], row["ratio_product_over_bare"])
    return row


def _adamw_kind(opt: torch.optim.Optimizer) -> str:
    d = opt.defaults
    return "fused" if d.get("fused") else "foreach" if d.get("foreach") else "default (fused=None, foreach=None)"


def eval_checkpoint_seconds(trainer) -> float:
    """Time one validation + best/last checkpoint write, as Trainer.fit does every eval_interval steps."""
    from training.checkpoint import save_checkpoint
    from training.trainer import Progress, validation_loss

    t0 = time.perf_counter()
    val = validation_loss(trainer.model, trainer.val_data, trainer.cfg, trainer.opt, trainer.device)
    save_checkpoint(trainer.ckpt_dir / "best", trainer.model, {"step": 0, "val_loss": val})
    trainer.checkpoint(Progress(step=0, best_val=val))
    return time.perf_counter() - t0


def compile_row(data: dict, root: Path, args: argparse.Namespace) -> dict:
    """Does torch.compile pay over a default run? The product eager against the product with its network compiled
    in place (`model.net.compile()`, which keeps the checkpoint's weight names), interleaved like the rows above.
    Compile time is for a cold cache (a fresh inductor cache directory), as on the first run of a fresh clone."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor-cache")
    eager, compiled = product_loop(data, root, {}), product_loop(data, root, {})
    compiled.name = "compiled"
    compiled.model.net.compile()
    first = warm_up([eager, compiled], args.warmup_steps)  # the compiled side compiles in its first step
    run = interleave(compiled, eager, args.warmup_steps, args.block_steps, args.row_seconds, args.min_rounds)
    eager_s = eager.tokens_per_step / statistics.median(run["rates"]["product"])
    compiled_s = eager.tokens_per_step / statistics.median(run["rates"]["compiled"])
    compile_s = first["compiled"] - first["product"]
    max_steps = eager.trainer.cfg.max_steps
    saved = eager_s - compiled_s
    row = {
        "row": "default, torch.compile (inductor)", "cxx_compiler": shutil.which("c++") or shutil.which("g++"),
        "compile_seconds_cold_cache": round(compile_s, 1), **run["summary"],
        "max_steps": max_steps,
        "run_seconds_eager": round(max_steps * eager_s, 1),
        "run_seconds_compiled_with_compile": round(compile_s + max_steps * compiled_s, 1),
        "break_even_steps": round(compile_s / saved) if saved > 0 else None,
        "pays_over_max_steps": bool(saved > 0 and compile_s / saved < max_steps),
    }
    log.info("compile: %.0f s to compile, %.3fx steady state, break-even %s steps (run: %d)", compile_s,
             row["ratio_compiled_over_product"], row["break_even_steps"], max_steps)
    return row


# ---------------------------------------------------------------------------------------------------- equal time


def bare_nll(model: torch.nn.Module, tokens: np.ndarray, block_size: int, batch_size: int) -> float:
    """Summed NLL (nats) of the test stream over the same windows and batches as `TextGenerator.score_stream`."""
    from models.base import scoring_windows

    windows = scoring_windows(len(tokens), block_size)
    full = [w for w in windows if w[1] - w[0] == block_size + 1]
    tail = [w for w in windows if w[1] - w[0] != block_size + 1]
    total = 0.0
    model.eval()
    with torch.inference_mode():
        for group in [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[w] for w in tail]:
            rows = torch.from_numpy(np.stack([tokens[s:e] for s, e in group]).astype(np.int64))
            logits = model(rows[:, :-1]).logits
            total += F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="sum").item()
    return total


def equal_time_run(data: dict, root: Path, seed: int, budget: float, slice_s: float) -> dict:
    """Train both sides from `train.seed=seed` for `budget` seconds each (alternating slices) on the default config;
    return the steps each reached and the test bpb of each."""
    from config.params import apply_overrides, parse_params
    from dataprep.tokenize import load_tokens
    from evaluation.scoring import bits_per_byte
    from training.trainer import lr_at

    overrides = {"train.seed": seed}
    params = parse_params(apply_overrides(data, overrides), root)
    cfg = params.train
    used = {"product": 0.0, "bare": 0.0}
    # lr by the fraction of its own budget each side has used: the whole warm-up + cosine in whatever steps it gets
    loops = {name: make(data, root, overrides, schedule=lambda i, name=name: lr_at(
        min(int(used[name] / budget * cfg.max_steps), cfg.max_steps - 1), cfg))
        for name, make in (("product", product_loop), ("bare", bare_loop))}
    same_init = all(torch.equal(a, b) for a, b in zip(loops["product"].model.net.state_dict().values(),
                                                      loops["bare"].model.state_dict().values()))
    steps = {"product": 0, "bare": 0}
    losses: dict[str, list[float]] = {"product": [], "bare": []}
    order = ["product", "bare"]
    while any(used[k] < budget for k in order):
        for name in order:
            end = min(used[name] + slice_s, budget)
            while used[name] < end:
                t0 = time.perf_counter()
                losses[name].append(loops[name].step(steps[name]))
                used[name] += time.perf_counter() - t0
                steps[name] += 1
        order.reverse()
    test = load_tokens(params.preprocess.out_dir, "test")
    n_bytes = json.loads((params.preprocess.out_dir / "meta.json").read_text())["test"]["n_bytes"]
    product = loops["product"].model.eval()
    nll = {"product": product.score_stream(test, params.evaluate.batch_size, torch.device("cpu"))[0],
           "bare": bare_nll(loops["bare"].model, test, params.model.gpt.block_size, params.evaluate.batch_size)}
    result = {"seed": seed, "identical_initial_weights": same_init}
    for name in ("product", "bare"):
        result[name] = {"steps": steps[name], "seconds": round(used[name], 1),
                        "tokens_per_second": round(steps[name] * loops[name].tokens_per_step / used[name], 1),
                        "train_loss_mean_last_10": round(float(np.mean(losses[name][-10:])), 4),
                        "test_bpb": round(bits_per_byte(nll[name], n_bytes), 4)}
    log.info("equal time %ss, seed %d: product %d steps, test bpb %.4f; bare %d steps, test bpb %.4f", budget, seed,
             steps["product"], result["product"]["test_bpb"], steps["bare"], result["bare"]["test_bpb"])
    return result


def equal_time(data: dict, root: Path, args: argparse.Namespace) -> dict:
    """Equal-wall-clock runs for each seed, and their means."""
    from config.params import parse_params

    cfg = parse_params(data, root).train
    runs = [equal_time_run(data, root, seed, args.budget, args.slice) for seed in args.seeds]
    mean = {side: {"steps": round(statistics.mean(r[side]["steps"] for r in runs), 1),
                   "test_bpb": round(statistics.mean(r[side]["test_bpb"] for r in runs), 4)}
            for side in ("product", "bare")}
    return {
        "budget_seconds_per_side": args.budget, "slice_seconds": args.slice, "config": "default params.yaml",
        "lr_schedule": f"lr_at (warm-up {cfg.warmup_steps}, cosine to {cfg.min_lr_ratio} x {cfg.lr}) over "
                       f"max_steps={cfg.max_steps}, indexed by the fraction of its budget each side has used",
        "weights_scored": "final (no best-of-validation selection on either side)",
        "runs": runs, "mean": mean,
        "bpb_difference_product_minus_bare": [round(r["product"]["test_bpb"] - r["bare"]["test_bpb"], 4)
                                              for r in runs],
    }


# ---------------------------------------------------------------------------------------------------- main


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("transformers", "tasks", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a ~1-minute smoke run")
    parser.add_argument("--block-steps", type=int, default=1, help="steps per timed block")
    parser.add_argument("--row-seconds", type=float, default=40.0, help="timed wall-clock per row (both sides)")
    parser.add_argument("--min-rounds", type=int, default=10, help="timed blocks per side and row, at least")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--profile-steps", type=int, default=5, help="steps profiled per side (0: no profile)")
    parser.add_argument("--budget", type=float, default=60.0, help="equal-time training budget per side, seconds")
    parser.add_argument("--slice", type=float, default=5.0, help="equal-time alternation slice, seconds")
    parser.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[1337, 1],
                        help="train.seed of each equal-time run, comma-separated")
    parser.add_argument("--no-equal-time", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile of the product's network (minutes of compiling on 2 cores)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for both sides (default: torch's)")
    parser.add_argument("--out", type=Path, help="result file (default bench/results/train_throughput.json; "
                        "--quick: the system temporary directory, so a smoke run never replaces the result)")
    args = parser.parse_args()
    if args.quick:
        args.row_seconds, args.min_rounds, args.warmup_steps, args.profile_steps = 4.0, 4, 2, 2
        args.budget, args.slice, args.seeds = min(args.budget, 8.0), 2.0, args.seeds[:1]

    if args.threads:
        torch.set_num_threads(args.threads)
    load_start, t_start = os.getloadavg(), time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="genpipe-trainbench-"))
    try:
        data = prepare_project(tmp)
        rows = [throughput_row(name, data, tmp, overrides, args) for name, overrides in ROWS.items()]
        compiled = compile_row(data, tmp, args) if args.compile else None
        eq = None if args.no_equal_time else equal_time(data, tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    import transformers

    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True, check=False).stdout.strip(),
        "command": "python bench/train_throughput.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
                    "torch_interop_threads": torch.get_num_interop_threads(), "device": "cpu", "dtype": "float32",
                    "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}},
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.perf_counter() - t_start, 1),
        "rows": rows,
        "compile": compiled,
        "equal_time": eq,
    }
    out = args.out or (Path(tempfile.gettempdir()) / "train_throughput.quick.json" if args.quick
                       else REPO / "bench" / "results" / "train_throughput.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s in %.0fs", out, result["seconds"])


if __name__ == "__main__":
    main()
