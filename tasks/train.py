"""train: one generic trainer for every generator, resumable from its last checkpoint.

The loop, per update: (1) set the learning rate (linear warmup, then cosine); (2) draw `grad_accum` micro-batches;
(3) `model.train_step` does forward/backward and steps its optimizers (gradient clipping inside `step`);
(4) every `log_interval` steps log the loss; (5) every `eval_interval` steps validate, keep the best weights and
write a resumable checkpoint (weights, optimizer moments, every RNG state, step and data position).

Checkpoints live under `train.checkpoint_dir/<key>/`, where the key digests the model, train params and data: a
rerun with the same inputs resumes where a killed run stopped; any change starts afresh.

With `train.nproc` > 1 the stage runs data-parallel (training/ddp.py): every rank draws the same global batch of
nproc x batch_size rows and keeps its own slice; gradients are averaged over the ranks in `Optimizers.step`; rank 0
alone validates and writes checkpoints, outputs and MLflow logs.
"""

from __future__ import annotations

import logging
import time

from config.catalog import RUN_FILE
from config.params import Params
from registry.tracking import check_reachable
from runtime.io import atomic_path, read_json, write_json
from training import ddp
from training.trainer import Prefetched, Trainer, _end_mlflow, _start_mlflow

log = logging.getLogger(__name__)


def train(params: Params) -> dict:
    """Train the chosen generator; write the best weights to `train.out_dir`, metrics and the loss curve.

    With train.nproc > 1, launch that many data-parallel workers under torchrun, each running this function (it
    finds itself under torchrun), and return the metrics rank 0 wrote."""
    world = ddp.torchrun_world()
    if world is None:
        check_reachable(params.register)  # in seconds, not after hours of training that register cannot log
        if params.train.nproc > 1:
            ddp.launch(params)
            return read_json(params.train.metrics_path)
        return _train(params, None)
    with ddp.worker(world, params):
        return _train(params, world if world.size > 1 else None)


def _train(params: Params, world: ddp.World | None) -> dict:
    cfg = params.train
    n_workers = world.size if world else 1
    main = world is None or world.main  # one copy of each notice: rank 0's
    if cfg.warmup != cfg.warmup_steps and main:
        log.warning("train: warmup_steps=%d is not below max_steps=%d: %s instead (a tenth of the run); set %s "
                    "to choose", cfg.warmup_steps, cfg.max_steps,
                    f"warming up over {cfg.warmup} steps" if cfg.warmup else "no warmup",
                    params.train_key("warmup_steps"))
    shadowed = params.shadowed_train()
    if shadowed and main:  # one line: which loop values are used, and why
        log.warning("train: model.%s.train replaces these train settings (the generator's own loop settings win; "
                    "set model.%s.train.<key> to change one): %s", params.model.name, params.model.name,
                    ", ".join(f"{k} {ours!r} -> {used!r}" for k, (ours, used) in shadowed.items()))
    trainer = Trainer(params, world)
    progress = trainer.resume()
    first_step = progress.step
    progress.run_id = _start_mlflow(params, progress.run_id) if trainer.main else None
    model = trainer.model
    n_total, n_trainable = model.n_params(), model.n_params(trainable_only=True)
    log.info("train: %s with %.2fM parameters (%d trainable, %.2f%%) on %s%s%s, %d steps", model.name,
             n_total / 1e6, n_trainable, 100 * n_trainable / n_total, trainer.device,
             f" x {n_workers} data-parallel workers" if world else "", " (bf16 autocast)" if trainer.opt.dtype else "",
             cfg.max_steps)
    start = time.perf_counter()
    try:
        trainer.fit(progress)
        if not trainer.main:
            return {}
        best, best_step = trainer.best_model(progress)
    except BaseException:
        _end_mlflow(progress.run_id, "FAILED")
        raise
    seconds, steps_run = time.perf_counter() - start, cfg.max_steps - first_step

    with atomic_path(cfg.out_dir) as out:
        best.save(out)
        write_json(out / RUN_FILE, {"run_id": progress.run_id})
    # text: tokens per step; images: images per step (of the global batch: every worker's)
    per_step = n_workers * cfg.batch_size * cfg.grad_accum * (1 if trainer.image else model.block_size)
    throughput = "images_per_second" if trainer.image else "tokens_per_second"
    rate = per_step * steps_run / seconds if steps_run else None
    metrics = {
        "best_val_loss": round(progress.best_val, 5),
        "best_step": best_step,
        "final_train_loss": progress.history[-1]["train_loss"],
        "n_params": n_total,
        "n_params_trainable": n_trainable,
        "trainable_fraction": round(n_trainable / n_total, 6),
        "steps": cfg.max_steps,
        throughput: None if rate is None else round(rate, 1),
        "train_seconds": round(seconds, 1),  # of this invocation (a resumed run counts only its own steps)
        "device": trainer.device.type,
        "precision": "bf16" if trainer.opt.dtype is not None else "fp32",  # what train.precision resolved to
        "compiled": trainer.compiled,  # what train.compile resolved to
        "prefetched": isinstance(trainer.windows, Prefetched),  # what train.prefetch resolved to
        "nproc": n_workers,
    }
    metrics |= _utilisation(model, trainer, rate, n_workers)
    write_json(cfg.metrics_path, metrics)
    if progress.run_id:
        _log_utilisation(progress.run_id, metrics)
    write_json(cfg.plots_path, progress.history)
    write_json(cfg.steps_plots_path, progress.curve)
    _end_mlflow(progress.run_id)
    log.info("train: done in %.1fs, best val_loss %.4f at step %s", seconds, progress.best_val, best_step)
    return metrics


def _utilisation(model, trainer, rate: float | None, n_workers: int) -> dict:
    """GPT: training FLOPs per token, and on a CUDA device in the peak table, the model FLOPs utilisation (of all
    workers' devices together)."""
    if model.name != "gpt":
        return {}
    from training.flops import gpt_train_flops_per_token, mfu, peak_flops

    c = model.config
    per_token = gpt_train_flops_per_token(c.n_layer, c.n_embd, c.block_size, c.vocab_size)
    out = {"train_flops_per_token": per_token}
    if trainer.device.type == "cuda" and rate is not None:
        import torch

        name = torch.cuda.get_device_name(trainer.device)
        peak = peak_flops(name, bf16=trainer.opt.dtype is not None)
        share = mfu(rate, per_token, None if peak is None else peak * n_workers)
        out |= {"device_name": name, "mfu": None if share is None else round(share, 4)}
    return out


def _log_utilisation(run_id: str, metrics: dict) -> None:
    """Put throughput and MFU on the training run (still open), beside its loss curves."""
    import mlflow

    numbers = {k: float(metrics[k]) for k in ("tokens_per_second", "images_per_second", "mfu", "train_flops_per_token")
               if isinstance(metrics.get(k), (int, float))}
    if numbers and mlflow.active_run() and mlflow.active_run().info.run_id == run_id:
        mlflow.log_metrics(numbers)


if __name__ == "__main__":
    from cli.stage import main

    main(train)
