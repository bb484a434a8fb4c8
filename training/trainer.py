"""The generic trainer: learning-rate schedule, batches (token windows, BPTT streams, images), optimizers with
clipping and gradient averaging, model building (fresh, from a checkpoint, from a pretrained model), validation,
resumable checkpoints and live MLflow metrics."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from config.catalog import META_FILE, TOKENIZER_FILE, labels_file, split_file
from config.params import Params, TrainParams
from dataprep.tokenize import load_tokens
from models.base import Generator, TextGenerator, generator_class, load_generator, to_unit
from runtime.device import autocast_dtype, compile_enabled, on_cuda_when_auto, pick_device
from runtime.io import read_json, sha256_file
from runtime.progress import Progress as Report
from runtime.progress import describe_duration, eta
from training import ddp
from training.checkpoint import load_checkpoint, save_checkpoint
from training.limits import LONG_RUN_S, available_bytes, check_memory, check_window
from training.pretrained import Pretrained, hf_architecture, resolve_init_from

log = logging.getLogger(__name__)


def lr_at(step: int, cfg: TrainParams) -> float:
    """Return the learning rate for update `step` (0-based): linear warmup, then cosine to lr * min_lr_ratio."""
    warmup = cfg.warmup
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    span = max(cfg.max_steps - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def to_device(array: np.ndarray, device: torch.device) -> Tensor:
    """Move a host array to `device`: through pinned memory and an asynchronous copy on CUDA, so the copy of a batch
    prepared ahead (`Prefetched`) overlaps the step that runs meanwhile."""
    t = torch.from_numpy(array)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class Prefetched:
    """Batches of `source` (TokenWindows, StreamWindows or ImageBatches) prepared one call ahead on a worker
    thread: gathering windows from the memory-mapped arrays, the dtype conversion and, on CUDA, the pinned copy to
    the device overlap the step in progress.

    The resume state stays that of the batches handed out: `state_dict` is the source's state from before the
    batch being prepared was drawn, and `load_state_dict` drops that batch, so a resumed run draws exactly the
    batches an uninterrupted one does."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._state: dict[str, Any] | None = None  # the source's state before the pending batch was drawn

    def __call__(self) -> Any:
        batch = self.source() if self._pending is None else self._pending.result()
        self._state = self.source.state_dict()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        self._pending = self._pool.submit(self.source)
        return batch

    def _drop_pending(self) -> None:
        if self._pending is not None:
            self._pending.result()  # let it finish (and surface its error) before touching the source's state
            self._pending = None
            self.source.load_state_dict(self._state)

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict() if self._pending is None else self._state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._drop_pending()
        self.source.load_state_dict(state)

    def close(self) -> None:
        """Drop the batch prepared ahead (the source's state is that of the batches handed out) and stop the
        worker thread."""
        self._drop_pending()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class TokenWindows:
    """Random (x, y) windows of `block_size` tokens from a token stream, drawn with an explicit generator.

    The generator's state is the data position: saving and restoring it resumes the exact batch sequence.
    Data-parallel: every rank draws the same `world_size` x `batch_size` windows and keeps rows of its `rank`."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, generator: torch.Generator,
                 device: torch.device, rank: int = 0, world_size: int = 1) -> None:
        if len(tokens) <= block_size + 1:
            from runtime.errors import DataError

            raise DataError(f"{len(tokens)} tokens are too few for block_size={block_size}; add data or shorten it")
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.generator, self.device, self.rank, self.world_size = generator, device, rank, world_size

    def __call__(self) -> tuple[Tensor, Tensor]:
        starts = torch.randint(len(self.tokens) - self.block_size - 1, (self.world_size * self.batch_size,),
                               generator=self.generator)
        starts = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        rows = np.stack([self.tokens[s : s + self.block_size + 1] for s in starts.tolist()]).astype(np.int64)
        xy = to_device(rows, self.device)
        return xy[:, :-1], xy[:, 1:]  # (B, T) inputs and (B, T) next-token targets

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class StreamWindows:
    """Consecutive (x, y, fresh) windows for truncated BPTT: the stream is cut into `batch_size` equal streams
    and row b of each batch continues row b of the previous one; `fresh` marks a restart from the beginning.

    The window index is the data position: saving and restoring it resumes the exact batch sequence.
    Data-parallel: the stream is cut into `world_size` x `batch_size` streams and rank `rank` reads its own rows."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, device: torch.device, rank: int = 0,
                 world_size: int = 1) -> None:
        n_streams = world_size * batch_size
        per_stream = (len(tokens) - 1) // n_streams
        if per_stream < block_size + 1:
            from runtime.errors import DataError

            raise DataError(f"{len(tokens)} tokens are too few for {n_streams} streams of block_size={block_size}; "
                            "add data or lower train.batch_size (or train.nproc) or the block size")
        self.tokens, self.block_size, self.device = tokens, block_size, device
        self.starts = [b * per_stream for b in range(rank * batch_size, (rank + 1) * batch_size)]
        self.n_windows = (per_stream - 1) // block_size  # windows in one pass over each stream
        self.position = 0

    def __call__(self) -> tuple[Tensor, Tensor, bool]:
        k = self.position % self.n_windows
        self.position += 1
        offset = k * self.block_size
        rows = np.stack([self.tokens[s + offset : s + offset + self.block_size + 1] for s in self.starts])
        xy = to_device(rows.astype(np.int64), self.device)
        return xy[:, :-1], xy[:, 1:], k == 0

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = state["position"]


