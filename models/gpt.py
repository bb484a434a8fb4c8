"""GPT-2-family causal language model: Hugging Face `GPT2LMHeadModel` behind the generator protocol.

The network is transformers' (one well-tested implementation, loadable by the whole HF ecosystem); this file only
maps params to a `GPT2Config`, defines the loss, and samples with an explicit `torch.Generator` through the KV
cache (HF `generate` takes no generator, so seeded sampling would otherwise depend on global RNG state). Two
choices make training faster than transformers' defaults on CPU, with the same maths: the fused tanh-GELU kernel,
and causal attention that skips SDPA's generic kernel when attention dropout is on (`_causal_attention`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.base import OnnxGraph, Sampling, TextGenerator, pick_next

ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}  # GPTConfig.activation -> transformers' name


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int  # from the tokenizer
    block_size: int = 128  # context length (GPT-2's n_positions)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1  # embedding, attention and residual dropout alike
    eot_id: int = 0  # document separator: start token for unconditional samples
    n_positions: int | None = None  # position table size; defaults to block_size (larger for checkpoints like gpt2)
    # the MLP's GELU: "gelu" (exact, erf) or "gelu_tanh" (GPT-2's tanh approximation, what its checkpoints were
    # trained with, and what models saved before this field existed use: GPT.SAVED_BEFORE_FIELDS)
    activation: str = "gelu"
    lora_r: int = 0  # > 0: the weights are frozen and LoRA adapters of this rank train (peft)
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:  # JSON gives lists back: keep the config comparable after a round trip
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))


class GPT(TextGenerator):
    Config = GPTConfig
    SAVED_BEFORE_FIELDS = {"activation": "gelu_tanh"}

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        from transformers import GPT2Config, GPT2LMHeadModel

        hf = GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.n_positions or config.block_size,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            bos_token_id=config.eot_id,
            eos_token_id=config.eot_id,
            # GPT-2's own "gelu_new" is the tanh-approximated GELU written as eight elementwise ops (each a pass over
            # the (B, T, 4C) activations, forward and backward); "gelu_pytorch_tanh" is the same function as one
            # fused kernel. Fresh models use the exact GELU, whose CPU kernels are faster still
            # (bench/train_vs_minimal.py).
            activation_function=ACTIVATIONS[config.activation],
            attn_implementation=_register_attention(),
        )
        self.net = GPT2LMHeadModel(hf)
        if config.lora_r:
            self.net = _with_adapters(self.net, config)

    @classmethod
    def from_hf(cls, directory: Path, block_size: int, dropout: float, eot_id: int) -> GPT:
        """Start from a Hugging Face GPT-2 checkpoint directory, training on windows of `block_size` tokens."""
        from transformers import GPT2Config, GPT2LMHeadModel

        hf = GPT2Config.from_pretrained(directory)
        activation = {v: k for k, v in ACTIVATIONS.items()} | {"gelu_new": "gelu_tanh"}
        if hf.activation_function not in activation:
            raise ValueError(f"{directory}: activation_function {hf.activation_function!r} is not one of "
                             f"{sorted(activation)}")
        config = GPTConfig(vocab_size=hf.vocab_size, block_size=min(block_size, hf.n_positions), n_layer=hf.n_layer,
                           n_head=hf.n_head, n_embd=hf.n_embd, dropout=dropout, eot_id=eot_id,
                           n_positions=hf.n_positions, activation=activation[hf.activation_function])
        model = cls(config)
        model.net.load_state_dict(GPT2LMHeadModel.from_pretrained(directory).state_dict())
        return model

    def with_lora(self, r: int, alpha: float, dropout: float, targets: list[str]) -> GPT:
        """Freeze every weight and add trainable LoRA adapters on the `targets` modules."""
        self.config = replace(self.config, lora_r=r, lora_alpha=alpha, lora_dropout=dropout, lora_targets=tuple(targets))
        self.net = _with_adapters(self.net, self.config)
        return self

    def merged(self) -> GPT:
        """Return a plain GPT whose weights have the adapters folded in (no peft needed to load it)."""
        plain = GPT(replace(self.config, lora_r=0, lora_targets=()))
        plain.net.load_state_dict(copy.deepcopy(self.net).merge_and_unload().state_dict())
        return plain

    def forward(self, x: Tensor) -> Tensor:
        """Return next-token logits (B, T, V) for tokens x (B, T): the network's own modules in the order
        `GPT2LMHeadModel` runs them without a cache or padding, minus its per-call machinery (argument checks,
        cache and mask construction, output objects), which on small models is a few percent of a training step.
        The result equals `net(input_ids=x).logits` exactly (tests/unit/test_gpt.py)."""
        hf = self.net.get_base_model() if self.config.lora_r else self.net  # peft's adapters sit inside the modules
        body = hf.transformer
        h = body.drop(body.wte(x) + body.wpe(torch.arange(x.size(1), device=x.device)))
        for block in body.h:
            h = block(h)
        return hf.lm_head(body.ln_f(h))

    def compile_targets(self) -> list[torch.nn.Module]:
        return [self.net]

    def onnx_graphs(self) -> dict[str, OnnxGraph]:
        """Full-context logits, adapters merged. No KV cache in or out: HF's cache objects do not cross the export
        as plain tensors without a wrapper that would have to follow transformers' cache API from release to
        release, and at this size re-reading the context each step is cheap."""
        model = self.merged() if self.config.lora_r else self
        g = torch.Generator().manual_seed(0)
        vocab, positions = self.config.vocab_size, self.config.n_positions or self.block_size
        t = min(16, self.block_size)  # traced length; the checks run others

        def ids(b: int, n: int) -> tuple[Tensor]:
            return (torch.randint(vocab, (b, n), generator=g),)

        doc = (f"next-token logits (batch, seq, {vocab}) float32 of token ids input_ids (batch, seq) int64, "
               f"1 <= seq <= {positions} (the position table): row t scores the token after position t, and "
               f"softmax(logits[:, -1]) is the next token's distribution; the product's forward in eval mode. No KV "
               f"cache: a generation loop feeds the whole context, at most {positions} tokens, at every step")
        return {"logits": OnnxGraph(
            module=model, inputs=ids(2, t), input_names=("input_ids",), output_names=("logits",),
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}},
            tolerance=1e-3,  # logits: trained ones reach tens, and float32 error grows with them
            doc=doc, checks=(ids(3, t // 2 + 1), ids(1, self.block_size)))}

    def onnx_usage(self) -> dict[str, Any]:
        positions = self.config.n_positions or self.block_size
        return super().onnx_usage() | {"max_positions": positions, "block_size": self.block_size,
                                       "loop": "append the picked token to input_ids and run logits again; when "
                                               "the context would pass block_size tokens, go on from its latest "
                                               "block_size // 2, as the product's generate does"}

    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch  # (B, T) each; y is x shifted left by one
        logits = self(x)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    def token_losses(self, x: Tensor, y: Tensor) -> Tensor:
        logits = self(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view(y.shape)

    @torch.inference_mode()
    def steps(self, prompt: Tensor, max_new_tokens: int, sampling: Sampling,
              generator: torch.Generator | None) -> Iterator[Tensor]:
        """Yield the next token (B, 1) of `prompt` (B, T) at a time, through the KV cache; when the context fills up,
        restart the cache from the most recent half-window of tokens so generation can run past block_size."""
        tokens = prompt[:, -self.block_size :]
        seen = prompt
        context, past = tokens, None
        for _ in range(max_new_tokens):
            cached = 0 if past is None else past.get_seq_length()
            if cached + context.size(1) > self.block_size:  # positions would overflow: re-encode a recent window
                context, past = tokens[:, -(self.block_size // 2) :], None
            out = self.net(input_ids=context, past_key_values=past, use_cache=True, logits_to_keep=1)
            past = out.past_key_values
            context = pick_next(out.logits[:, -1, :], sampling, generator, seen)  # (B, 1)
            yield context
            tokens = torch.cat([tokens, context], dim=1)
            seen = torch.cat([seen, context], dim=1) if sampling.repetition_penalty != 1.0 else seen

    @torch.inference_mode()
    def generate_rows(self, prompts: list[list[int]], max_new_tokens: int, sampling: Sampling,
                      generators: list[torch.Generator | None]) -> list[list[int]]:
        """Continue prompts of different lengths together: left-padded, with an attention mask and position ids
        that skip the padding, through one KV cache. Each row samples with its own generator, so a row's tokens are
        those `generate` gives it alone with the same seed. Rows whose prompt and continuation would not fit the
        context (where `generate` restarts its cache) run alone."""
        fits = [i for i, p in enumerate(prompts) if 0 < len(p) and len(p) + max_new_tokens <= self.block_size]
        if len(fits) == 1:  # a batch of one: no padding to mask, exactly the streaming path (`steps`)
            fits = []
        out: list[list[int]] = [[] for _ in prompts]
        for i in sorted(set(range(len(prompts))) - set(fits)):
            alone = torch.tensor([prompts[i]], dtype=torch.long, device=next(self.parameters()).device)
            out[i] = self.generate(alone, max_new_tokens, temperature=sampling.temperature, top_k=sampling.top_k,
                                   top_p=sampling.top_p, repetition_penalty=sampling.repetition_penalty,
                                   generator=generators[i])[0].tolist()
        if not fits or max_new_tokens == 0:
            return out
        width = max(len(prompts[i]) for i in fits)
        ids = torch.full((len(fits), width), self.config.eot_id, dtype=torch.long, device=next(self.parameters()).device)
        mask = torch.zeros((len(fits), width), dtype=torch.long, device=next(self.parameters()).device)
        for row, i in enumerate(fits):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i], dtype=torch.long)
            mask[row, width - len(prompts[i]) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        seen = [ids[row : row + 1, width - len(prompts[i]) :] for row, i in enumerate(fits)]
        context, past, new = ids, None, []
        for _ in range(max_new_tokens):
            result = self.net(input_ids=context, attention_mask=mask, position_ids=positions, past_key_values=past,
                              use_cache=True, logits_to_keep=1)
            past, logits = result.past_key_values, result.logits[:, -1, :]
            context = torch.cat([pick_next(logits[row : row + 1], sampling, generators[i], seen[row])
                                 for row, i in enumerate(fits)])  # (B, 1)
            new.append(context)
            if sampling.repetition_penalty != 1.0:
                seen = [torch.cat([s, context[row : row + 1]], dim=1) for row, s in enumerate(seen)]
            mask = torch.cat([mask, torch.ones_like(context)], dim=1)
            positions = positions[:, -1:] + 1
        tokens = torch.cat(new, dim=1).tolist()
        for row, i in enumerate(fits):
            out[i] = tokens[row]
        return out


ATTENTION = "genpipe_causal"  # torch SDPA, except in the one case below


def _causal_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                      dropout: float = 0.0, scaling: float | None = None, **kwargs) -> tuple[Tensor, None]:
    """Causal self-attention for transformers' attention interface: torch SDPA, except when training on CPU with
    attention dropout.

    There torch's SDPA leaves its CPU flash kernel (which has no dropout) for its generic math kernel, which
    scales q and k apart, materialises the causal mask and guards every row against being fully masked: more passes
    over the (B, nh, T, T) scores than the maths needs. Here: one batched matmul that adds the mask, a softmax, a
    keep mask drawn as uniform >= p (dropout's Bernoulli(1 - p), cheaper to draw on CPU than `bernoulli_`), and the
    1 / (1 - p) rescaling applied to the (T, hs) output rows instead of the (T, T) weights (the matmul is linear)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    B, nh, T, hs = query.shape
    if (dropout == 0.0 or attention_mask is not None or key.shape[2] != T or query.device.type != "cpu"
            or not getattr(module, "is_causal", True)):  # eval, cached decoding, padding, GPU: SDPA as it is
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, dropout=dropout,
                                               scaling=scaling, **kwargs)
    scale = hs**-0.5 if scaling is None else scaling
    future = torch.full((T, T), float("-inf"), dtype=query.dtype, device=query.device).triu(1)  # (T, T)
    scores = torch.baddbmm(future.expand(B * nh, T, T), query.reshape(B * nh, T, hs),
                           key.reshape(B * nh, T, hs).transpose(1, 2), alpha=scale)  # (B * nh, T, T)
    weights = scores.softmax(dim=-1)
    keep = torch.rand_like(weights).ge_(dropout)  # (B * nh, T, T) 1.0 with probability 1 - dropout, else 0.0
    out = torch.bmm(weights * keep, value.reshape(B * nh, T, hs)) * (1.0 / (1.0 - dropout))  # (B * nh, T, hs)
    return out.view(B, nh, T, hs).transpose(1, 2), None  # (B, T, nh, hs), as transformers' attention functions return


def _register_attention() -> str:
    """Register `_causal_attention` with transformers (idempotent); return its name for `GPT2Config`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, _causal_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # SDPA's masks: None for plain causal attention
    return ATTENTION


def _with_adapters(net, config: GPTConfig):
    """Wrap a GPT2LMHeadModel with peft LoRA adapters; name the modules that exist if a target does not."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_targets), fan_in_fan_out=True)  # GPT-2 uses Conv1D (in, out)
    try:
        return get_peft_model(net, lora)
    except ValueError as exc:  # peft's NoMatchingPeftModuleError is a ValueError
        names = sorted({n.rsplit(".", 1)[-1] for n, m in net.named_modules() if type(m).__name__ in ("Conv1D", "Linear")})
        raise LoraTargetError(f"model.lora.target_modules: {list(config.lora_targets)} not found in the model; "
                              f"its linear layers are: {', '.join(names)}") from exc


class LoraTargetError(ValueError):
    """LoRA was asked to adapt modules the model does not have."""
