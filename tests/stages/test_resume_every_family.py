"""SIGKILL during training at three points, then resume: for every generator family the final weights, optimizer
moments and RNG states are byte-identical to an uninterrupted run's (CPU, same thread count).

What must survive a kill: the data position, torch's RNG, both optimizers of a GAN, the EMA weights and update
count of DDPM, the carried hidden state of an LSTM. Each is checked here by the bytes it leaves in the result.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from config.params import parse_params
from models.base import WEIGHTS_FILE
from runtime.io import read_json
from tasks.clean import clean
from tasks.ingest import ingest
from tasks.preprocess import preprocess
from tasks.train import train
from tests.conftest import REPO_ROOT, TINY_IMAGE, Project, merge

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

STEPS, EVERY, KILLS = 60, 5, 3
_LOOP = {"max_steps": STEPS, "eval_interval": EVERY, "log_interval": EVERY, "warmup_steps": 2}
# The tiny LSTM runs the 15 steps after the last kill point faster than the poll below notices a checkpoint, so
# it trains longer: the kill points (15, 30, 45) stay the same and the run is still going when they are reached.
FAMILIES = {
    "gpt": {"train": {**_LOOP, "batch_size": 4}},
    "gpt, prefetching": {"train": {**_LOOP, "batch_size": 4, "prefetch": True}},  # the default on CUDA only
    "lstm": {"preprocess": {"tokenizer": "char"}, "train": {**_LOOP, "max_steps": 8 * STEPS, "batch_size": 4},
             "model": {"name": "lstm", "lstm": {"n_layer": 1, "n_embd": 8, "n_hidden": 16, "block_size": 8,
                                                "dropout": 0.1}}},
    **{name: merge(TINY_IMAGE, {"model": {"name": name, name: {"train": {**_LOOP, "batch_size": 8}}}})
       for name in ("dcgan", "cdcgan", "vae", "ddpm")},
}


def setup_project(root: Path, family: str) -> tuple[Project, object]:
    project = Project(root)
    if family.startswith(("gpt", "lstm")):
        project.write_corpus()
    else:
        project.write_images(per_class=10)
    project.make_params(**FAMILIES[family])
    params = parse_params(json.loads(json.dumps(project.data)), root=root)
    for stage in (ingest, clean, preprocess):
        stage(params)
    return project, params


def last_step(ckpt_root: Path) -> int:
    steps = []
    for state in list(ckpt_root.glob("*/last/state.json")) + list(ckpt_root.glob("*/last.prev/state.json")):
        try:
            steps.append(dict(json.loads(state.read_text())["state"]["$dict"])["step"])
        except (OSError, ValueError, KeyError):
            pass
    return max(steps, default=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_three_kills_then_resume_give_the_uninterrupted_bytes(tmp_path, family):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    for name in ("GENPIPE_DEBUG", "MLFLOW_TRACKING_URI", "GENPIPE_LOCK_TOKEN"):
        env.pop(name, None)
    killed, params = setup_project(tmp_path / "killed", family)
    rng = random.Random(family)
    kill_steps = []
    for k in range(KILLS):
        proc = subprocess.Popen([sys.executable, "-m", "tasks.train"], cwd=killed.root, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        target = (k + 1) * 3 * EVERY  # a fresh checkpoint past the previous kill
        deadline = time.monotonic() + 180
        while last_step(params.train.checkpoint_dir) < target:
            assert proc.poll() is None, f"train exited ({proc.returncode}) early: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, f"no checkpoint at step {target} within 180 s"
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))  # land anywhere: mid-step, mid-checkpoint-write
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "train finished before the kill: raise STEPS"
        kill_steps.append(last_step(params.train.checkpoint_dir))
    final = subprocess.run([sys.executable, "-m", "tasks.train"], cwd=killed.root, env=env, capture_output=True,
                           text=True, timeout=600, check=False)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "resuming from" in final.stderr
    steps = 8 * STEPS if family == "lstm" else STEPS
    assert len(set(kill_steps)) == KILLS and kill_steps[-1] < steps  # three distinct points before the end

    reference_root = tmp_path / "reference"
    reference_root.mkdir()
    _, ref_params = setup_project(reference_root, family)
    mlflow.set_tracking_uri(ref_params.register.tracking_uri)
    train(ref_params)  # uninterrupted, in this process

    assert (params.train.out_dir / WEIGHTS_FILE).read_bytes() == (ref_params.train.out_dir / WEIGHTS_FILE).read_bytes()
    (key,) = [p.name for p in params.train.checkpoint_dir.iterdir()]
    for name in ("model.safetensors", "tensors.safetensors"):  # weights, optimizer moments, RNG and data state
        ours = params.train.checkpoint_dir / key / "last" / name
        theirs = ref_params.train.checkpoint_dir / key / "last" / name
        assert ours.read_bytes() == theirs.read_bytes(), name
    assert read_json(params.train.plots_path) == read_json(ref_params.train.plots_path)
    assert read_json(params.train.steps_plots_path) == read_json(ref_params.train.steps_plots_path)  # every point
    shutil.rmtree(tmp_path, ignore_errors=True)
