"""The generator protocol: the only thing the trainer, evaluator and serving code know about a model.

A generator is an `nn.Module` with:
- a frozen config dataclass (`Config`) that rebuilds it, saved as JSON next to safetensors weights;
- `optimizer_groups()` — named parameter groups, one optimizer each (one for most models; GANs return
  `{"generator": ..., "discriminator": ...}`);
- `train_step(micro_batches, opt)` — one update: forward, backward and `opt.step(group)` for each group. The default
  accumulates `loss(batch)` over the micro-batches into the single group, which fits LMs, RNNs, VAEs and DDPMs;
  a GAN overrides it to step the discriminator, then the generator;
- `sample(n, generator=...)` — unconditional samples drawn with an explicit `torch.Generator`.

Text generators add `nll` (summed negative log-likelihood, for perplexity and bits per byte) and `generate`
(continuation of prompts). Everything model-specific stays in the model's own file, its ONNX graphs included:
`onnx_graphs()` names the computations a consumer outside Python needs (`OnnxGraph`: the module to trace, seeded
example inputs, tensor names, symbolic dims, the parity tolerance) and `onnx_usage()` what it needs besides them (a
sampler's schedule, how outputs become pixels); serving/exports.py writes them out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from models.registry import Declaration, declaration, declaration_of

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "generator.json"


class Optimization(Protocol):
    """What a train step may do with the optimizers the trainer owns."""

    def autocast(self) -> contextlib.AbstractContextManager: ...

    def backward(self, loss: Tensor) -> None: ...

    def step(self, group: str) -> None: ...


class Generator(nn.Module):
    """Base class of every generator family."""

    Config: ClassVar[type]  # frozen dataclass of hyper-parameters
    # Set from the family's declaration in models/registry.py (written there once), see __init_subclass__:
    name: ClassVar[str]  # the key used everywhere: params `model.name`, registry, metrics
    modality: ClassVar[str]  # "text" or "image"
    # True for models that carry state across consecutive training windows (truncated BPTT): the trainer then
    # feeds contiguous streams, batches are (x, y, fresh), and train_state() holds the carried state for resume.
    stateful: ClassVar[bool] = False
    conditional: ClassVar[bool] = False  # True: samples are drawn for requested class labels
    # False for models whose validation loss does not rank checkpoints (GANs): the trainer then keeps the last
    # weights instead of those with the lowest validation loss.
    select_best: ClassVar[bool] = True
    # config fields added since models were first saved, with the value that reproduces a model saved without them
    SAVED_BEFORE_FIELDS: ClassVar[dict[str, Any]] = {}
    declaration: ClassVar[Declaration | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Take name and capabilities from the registry's declaration of this class (none for test doubles)."""
        super().__init_subclass__(**kwargs)
        decl = declaration_of(f"{cls.__module__}:{cls.__qualname__}")
        if decl is not None:
            cls.declaration = decl
            cls.name, cls.modality = decl.name, decl.modality.name
            cls.stateful, cls.conditional, cls.select_best = decl.stateful, decl.conditional, decl.select_best

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Return the parameters each optimizer updates, by group name."""
        return {"model": [p for p in self.parameters() if p.requires_grad]}

    def loss(self, batch: Any) -> Tensor:
        """Return the scalar training loss of one micro-batch (single-objective models)."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss() or override train_step()")

    def train_step(self, micro_batches: Sequence[Any], opt: Optimization) -> dict[str, Tensor]:
        """Run one optimizer update over `micro_batches` (gradient accumulation) and return metrics as 0-dim
        tensors on the model's device: reading them (`float`) waits for the device, so the trainer reads them only
        at its log intervals."""
        total = None
        for batch in micro_batches:
            with opt.autocast():
                loss = self.loss(batch)
            opt.backward(loss / len(micro_batches))
            total = loss.detach() if total is None else total + loss.detach()
        opt.step("model")
        return {"loss": total / len(micro_batches)}

    def compile_targets(self) -> list[nn.Module]:
        """The modules `train.compile` compiles in place (`nn.Module.compile`): those whose forward the training
        step calls."""
        return [self]

    def train_state(self) -> dict[str, Tensor]:
        """Return state beyond the weights that an exact resume needs (e.g. a carried hidden state)."""
        return {}

    def load_train_state(self, state: dict[str, Tensor]) -> None:
        """Restore what `train_state` returned."""

    def sample(self, n: int, *, generator: torch.Generator, **kwargs: Any) -> Any:
        """Draw `n` unconditional samples using `generator` for every random choice."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ persistence

    def save(self, directory: Path) -> None:
        """Write weights (safetensors) and the config that rebuilds the model (JSON) into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        save_model(self, str(directory / WEIGHTS_FILE))
        spec = {"name": self.name, "config": dataclasses.asdict(self.config)}
        (directory / CONFIG_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def n_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------------------------------------ ONNX

    def onnx_graphs(self) -> dict[str, OnnxGraph]:
        """Return, by name, the graphs a consumer needs to run this generator without PyTorch."""
        raise NotImplementedError(f"{type(self).__name__} declares no ONNX graphs")

    def onnx_usage(self) -> dict[str, Any]:
        """Return what a consumer of the ONNX graphs needs besides them (JSON-able), for the export's manifest."""
        return {}


@dataclasses.dataclass(frozen=True)
class OnnxGraph:
    """One computation of a generator, as serving/exports.py exports it to ONNX and checks it with ONNX Runtime.

    `module(*inputs)` returns one tensor or a tuple of them, in `output_names` order; it is traced in eval mode."""

    module: nn.Module
    inputs: tuple[Tensor, ...]  # seeded example inputs: traced, then the first inputs parity is measured on
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    # tensor name -> {axis: symbolic dim}; one name on several tensors is one dim (a batch shared by inputs/outputs)
    dynamic_axes: dict[str, dict[int, str]]
    tolerance: float  # the largest max-abs difference, ONNX Runtime vs PyTorch, the export accepts
    doc: str  # the truth a consumer needs: what it computes, shapes, value ranges
    # More parity inputs at other sizes of the dynamic dims: they prove the dims are not baked in at trace time.
    checks: tuple[tuple[Tensor, ...], ...] = ()


class Traced(nn.Module):
    """`forward(*inputs)` is `fn(owner, *inputs)`: one computation of a generator as a module, for tracing.
    `owner` is a submodule, so its weights become the graph's initializers."""

    def __init__(self, owner: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.owner = owner
        self.fn = fn

    def forward(self, *inputs: Tensor) -> Any:
        return self.fn(self.owner, *inputs)


def scoring_windows(n_tokens: int, block_size: int) -> list[tuple[int, int]]:
    """Cover a stream with (start, end) windows of at most block_size + 1 tokens that overlap by one token, so
    every token after the first is predicted exactly once."""
    return [(s, min(s + block_size + 1, n_tokens)) for s in range(0, n_tokens - 1, block_size)]


class TextGenerator(Generator):
    """A generator of token sequences."""

    modality = "text"

    @torch.inference_mode()
    def token_nll(self, tokens: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
        """Return the NLL (nats, float64) of every token of `tokens` after the first: entry i scores token i + 1.

        Default: independent windows of block_size tokens of context, batched; models with state override this."""
        windows = scoring_windows(len(tokens), self.block_size)
        full = [w for w in windows if w[1] - w[0] == self.block_size + 1]
        tail = [w for w in windows if w[1] - w[0] != self.block_size + 1]
        out = np.zeros(max(len(tokens) - 1, 0), dtype=np.float64)
        for group in [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[w] for w in tail]:
            rows = torch.from_numpy(np.stack([tokens[s:e] for s, e in group]).astype(np.int64)).to(device)
            losses = self.token_losses(rows[:, :-1], rows[:, 1:]).double().cpu().numpy()
            for (s, e), row in zip(group, losses):
                out[s : e - 1] = row
        return out

    def score_stream(self, tokens: np.ndarray, batch_size: int, device: torch.device) -> tuple[float, int]:
        """Return the summed NLL (nats) of every token of `tokens` after the first, and how many were scored."""
        nll = self.token_nll(tokens, batch_size, device)
        return float(nll.sum()), len(nll)

    @property
    def block_size(self) -> int:
        """Return the longest context, in tokens, the model attends to."""
        return self.config.block_size

    def nll(self, x: Tensor, y: Tensor) -> Tensor:
        """Return the summed negative log-likelihood (nats) of targets `y` (B, T) given inputs `x` (B, T)."""
        return self.token_losses(x, y).sum()

    def token_losses(self, x: Tensor, y: Tensor) -> Tensor:
        """Return the negative log-likelihood (nats, float32) of each target of `y` (B, T) given inputs `x`."""
        raise NotImplementedError

    @torch.inference_mode()
    def generate(self, prompt: Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int = 0,
                 generator: torch.Generator | None = None, top_p: float = 1.0,
                 repetition_penalty: float = 1.0) -> Tensor:
        """Continue `prompt` (B, T) by `max_new_tokens` (see `Sampling`). Returns only the new tokens (B, N)."""
        new = list(self.steps(prompt, max_new_tokens, Sampling(temperature, top_k, top_p, repetition_penalty),
                              generator))
        return torch.cat(new, dim=1) if new else prompt[:, :0]

    def steps(self, prompt: Tensor, max_new_tokens: int, sampling: Sampling,
              generator: torch.Generator | None) -> Iterator[Tensor]:
        """Yield the continuation of `prompt` (B, T) one token (B, 1) at a time: what streaming serves."""
        raise NotImplementedError

    def generate_rows(self, prompts: list[list[int]], max_new_tokens: int, sampling: Sampling,
                      generators: list[torch.Generator | None]) -> list[list[int]]:
        """Continue prompts of different lengths, each with its own generator (seed); return the new tokens of
        each. Default: one prompt at a time through `generate`; models that can batch them override this."""
        device = next(self.parameters()).device
        return [self.generate(torch.tensor([p], dtype=torch.long, device=device), max_new_tokens,
                              temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                              repetition_penalty=sampling.repetition_penalty, generator=g)[0].tolist()
                for p, g in zip(prompts, generators)]

    def onnx_usage(self) -> dict[str, Any]:
        return {"vocab_size": self.config.vocab_size, "start_id": self.config.eot_id,
                "tokens": "ids of the tokenizer (tokenizer.json when the export carries it); start_id (the document "
                          "separator) starts unconditional samples"}

    def sample(self, n: int, *, generator: torch.Generator, start_id: int = 0, max_new_tokens: int = 128,
               temperature: float = 1.0, top_k: int = 0) -> Tensor:
        """Sample `n` sequences from a start token (the document separator)."""
        device = next(self.parameters()).device
        start = torch.full((n, 1), start_id, dtype=torch.long, device=device)
        return self.generate(start, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is chosen from the logits: greedy at temperature 0, else sampling among the top_k
    likeliest tokens (0: all) whose probabilities add up to top_p (nucleus; 1: all). A repetition penalty above 1
    makes tokens already in the row less likely (CTRL's rule, as transformers applies it: positive logits divided
    by it, negative ones multiplied)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0


def pick_next(logits: Tensor, sampling: Sampling, generator: torch.Generator | None,
              seen: Tensor | None = None) -> Tensor:
    """Choose the next token of each row from logits (B, V); `seen` (B, L) holds the tokens the repetition penalty
    applies to. Returns (B, 1)."""
    logits = logits.float()
    if sampling.repetition_penalty != 1.0 and seen is not None and seen.numel():
        scores = logits.gather(1, seen)
        scores = torch.where(scores > 0, scores / sampling.repetition_penalty, scores * sampling.repetition_penalty)
        logits = logits.scatter(1, seen, scores)
    if sampling.temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / sampling.temperature
    if 0 < sampling.top_k < logits.size(-1):
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]  # (B, 1) smallest logit that survives
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        drop = probs.cumsum(dim=-1) - probs > sampling.top_p  # tokens after the nucleus (the first always stays)
        logits = logits.scatter(1, order, ordered.masked_fill(drop, float("-inf")))
    probs = torch.softmax(logits, dim=-1)
    if generator is not None and generator.device != probs.device:
        probs = probs.to(generator.device)
    return torch.multinomial(probs, 1, generator=generator).to(logits.device)


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """Put `module` in eval mode for the block and restore its previous mode after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


# ---------------------------------------------------------------------------------------------- pixel convention


def to_unit(x: Tensor) -> Tensor:
    """Map uint8 pixels [0, 255] to float32 in [-1, 1] (x / 127.5 - 1), the generators' convention."""
    if x.dtype != torch.uint8:
        raise TypeError(f"to_unit expects uint8 pixels, got {x.dtype}")
    return x.float() / 127.5 - 1


def to_uint8(x: Tensor) -> Tensor:
    """Map float images in [-1, 1] to uint8 [0, 255] (clamped, rounded): the exact inverse of `to_unit`."""
    if not x.is_floating_point():
        raise TypeError(f"to_uint8 expects floating-point images in [-1, 1], got {x.dtype}")
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class ImageGenerator(Generator):
    """A generator of images.

    Data convention, shared by the trainer, evaluation and serving: a batch is `(x, y)` with `x` float32
    (B, channels, image_size, image_size) scaled to [-1, 1] and `y` int64 class labels (B,) (all 0 when the data
    has no classes). The config dataclass has the fields `image_size`, `channels` and `n_classes`; the trainer
    fills them from the preprocessed data. Every random choice in `loss`/`train_step` draws from torch's global
    RNG (the trainer saves and restores it, so a resumed run is bit-identical); `sample` draws from the explicit
    generator it is given only.
    """

    modality = "image"

    def validation_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """Return a scalar loss on a held-out batch (lower is better when `select_best`). Called under no_grad
        with a fixed RNG seed, so the same batch scores the same every time."""
        return self.loss(batch)

    def sample(self, n: int, *, generator: torch.Generator, labels: Tensor | None = None,
               steps: int | None = None) -> Tensor:
        """Return `n` images (n, C, H, W) in [-1, 1] on the model's device.

        `labels` (n,) selects the classes of a conditional model (ignored otherwise; None draws them uniformly);
        `steps` is the number of sampler steps of iterative samplers (None: the model's default)."""
        raise NotImplementedError

    def onnx_usage(self) -> dict[str, Any]:
        c, size = self.config.channels, self.config.image_size
        return {"image_shape": [c, size, size],
                "to_uint8": "round((clip(x, -1, 1) + 1) * 127.5) as uint8: the pixels of the PNGs serving returns"}


# ---------------------------------------------------------------------------------------------- registry

def generator_class(name: str) -> type[Generator]:
    """Return the generator class registered under `name` (imported only now: choosing one family never imports
    the others)."""
    import importlib

    module, _, cls = declaration(name).target.partition(":")
    return getattr(importlib.import_module(module), cls)


def load_generator(directory: Path, map_location: str | torch.device = "cpu") -> Generator:
    """Rebuild a generator from `directory` (generator.json + model.safetensors) without unpickling anything."""
    spec = json.loads((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8"))
    cls = generator_class(spec["name"])
    model = cls(cls.Config(**(cls.SAVED_BEFORE_FIELDS | spec["config"])))
    load_model(model, str(Path(directory) / WEIGHTS_FILE), device=str(map_location))
    return model.to(map_location)

