"""Limits checked before training allocates anything, so an impossible setting fails in seconds with one line.

- data: a context window longer than the training text;
- memory: the training footprint of a text model (weights, gradients, Adam moments, activations kept for the
  backward pass, logits) estimated from its architecture and the batch, against the memory the device has free;
- duration: a `train.max_steps` that would run for days is reported, with the time projected from the first steps.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

FP32 = 4  # bytes
LONG_RUN_S = 24 * 3600  # a projected run longer than this is reported


def gpt_train_bytes(n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int, batch_size: int) -> int:
    """Estimate the bytes a GPT training step needs: weights + gradients + two Adam moments (4 copies of the
    parameters), plus per layer the activations saved for backward, s*b*h*(34 + 5*a*s/h) values in half precision
    (Korthikanti et al. 2022, "Reducing activation recomputation in large transformer models"; doubled for fp32),
    plus the logits and their gradient."""
    params = 12 * n_layer * n_embd**2 + (vocab_size + block_size) * n_embd
    per_layer = block_size * batch_size * n_embd * (34 + 5 * n_head * block_size / n_embd) * 2  # bytes, fp32
    logits = 3 * batch_size * block_size * vocab_size * FP32
    return int(4 * params * FP32 + n_layer * per_layer + logits)


def rnn_train_bytes(n_layer: int, n_embd: int, n_hidden: int, block_size: int, vocab_size: int,
                    batch_size: int) -> int:
    """Estimate the bytes an LSTM/GRU training step needs: 4 copies of the parameters, the gate activations of every
    timestep of the window (4 gates of n_hidden per layer), and the logits with their gradient."""
    params = n_layer * 4 * (n_hidden * (n_embd + n_hidden) + n_hidden) + vocab_size * (n_embd + n_hidden)
    activations = n_layer * batch_size * block_size * (6 * n_hidden + n_embd) * FP32
    logits = 3 * batch_size * block_size * vocab_size * FP32
    return int(4 * params * FP32 + activations + logits)


def available_bytes(device_type: str) -> int | None:
    """Return the memory free for training on `device_type` ("cuda": the GPU's free memory; otherwise the
    machine's MemAvailable), or None where it cannot be read."""
    if device_type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_window(name: str, block_size: int, n_train_tokens: int) -> None:
    """Raise DataError when no training window of `block_size` tokens (plus its shifted target) fits in the
    training text: the data decides before any memory estimate."""
    if block_size + 1 >= n_train_tokens:
        from runtime.errors import DataError

        raise DataError(f"model.{name}.block_size={block_size} is longer than the training text "
                        f"({n_train_tokens} tokens); add data or lower it")


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**40 else f"{n / 2**40:,.1f} TiB"


def check_memory(name: str, arch: dict, vocab_size: int, batch_size: int, available: int | None) -> int | None:
    """Raise ParamsError when the estimated training footprint of text generator `name` exceeds `available` bytes;
    return the estimate (None for families without one)."""
    from runtime.errors import ParamsError

    if name == "gpt":
        need = gpt_train_bytes(arch["n_layer"], arch["n_head"], arch["n_embd"], arch["block_size"], vocab_size,
                               batch_size)
    elif name in ("lstm", "gru"):
        need = rnn_train_bytes(arch["n_layer"], arch["n_embd"], arch["n_hidden"], arch["block_size"], vocab_size,
                               batch_size)
    else:
        return None
    if available is not None and need > available:
        raise ParamsError(f"model.{name}.block_size={arch['block_size']} with train.batch_size={batch_size} needs "
                          f"about {gib(need)} to train (weights, optimizer state, activations), more than the "
                          f"{gib(available)} available; lower model.{name}.block_size or train.batch_size")
    return need