class ImageBatches:
    """Random (x, y) batches of images, x scaled to [-1, 1], drawn with replacement with an explicit generator.

    The generator's state is the data position: saving and restoring it resumes the exact batch sequence.
    Data-parallel: every rank draws the same `world_size` x `batch_size` indices and keeps its `rank`'s slice."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, generator: torch.Generator,
                 device: torch.device, rank: int = 0, world_size: int = 1) -> None:
        if len(images) == 0:
            from runtime.errors import DataError

            raise DataError("the training split has no images")
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.generator, self.device, self.rank, self.world_size = generator, device, rank, world_size

    def __call__(self) -> tuple[Tensor, Tensor]:
        idx = torch.randint(len(self.images), (self.world_size * self.batch_size,), generator=self.generator)
        idx = idx.sort().values.numpy()[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return image_batch(self.images, self.labels, idx, self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def image_batch(images: np.ndarray, labels: np.ndarray, idx: np.ndarray, device: torch.device) -> tuple[Tensor, Tensor]:
    """Gather images (uint8, N C H W) and labels at `idx` into an (x in [-1, 1], y) batch on `device`."""
    x = to_unit(to_device(np.ascontiguousarray(images[idx]), device))
    y = to_device(np.asarray(labels[idx], dtype=np.int64), device)
    return x, y  # (B, C, H, W), (B,)


class Optimizers:
    """The optimizers of one model plus the AMP and clipping policy; implements `models.base.Optimization`."""

    def __init__(self, model: Generator, cfg: TrainParams, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.dtype = autocast_dtype(cfg.precision, device)
        self.groups = model.optimizer_groups()
        self.optimizers = {name: self._adamw(params) for name, params in self.groups.items()}
        self.world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _adamw(self, params: list[torch.nn.Parameter]) -> torch.optim.AdamW:
        # Decay matrices (weights, embeddings) only; biases and norm gains are not regularised.
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2),
                                 fused=self.device.type in ("cuda", "cpu"))

    def set_lr(self, lr: float) -> None:
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def step(self, group: str) -> None:
        if self.world_size > 1:  # data-parallel: each rank's gradient -> their mean, as DDP would (training/ddp.py)
            ddp.average_gradients(self.groups[group], self.world_size)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.groups[group], self.cfg.grad_clip)
        self.optimizers[group].step()
        self.optimizers[group].zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def build_model(params: Params, meta: dict, pretrained: Pretrained | None = None) -> Generator:
    """Instantiate the generator named by `model.name`: from `model.init_from` when set, else from its params
    section and what the data fixes (vocabulary; image size, channels and classes)."""
    from runtime.errors import DataError

    modality = meta.get("modality", "text")
    if modality != params.model.modality.name:
        raise DataError(f"the preprocessed data is {modality} but model.name {params.model.name!r} generates "
                        f"{params.model.modality}: rerun preprocess (`dvc repro` does)")
    if pretrained is not None:
        model = _from_checkpoint(params, meta["vocab_size"], meta["eot_id"], pretrained)
    else:
        model = _fresh(params, meta)
    lora = params.model.lora
    if lora is not None:
        from models.gpt import LoraTargetError

        try:
            model = model.with_lora(lora.r, lora.alpha, lora.dropout, lora.target_modules)
        except LoraTargetError as exc:
            from runtime.errors import DataError

            raise DataError(str(exc)) from None
    return model


DATA_FIELDS = ("vocab_size", "eot_id", "image_size", "channels", "n_classes")  # model config fields the data fixes


def _fresh(params: Params, meta: dict) -> Generator:
    from runtime.errors import DataError

    cls = generator_class(params.model.name)
    hparams = params.model.hparams.architecture()
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    extra = {k: meta[k] for k in DATA_FIELDS if k in fields and k in meta}
    if getattr(cls, "conditional", False) and meta.get("n_classes", 0) < 2:
        raise DataError(f"{params.model.name} is class-conditional but the data has {meta.get('n_classes', 0)} "
                        "classes: give images in one subfolder per class (or a label array), or pick another "
                        "generator")
    try:
        return cls(cls.Config(**hparams, **extra))
    except ValueError as exc:  # a combination the architecture cannot build (e.g. image size vs depth)
        raise DataError(f"model.{params.model.name}: {exc}") from None


def _from_checkpoint(params: Params, vocab_size: int, eot_id: int, pretrained: Pretrained) -> Generator:
    from runtime.errors import DataError

    if pretrained.kind == "genpipe":
        model = load_generator(pretrained.model_dir)
        if model.name != params.model.name:
            raise DataError(f"model.init_from: {pretrained.spec!r} is a {model.name} generator, not {params.model.name}")
    else:
        arch = hf_architecture(pretrained.model_dir)
        if arch != "gpt2":
            raise DataError(f"model.init_from: {pretrained.spec!r} is a {arch!r} model; the gpt generator takes gpt2")
        from models.gpt import GPT

        hp = params.model.gpt
        model = GPT.from_hf(pretrained.model_dir, hp.block_size, hp.dropout, eot_id)
    if model.config.vocab_size < vocab_size:
        raise DataError(f"model.init_from: {pretrained.spec!r} has {model.config.vocab_size} token embeddings but "
                        f"its tokenizer has {vocab_size} tokens")
    return model


@torch.no_grad()
def validation_loss(model: Generator, data: Any, cfg: TrainParams, opt: Optimizers, device: torch.device,
                    world_size: int = 1) -> float:
    """Return the mean loss over `eval_batches` batches of the validation split, the same batches every time.

    Text: windows of the validation stream. Images: the split in order, with any randomness of the loss (noise,
    timesteps) drawn from a fixed seed on a forked RNG, so validating never shifts the training RNG.
    Data-parallel (rank 0 alone validates): the batches are those of one process with the global batch size
    `world_size` x batch_size, so the curve does not depend on how the batch is split; text batches are scored in
    slices of batch_size rows (the mean of equal slices' means is the batch mean)."""
    model.eval()
    losses = []
    if isinstance(model, TextGenerator):
        windows = TokenWindows(data, model.block_size, world_size * cfg.batch_size,
                               torch.Generator().manual_seed(cfg.seed + 1), device)
        for _ in range(cfg.eval_batches):
            x, y = windows()
            for rows in range(0, len(x), cfg.batch_size):
                with opt.autocast():
                    losses.append(model.loss((x[rows : rows + cfg.batch_size], y[rows : rows + cfg.batch_size])).item())
    else:
        images, labels = data
        batch_size = world_size * cfg.batch_size
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed + 1)
            for start in range(0, min(len(images), cfg.eval_batches * batch_size), batch_size):
                idx = np.arange(start, min(start + batch_size, len(images)))
                with opt.autocast():
                    losses.append(model.validation_loss(image_batch(images, labels, idx, device)).item())
    model.train()
    return float(np.mean(losses))


