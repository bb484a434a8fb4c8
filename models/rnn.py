"""Recurrent language models: LSTM and GRU (`model.name: lstm | gru`), trained with truncated BPTT.

Embedding → multi-layer recurrent core (dropout between layers) → linear head. During training the hidden state
is carried from one window to the next of the same stream (the trainer feeds contiguous streams because
`stateful` is set), detached at each window boundary so gradients flow back at most `block_size` tokens.
Scoring the test stream also carries state across windows, so the model is judged with all the context it can use.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import OnnxGraph, Sampling, TextGenerator, Traced, pick_next

State = Tensor | tuple[Tensor, Tensor]  # GRU: h; LSTM: (h, c); each (n_layer, B, n_hidden)


@dataclass(frozen=True)
class RNNConfig:
    vocab_size: int  # from the tokenizer
    n_layer: int = 2
    n_embd: int = 128  # token embedding width
    n_hidden: int = 256  # recurrent state width
    dropout: float = 0.1
    block_size: int = 128  # truncated BPTT window
    eot_id: int = 0  # document separator: start token for unconditional samples


def _detach(state: State) -> State:
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def _as_tensors(state: State | None) -> list[Tensor]:
    if state is None:
        return []
    return list(state) if isinstance(state, tuple) else [state]


class RecurrentLM(TextGenerator):
    """A recurrent language model; subclasses choose the cell."""

    Config = RNNConfig
    cell: ClassVar[type[nn.RNNBase]]

    def __init__(self, config: RNNConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.rnn = self.cell(config.n_embd, config.n_hidden, num_layers=config.n_layer, batch_first=True,
                             dropout=config.dropout if config.n_layer > 1 else 0.0)
        self.head = nn.Linear(config.n_hidden, config.vocab_size)
        self._carried: State | None = None  # hidden state carried between consecutive training windows

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Return logits (B, T, V) for tokens x (B, T) and the state after the last token."""
        h, state = self.rnn(self.drop(self.embed(x)), state)  # h: (B, T, n_hidden)
        return self.head(self.drop(h)), state

    def loss(self, batch: tuple[Tensor, ...]) -> Tensor:
        """Cross-entropy of a window. A batch (x, y, fresh) from contiguous streams continues the carried state
        (unless fresh); a plain (x, y) batch, as in validation, starts from zero state and carries nothing."""
        x, y, *rest = batch
        carry = bool(rest)
        state = self._carried if carry and not rest[0] else None
        logits, new_state = self(x, state)
        if carry:
            self._carried = _detach(new_state)  # truncate backpropagation at the window boundary
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    def token_losses(self, x: Tensor, y: Tensor) -> Tensor:
        logits, _ = self(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view(y.shape)

    @torch.inference_mode()
    def token_nll(self, tokens: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
        """Score the whole stream in one pass, chunk by chunk, carrying the state (batch_size is not needed)."""
        ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64)).to(device)
        out = np.zeros(max(len(ids) - 1, 0), dtype=np.float64)
        state, chunk = None, max(self.block_size, 256)
        for start in range(0, len(ids) - 1, chunk):
            x = ids[start : start + chunk][None, :]  # (1, T)
            y = ids[start + 1 : start + chunk + 1][None, :]
            x = x[:, : y.size(1)]
            logits, state = self(x, state)
            out[start : start + y.size(1)] = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(),
                                                            reduction="none").double().cpu().numpy()
        return out

    @torch.inference_mode()
    def steps(self, prompt: Tensor, max_new_tokens: int, sampling: Sampling,
              generator: torch.Generator | None) -> Iterator[Tensor]:
        """Read the prompt, then yield one token (B, 1) at a time from the running state (no context limit)."""
        logits, state = self(prompt)
        seen = prompt
        for _ in range(max_new_tokens):
            token = pick_next(logits[:, -1, :], sampling, generator, seen)  # (B, 1)
            yield token
            if sampling.repetition_penalty != 1.0:
                seen = torch.cat([seen, token], dim=1)
            logits, state = self(token, state)

    def onnx_graphs(self) -> dict[str, OnnxGraph]:
        """One step of the network with the state in and out: what a generation loop (as `steps`) calls."""
        cfg, g = self.config, torch.Generator().manual_seed(0)
        names = ("h", "c") if self.cell is nn.LSTM else ("h",)

        def inputs(b: int, t: int) -> tuple[Tensor, ...]:
            tokens = torch.randint(cfg.vocab_size, (b, t), generator=g)
            # a state from mid-stream (not zeros), so parity covers the path from the state in
            return tokens, *(0.5 * torch.randn(cfg.n_layer, b, cfg.n_hidden, generator=g) for _ in names)

        def step(model: RecurrentLM, tokens: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
            logits, new = model(tokens, state if len(state) == 2 else state[0])
            return logits, *_as_tensors(new)

        state = ", ".join(names)
        doc = (f"logits (batch, seq, {cfg.vocab_size}) float32 after each of tokens (batch, seq) int64, and the state "
               f"after the last one: {state} in and {', '.join(f'{n}_out' for n in names)} out, each "
               f"(n_layer={cfg.n_layer}, batch, n_hidden={cfg.n_hidden}) float32. Start from zeros, feed the prompt "
               f"once, then each picked token (seq = 1) with the state the previous call returned")
        axes = {"tokens": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
        axes |= {n: {1: "batch"} for n in names} | {f"{n}_out": {1: "batch"} for n in names}
        return {"step": OnnxGraph(
            module=Traced(self, step), inputs=inputs(2, 5), input_names=("tokens", *names),
            output_names=("logits", *(f"{n}_out" for n in names)), dynamic_axes=axes,
            tolerance=1e-3,  # logits: trained ones reach tens, and float32 error grows with them
            doc=doc, checks=(inputs(1, 1), inputs(3, 9)))}

    def onnx_usage(self) -> dict[str, Any]:
        names = ["h", "c"] if self.cell is nn.LSTM else ["h"]
        return super().onnx_usage() | {
            "state": {n: [self.config.n_layer, "batch", self.config.n_hidden] for n in names},
            "loop": "state zeros; logits, *state = step(prompt, *state); then for each new token: pick it from "
                    "logits[:, -1], logits, *state = step(token[:, None], *state) (no context limit)"}

    def train_state(self) -> dict[str, Tensor]:
        return {f"carried.{i}": t for i, t in enumerate(_as_tensors(self._carried))}

    def load_train_state(self, state: dict[str, Tensor]) -> None:
        tensors = [state[f"carried.{i}"] for i in range(len(state))]
        device = next(self.parameters()).device
        tensors = [t.to(device) for t in tensors]
        self._carried = None if not tensors else tuple(tensors) if len(tensors) == 2 else tensors[0]


class LSTM(RecurrentLM):
    cell = nn.LSTM


class GRU(RecurrentLM):
    cell = nn.GRU
