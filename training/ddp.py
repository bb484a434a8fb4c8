"""Data-parallel training for the train stage: the torchrun launcher and what each worker needs.

With `train.nproc` > 1 the stage function launches `python -m torch.distributed.run --standalone
--nproc_per_node=N -m tasks.train` in the project directory and waits; each worker runs the same stage function,
which finds itself under torchrun (`torchrun_world`) and trains one slice of every global batch.

Gradients are averaged by `average_gradients`, called from the trainer's `Optimizers.step` before clipping and the
optimizer update: flat buckets all-reduced and divided by the world size, the same math as DistributedDataParallel.
The DDP wrapper itself does not fit: its hooks are armed by the wrapper's `forward`, and the generators' train
steps call `loss()` and submodules (a GAN's G and D) directly. Rank 0 alone validates and writes; weights stay
identical on every rank because every rank applies the same averaged gradient to the same weights (checked at
each validation by `assert_in_sync`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from runtime.errors import ParamsError, UserError

if TYPE_CHECKING:
    from config.params import Params

log = logging.getLogger(__name__)

ERRORS_ENV = "GENPIPE_DDP_ERRORS"  # set by the launcher: the directory where a failing worker reports its error
PARAMS_ENV = "GENPIPE_DDP_PARAMS"  # set by the launcher: digest of its params, which the workers must match
BUCKET_BYTES = 25 * 2**20  # gradients all-reduced per collective (DDP's default bucket size)
_WORKER_LINE = re.compile(r"^\[default(\d+)\]:")  # torchrun --tee prefixes each worker's lines with its local rank
COLLATERAL = ("PeerLost", "Terminated")  # failures caused by another worker's


class PeerLost(UserError):
    """A collective operation failed: almost always because another worker stopped first (its error is the cause)."""


@dataclasses.dataclass(frozen=True)
class World:
    """Where this process stands among the data-parallel workers (from torchrun's environment)."""

    rank: int
    size: int
    local_rank: int
    local_size: int  # workers on this machine

    @property
    def main(self) -> bool:
        return self.rank == 0


def torchrun_world() -> World | None:
    """Return this worker's place when torchrun started the process, else None."""
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    if not all(k in os.environ for k in keys):
        return None
    return World(*(int(os.environ[k]) for k in keys))


def params_digest(params: Params) -> str:
    return hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------- launcher


def _die_with_parent(sig: int) -> Callable[[], None]:
    """Return a function that asks Linux to send `sig` to the calling process when its parent dies (a no-op
    elsewhere), so that killing the stage, even with SIGKILL, never leaves workers training behind it.

    prctl is looked up here, not in the returned function: that one runs between fork and exec, where loading a
    library could deadlock on a lock another thread held at the fork."""
    if not sys.platform.startswith("linux"):
        return lambda: None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, sig)  # 1: PR_SET_PDEATHSIG


def launch(params: Params) -> None:
    """Run train.nproc workers under torchrun in the project directory, streaming their output, and wait.

    A failed worker is reported as one line naming its rank and error (the first rank to fail; the others fail
    after it or are stopped by torchrun). The caller's run lock is passed on to the workers: it exports a token
    they recognise (see runtime.lock); called without it held, this takes it."""
    from runtime.lock import run_lock

    n = params.train.nproc
    code_root = str(Path(__file__).resolve().parents[1])  # the workers import this code, whatever the project
    with tempfile.TemporaryDirectory(prefix="genpipe-ddp-") as tmp, \
            run_lock(params.root, f"stage train ({n} data-parallel workers)"):
        errors = Path(tmp) / "errors"
        errors.mkdir()
        env = {**os.environ, ERRORS_ENV: str(errors), PARAMS_ENV: params_digest(params), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (code_root, os.environ.get("PYTHONPATH")) if p)}
        # torchrun would set 1 thread per worker (with a warning); share the cores instead.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "--tee", "3", "--log-dir", str(Path(tmp) / "logs"), "-m", "tasks.train"]
        log.info("train: %d data-parallel workers: %s", n, " ".join(cmd[1:]))
        # torchrun gets SIGTERM if this process dies, and stops its workers; preexec_fn is safe here (see above)
        proc = subprocess.Popen(cmd, cwd=params.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, preexec_fn=_die_with_parent(signal.SIGTERM))  # noqa: PLW1509
        held: list[str] = []  # torchrun's own traceback once a worker failed: replaced by one line below
        try:
            for line in proc.stdout:
                worker = _WORKER_LINE.match(line)
                if worker:
                    sys.stderr.write(f"[rank {worker[1]}] {line[worker.end():]}")
                elif held or line.startswith("Traceback"):
                    held.append(line)
                else:
                    sys.stderr.write(line)
                sys.stderr.flush()
            code = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: torchrun stops its workers on SIGTERM
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if code != 0:
            raise _first_failure(errors, n, code)
        sys.stderr.writelines(held)


def _first_failure(errors: Path, n: int, code: int) -> UserError:
    """Return the error that stopped the workers, from their reports (`worker`): the first error of a rank's own;
    else the ranks that reported nothing (killed by a signal: the others then lost contact or were stopped)."""
    import runtime.errors

    reports = []
    for path in errors.glob("rank*.json"):
        with contextlib.suppress(OSError, ValueError):
            reports.append(json.loads(path.read_text(encoding="utf-8")))
    own = [r for r in reports if r["type"] not in COLLATERAL]
    if own:
        first = min(own, key=lambda r: r["time"])
        cls = getattr(runtime.errors, first["type"], None)
        if not (isinstance(cls, type) and issubclass(cls, UserError)):
            cls = UserError
        return cls(f"rank {first['rank']} of {n}: {first['error']}")
    silent = sorted(set(range(n)) - {r["rank"] for r in reports})
    if silent:
        ranks = ", ".join(map(str, silent))
        return UserError(f"rank {ranks} of {n} stopped without an error of its own (killed by a signal, e.g. for lack "
                         f"of memory?); torchrun exit status {code}, see the log above")
    first = min(reports, key=lambda r: r["time"])
    return UserError(f"rank {first['rank']} of {n}: {first['error']}")


