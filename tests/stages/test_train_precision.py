"""The train stage's precision and compile settings on the tiny project, run for real on CPU: bf16 autocast (which
CUDA runs by default) exercised where every CI machine can, and train.compile compiling the step in place."""

from __future__ import annotations

import math

import torch

from tasks.train import train
from training.trainer import Trainer


def linear_output_dtypes(trainer: Trainer, steps: int) -> tuple[set[torch.dtype], list[float]]:
    """Run `steps` updates; return the dtypes the Linear/Conv1D layers computed in, and the step losses."""
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
             for m in trainer.model.modules() if type(m).__name__ in ("Linear", "Conv1D")]
    losses = [float(trainer.step(i)["loss"]) for i in range(steps)]
    for h in hooks:
        h.remove()
    return seen, losses


def test_bf16_on_cpu_trains_in_bfloat16_with_float32_weights(staged):
    fp32 = Trainer(staged(train={"precision": "fp32", "device": "cpu"}))
    bf16 = Trainer(staged(train={"precision": "bf16", "device": "cpu"}))
    dtypes32, losses32 = linear_output_dtypes(fp32, 4)
    dtypes16, losses16 = linear_output_dtypes(bf16, 4)
    assert dtypes32 == {torch.float32} and dtypes16 == {torch.bfloat16}  # autocast is on, and only when asked
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # master weights stay fp32
    assert all(math.isfinite(v) for v in losses16)
    assert losses16 != losses32  # the arithmetic differs ...
    assert all(abs(a - b) < 0.05 * a for a, b in zip(losses32, losses16))  # ... but trains the same model
    assert losses16[-1] < losses16[0]


def test_bf16_train_stage_records_its_precision_and_a_finite_validation_loss(staged):
    metrics = train(staged(train={"precision": "bf16", "device": "cpu", "max_steps": 20, "eval_interval": 10}))
    assert metrics["precision"] == "bf16" and math.isfinite(metrics["best_val_loss"])


def test_train_compile_true_compiles_the_step_and_trains_the_same_model_on_cpu(staged):
    eager = Trainer(staged(train={"compile": False, "device": "cpu"}))
    compiled = Trainer(staged(train={"compile": True, "device": "cpu"}))
    assert compiled.compiled and not eager.compiled
    assert all(part._compiled_call_impl is not None for part in compiled.model.compile_targets())
    losses = [(float(eager.step(i)["loss"]), float(compiled.step(i)["loss"])) for i in range(3)]
    assert all(abs(a - b) < 1e-3 * a for a, b in losses)  # same maths, other kernels