def code_digest() -> str:
    """Digest the code of the train stage: every project file `tasks.train` imports (runtime/closure.py), which is
    also what dvc.yaml lists as its code deps.

    A checkpoint written by other code must not be resumed: DVC reruns training when that code changes, and the
    rerun has to train, not return the old run's last checkpoint."""
    from runtime.closure import digest

    return digest("tasks.train")


def run_key(params: Params, data_digest: str) -> str:
    """Digest everything that determines the trained weights: model, training settings, data and code."""
    train = params.train.model_dump(exclude={"out_dir", "checkpoint_dir", "metrics_path", "plots_path",
                                             "steps_plots_path", "log_interval", "device",
                                             "prefetch"})  # prefetching changes no result
    model = {"name": params.model.name, "init_from": params.model.init_from,
             **params.model.hparams.architecture()}  # not the unchosen generators' params
    blob = json.dumps({"model": model, "train": train, "data": data_digest, "code": code_digest()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _start_mlflow(params: Params, run_id: str | None) -> str | None:
    """Open (or reopen, on resume) the MLflow run that receives live metrics; None if tracking is unavailable."""
    try:
        import mlflow

        from registry.tracking import connect, run_exists

        experiment_id = connect(params.register)
        run = mlflow.start_run(run_id=run_id if run_exists(run_id) else None, experiment_id=experiment_id,
                               log_system_metrics=False)
        if run_id is None or run.info.run_id != run_id:
            flat = {f"model.{k}": v for k, v in params.model.hparams.architecture().items()}
            flat |= {"model.name": params.model.name}
            flat |= {f"train.{k}": v for k, v in params.train.model_dump(mode="json").items()}
            mlflow.log_params(flat)
        return run.info.run_id
    except Exception as exc:  # live metrics are a convenience; training must not fail because tracking did
        log.warning("MLflow tracking unavailable, training continues without live metrics: %s", exc)
        return None


def _log_mlflow(metrics: dict[str, float], step: int, run_id: str | None) -> None:
    if run_id is not None:
        import mlflow

        mlflow.log_metrics(metrics, step=step)


GRID_SIDE = 8  # the training-time sample grid: GRID_SIDE x GRID_SIDE images


def _log_sample_grid(model: Generator, seed: int, step: int) -> None:
    """Log a fixed-seed sample grid to the MLflow run (key `samples`, one image per validation step), so a run's
    progress can be watched in the UI. Sampling does not touch the training RNG (it has its own generator)."""
    import mlflow
    from PIL import Image

    from evaluation.image_metrics import grid_png

    n = GRID_SIDE * GRID_SIDE
    labels = (torch.arange(n) // GRID_SIDE) % model.config.n_classes if getattr(model, "conditional", False) else None
    was_training = model.training
    images = model.sample(n, generator=torch.Generator().manual_seed(seed), labels=labels).float().cpu()
    model.train(was_training)
    import io

    mlflow.log_image(Image.open(io.BytesIO(grid_png(images, nrow=GRID_SIDE, scale=2))), key="samples", step=step)


TEXT_SAMPLES, TEXT_SAMPLE_TOKENS, PROMPT_TOKENS = 4, 48, 8  # the samples table logged at each validation


def _log_text_samples(model: Generator, tokenizer, val_tokens: np.ndarray, seed: int, step: int) -> None:
    """Log a table of seeded continuations of validation prompts to the MLflow run (`samples/step_NNNNNN.json`),
    one per validation, so the text a run makes can be read as it trains. Sampling has its own generator and
    leaves the training RNG and a stateful model's carried state untouched."""
    import mlflow

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    offsets = np.linspace(0, max(len(val_tokens) - PROMPT_TOKENS - 1, 0), TEXT_SAMPLES).astype(int)
    prompts = torch.as_tensor(np.stack([val_tokens[o : o + PROMPT_TOKENS] for o in offsets]).astype(np.int64),
                              device=device)
    new = model.generate(prompts, TEXT_SAMPLE_TOKENS, temperature=1.0, top_k=0,
                         generator=torch.Generator(device=device).manual_seed(seed))
    model.train(was_training)
    rows = {"step": [step] * len(offsets), "prompt": [tokenizer.decode(p.tolist()) for p in prompts],
            "sample": [tokenizer.decode(s.tolist()) for s in new]}
    mlflow.log_table(rows, artifact_file=f"samples/step_{step:06d}.json")


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint next to the weights, optimizer moments and RNG states."""

    step: int = 0
    best_val: float = math.inf
    history: list[dict] = field(default_factory=list)  # one row per validation: step, train_loss, val_loss
    run_id: str | None = None  # the MLflow run receiving live metrics
    curve: list[dict] = field(default_factory=list)  # one row per log interval: step, train_loss, lr


class Trainer:
    """Owns one training run of one generator: the model, its optimizers, the data and the checkpoints.

    `world` is this process's place among data-parallel workers (None: training alone)."""

    def __init__(self, params: Params, world: ddp.World | None = None) -> None:
        cfg, data_dir = params.train, params.preprocess.out_dir
        self.params, self.cfg, self.world = params, cfg, world
        self.main = world is None or world.main  # the process that validates and writes
        rank, world_size = (world.rank, world.size) if world else (0, 1)
        self.meta = read_json(data_dir / META_FILE)
        self.image = self.meta.get("modality", "text") == "image"
        inputs = (META_FILE, split_file("train"), split_file("val")) + ((labels_file("train"), labels_file("val")) if self.image else ())
        digest = hashlib.sha256(b"".join(sha256_file(data_dir / f).encode() for f in inputs)).hexdigest()
        self.device = pick_device(cfg.device)
        if world is not None:
            self.device = ddp.join(world, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.seed)
        self.pretrained = resolve_init_from(params)
        if not self.image and self.pretrained is None:  # refuse an impossible size before allocating it
            arch = params.model.hparams.architecture()
            check_window(params.model.name, arch["block_size"], self.meta["train"]["n_tokens"])
            check_memory(params.model.name, arch, self.meta["vocab_size"],
                         cfg.batch_size, available_bytes(self.device.type))
        self.model = build_model(params, self.meta, self.pretrained).to(self.device)
        self.opt = Optimizers(self.model, cfg, self.device)
        if self.image:
            from dataprep.tokenize import load_images

            source = ImageBatches(*load_images(data_dir, "train"), cfg.batch_size,
                                  torch.Generator().manual_seed(cfg.seed), self.device, rank, world_size)
            self.val_data = load_images(data_dir, "val")
        else:
            train_tokens = load_tokens(data_dir, "train")
            if self.model.stateful:
                source = StreamWindows(train_tokens, self.model.block_size, cfg.batch_size, self.device, rank,
                                       world_size)
            else:
                source = TokenWindows(train_tokens, self.model.block_size, cfg.batch_size,
                                      torch.Generator().manual_seed(cfg.seed), self.device, rank, world_size)
            self.val_data = load_tokens(data_dir, "val")
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(data_dir / TOKENIZER_FILE))  # decodes the samples table
        # the training batches; with train.prefetch each is prepared while the step before it runs
        self.windows = Prefetched(source) if on_cuda_when_auto(cfg.prefetch, self.device) else source
        self.compiled = compile_enabled(cfg.compile, self.device)
        if self.compiled:  # in place: the weights keep their names in checkpoints and exports
            for part in self.model.compile_targets():
                part.compile()
        if rank > 0:  # same initial weights everywhere (drawn above); from here each rank its own dropout and noise
            torch.manual_seed(cfg.seed + rank)
        self.ckpt_dir = cfg.checkpoint_dir / run_key(params, digest)

    # ------------------------------------------------------------------------------------------ checkpoints

    def resume(self) -> Progress:
        """Restore the last checkpoint of this exact configuration, if any; else start at step 0."""
        state = load_checkpoint(self.ckpt_dir / "last", self.model)
        if state is None:
            progress = Progress()
        else:
            own = state  # what differs between ranks: RNG states and the carried model state
            if self.world is not None:
                ranks = state.get("ranks") or []
                if len(ranks) != self.world.size:
                    from runtime.errors import DataError

                    raise DataError(f"the checkpoint {self.ckpt_dir / 'last'} was written by {len(ranks) or 1} "
                                    f"data-parallel workers, not {self.world.size}; delete it to start afresh")
                own = ranks[self.world.rank]
            self.opt.load_state_dict(state["optimizers"])
            torch.set_rng_state(own["rng"]["torch"])
            self.windows.load_state_dict(state["data"])  # the data position
            self.model.load_train_state(own["model_state"])
            if "cuda" in own["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(own["rng"]["cuda"])
            log.info("train: resuming from %s at step %d", self.ckpt_dir / "last", state["step"])
            progress = Progress(state["step"], state["best_val"], state["history"], state["run_id"],
                                state.get("curve", []))
        if self.world is not None:  # start from rank 0's weights and buffers, as DDP's constructor does
            ddp.broadcast(t for t in self.model.state_dict().values() if isinstance(t, Tensor))
        return progress

    def _rank_state(self) -> dict[str, Any]:
        """This process's RNG states and carried model state: what a checkpoint needs from each rank."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"rng": rng, "model_state": self.model.train_state()}

    def checkpoint(self, progress: Progress, ranks: list[dict] | None = None) -> None:
        """Write the resumable state; data-parallel, `ranks` holds every rank's `_rank_state` (rank 0's is also
        stored where a single process stores its own)."""
        own = self._rank_state()
        state = {"step": progress.step, "best_val": progress.best_val, "history": progress.history,
                 "curve": progress.curve, "run_id": progress.run_id, "optimizers": self.opt.state_dict(), "rng": own["rng"],
                 "data": self.windows.state_dict(), "model_state": own["model_state"]}
        if ranks is not None:
            state["ranks"] = ranks
        save_checkpoint(self.ckpt_dir / "last", self.model, state)

    def _sync_ranks(self) -> list[dict] | None:
        """Data-parallel, before validating: check the ranks' weights agree, give every rank rank 0's buffers
        (BatchNorm running statistics, which each rank updates from its own slice, as DDP's broadcast_buffers
        would), and return every rank's resume state on rank 0. DDPM's EMA weights need nothing: each rank
        averages the same weights."""
        if self.world is None:
            return None
        ddp.assert_in_sync(self.model)
        ddp.broadcast(self.model.buffers())
        state = self._rank_state()
        state["model_state"] = {k: v.cpu() for k, v in state["model_state"].items()}
        return ddp.gather(state)

    # ------------------------------------------------------------------------------------------ the loop

    def step(self, step: int) -> dict[str, Tensor | float]:
        """Run update `step` (0-based): (1) its learning rate, (2) its micro-batches, (3) forward, backward and
        the optimizer steps inside the model's `train_step`. The metrics stay on the device (no host sync)."""
        self.opt.set_lr(lr_at(step, self.cfg))
        return self.model.train_step([self.windows() for _ in range(self.cfg.grad_accum)], self.opt)

    def fit(self, progress: Progress) -> None:
        """Run updates from `progress.step` to max_steps, validating and checkpointing every eval_interval."""
        from tqdm import tqdm

        cfg, model = self.cfg, self.model
        world_size = self.world.size if self.world else 1
        recent: list[float] = []  # train losses since the last validation
        first_step, started, warned_long = progress.step, time.perf_counter(), False
        model.train()
        bar = tqdm(total=cfg.max_steps, initial=progress.step, desc="train", unit="step",
                   disable=None if self.main else True)
        report = Report("train", cfg.max_steps, log) if self.main else None  # the Prefect UI's bar, log lines
        while progress.step < cfg.max_steps:
            recent.append(self.step(progress.step)["loss"])  # (1)-(3); read on the host only at (4) and (5)
            progress.step += 1
            bar.update(1)
            step = progress.step
            if step % cfg.log_interval == 0 or step == cfg.max_steps:  # (4) log
                if not warned_long and self.main:
                    warned_long = self._warn_if_long(step - first_step, time.perf_counter() - started, step)
                train_loss, lr = self._mean_loss(recent[-cfg.log_interval :]), lr_at(step - 1, cfg)
                progress.curve.append({"step": step, "train_loss": round(train_loss, 5), "lr": lr})
                bar.set_postfix(loss=f"{train_loss:.3f}")
                if report is not None:
                    report.update(step, f"loss {train_loss:.4f}", start_done=first_step, force=step == cfg.max_steps)
                _log_mlflow({"train_loss": train_loss, "lr": lr}, step, progress.run_id)
            if step % cfg.eval_interval and step != cfg.max_steps:
                continue
            # (5) validate, keep best, checkpoint: rank 0 (the others wait for it at their next all-reduce)
            train_loss, recent = self._mean_loss(recent), []
            ranks = self._sync_ranks()
            if not self.main:
                continue
            val = validation_loss(model, self.val_data, cfg, self.opt, self.device, world_size)
            progress.history.append({"step": step, "train_loss": round(train_loss, 5), "val_loss": round(val, 5)})
            _log_mlflow({"val_loss": val}, step, progress.run_id)
            if progress.run_id is not None and math.isfinite(val):  # what the model makes now, in the MLflow UI
                if self.image:
                    _log_sample_grid(model, cfg.seed, step)
                else:
                    _log_text_samples(model, self.tokenizer, self.val_data, cfg.seed, step)
            log.info("train: step %d/%d train_loss %.4f val_loss %.4f", step, cfg.max_steps, train_loss, val)
            if val < progress.best_val or not getattr(model, "select_best", True):  # GANs: keep the last
                progress.best_val = val
                save_checkpoint(self.ckpt_dir / "best", model, {"step": step, "val_loss": val})
            self.checkpoint(progress, ranks)
        bar.close()
        if isinstance(self.windows, Prefetched):
            self.windows.close()

    def _mean_loss(self, losses: list[Tensor | float]) -> float:
        """The mean of per-step losses (device tensors or floats) in one host read; data-parallel, the mean over
        the ranks too (every rank reads at the same steps)."""
        if all(isinstance(v, Tensor) for v in losses):
            mean = torch.stack([v.detach().reshape(()) for v in losses]).double().mean().item()
        else:
            mean = float(np.mean([float(v) for v in losses]))
        return ddp.mean(mean) if self.world else mean

    def _warn_if_long(self, steps_done: int, elapsed_s: float, step: int) -> bool:
        """Warn, from the pace of the steps this run has done, when the rest would take longer than a day; return
        True once checked (the first log interval decides)."""
        remaining = eta(elapsed_s, steps_done, self.cfg.max_steps - step)
        if remaining > LONG_RUN_S:
            log.warning("train: train.max_steps=%d would take about %s more at %.3f s/step (measured over the first "
                        "%d steps); lower train.max_steps unless that is what you want", self.cfg.max_steps,
                        describe_duration(remaining), elapsed_s / max(steps_done, 1), steps_done)
        return True

    def best_model(self, progress: Progress) -> tuple[Generator, int]:
        """Load the weights with the lowest validation loss; refuse if validation never gave a finite loss."""
        best = build_model(self.params, self.meta, self.pretrained)
        state = load_checkpoint(self.ckpt_dir / "best", best)
        if state is None:
            from runtime.errors import UserError

            last = progress.history[-1]["val_loss"] if progress.history else None
            raise UserError(f"training diverged: the validation loss was never finite ({last}); "
                            "lower train.lr or set train.grad_clip")
        return best, state["step"]


def _end_mlflow(run_id: str | None, status: str = "FINISHED") -> None:
    if run_id is not None:
        import mlflow

        mlflow.end_run(status=status)