# ---------------------------------------------------------------------------------------------------- workers


@contextlib.contextmanager
def worker(world: World, params: Params) -> Iterator[None]:
    """Run the block as one data-parallel worker: check it trains what the launcher asked for, report a failure
    for the launcher to show in one line, and leave the process group on the way out."""
    _die_with_parent(signal.SIGKILL)()  # torchrun gone: stop at once
    if not world.main:  # one copy of the progress log: rank 0's
        from runtime import PACKAGES

        for name in (*PACKAGES, "__main__"):
            logging.getLogger(name).setLevel(logging.WARNING)

    def stopped(signum: int, frame: Any) -> None:  # by torchrun, once another worker failed: say so, then go
        _report_failure(world, "Terminated", "stopped by torchrun")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, stopped)
    try:
        if world.local_size != params.train.nproc:
            raise ParamsError(f"train.nproc is {params.train.nproc} but torchrun started {world.local_size} "
                              "workers on this machine; pass --nproc_per_node equal to train.nproc")
        digest = os.environ.get(PARAMS_ENV)
        if digest and digest != params_digest(params):
            raise ParamsError(f"the data-parallel workers read {params.root / 'params.yaml'}, which differs from the "
                              "params the train stage was called with; save them to that file")
        yield
    except BaseException as exc:
        text = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        _report_failure(world, type(exc).__name__, text)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _report_failure(world: World, kind: str, text: str) -> None:
    """Tell the launcher (when there is one) why this worker stops: `kind` is the exception's class name."""
    errors = os.environ.get(ERRORS_ENV)
    if not errors:
        return
    report = {"rank": world.rank, "time": time.time(), "type": kind, "error": " ".join(text.split())}  # one line
    with contextlib.suppress(OSError):
        (Path(errors) / f"rank{world.rank}.json").write_text(json.dumps(report), encoding="utf-8")


def join(world: World, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, one GPU per local rank; gloo on CPU) and return this rank's device."""
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    elif device.type == "cpu":
        dist.init_process_group("gloo")
    else:
        raise ParamsError(f"train.nproc > 1 runs on cpu (gloo) or cuda (NCCL), not {device.type}; set train.nproc: 1 "
                          "or train.device: cpu")
    return device


@contextlib.contextmanager
def _collective() -> Iterator[None]:
    """Raise PeerLost, one line, when a collective fails (gloo: "Connection closed by peer")."""
    try:
        yield
    except RuntimeError as exc:  # DistBackendError and gloo's plain RuntimeError
        reason = re.sub(r"^\[[^\]]*\]\s*", "", str(exc)).split(". ")[0]  # drop gloo's "[file.cc:line] "
        raise PeerLost(f"lost contact with the other data-parallel workers (see the first error above): "
                       f"{' '.join(reason.split())}") from exc


def _collective_device(like: Tensor | None = None) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if like is None else like.device


@_collective()
@torch.no_grad()
def average_gradients(params: Iterable[torch.nn.Parameter], world_size: int) -> None:
    """Replace each gradient by its mean over the ranks, all-reducing flat buckets of about BUCKET_BYTES.

    A gradient that is missing on some ranks (a parameter unused there) counts as zeros, so every rank makes the
    same collectives and the same update."""
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32,
                           device=_collective_device(params[0]))
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    grads = []
    for p, used in zip(params, present.tolist()):
        if used and p.grad is None:
            p.grad = torch.zeros_like(p)
        if used:
            grads.append(p.grad)
    for bucket in _buckets(grads):
        flat = torch.cat([g.reshape(-1) for g in bucket])  # (sum of numels,)
        dist.all_reduce(flat)
        flat.div_(world_size)
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def _buckets(tensors: list[Tensor]) -> Iterator[list[Tensor]]:
    """Split `tensors` into consecutive runs of one dtype and device, each at most BUCKET_BYTES (or one tensor)."""
    bucket: list[Tensor] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and (size + nbytes > BUCKET_BYTES or (t.dtype, t.device) != (bucket[0].dtype, bucket[0].device)):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += nbytes
    if bucket:
        yield bucket


@_collective()
def mean(value: float) -> float:
    """Return the mean of `value` over the ranks."""
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


@_collective()
@torch.no_grad()
def broadcast(tensors: Iterable[Tensor]) -> None:
    """Overwrite `tensors` on every rank with rank 0's (in place)."""
    for t in tensors:
        dist.broadcast(t, src=0)


@_collective()
def gather(obj: Any) -> list[Any] | None:
    """Return every rank's `obj` on rank 0 (None elsewhere); tensors in it must be on the CPU."""
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


@torch.no_grad()
def assert_in_sync(module: torch.nn.Module) -> None:
    """Raise if the ranks' weights differ (they must be equal bit for bit: same start, same averaged updates)."""
    params = list(module.parameters())
    fingerprint = torch.stack([p.double().sum() for p in params] + [p.double().square().sum() for p in params])
    fingerprint = fingerprint.to(_collective_device())
    gathered = [torch.empty_like(fingerprint) for _ in range(dist.get_world_size())]
    with _collective():
        dist.all_gather(gathered, fingerprint)
    if not all(torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("data-parallel ranks hold different weights; please report this as a bug")
