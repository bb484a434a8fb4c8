"""The reference the product's GPT trainer is measured against: a minimal GPT trainer in plain PyTorch, written for
speed the way the well-known one-file trainers are (nothing from this project but the token files it reads).

- model: token + learned position embeddings, pre-norm blocks (LayerNorm, fused QKV projection,
  `scaled_dot_product_attention(is_causal=True)`, output projection; LayerNorm, 4x MLP with exact GELU), final
  LayerNorm, a bias-free head tied to the token embedding; N(0, 0.02) init with the residual projections scaled
  by 1/sqrt(2 n_layer), as GPT-2;
- optimizer: `torch.optim.AdamW(fused=True)`, weight decay on matrices only;
- data: batches sliced from the memory-mapped `train.npy` at random offsets drawn from a seeded generator;
- loop: set the lr, forward, cross-entropy, backward, clip, step, `zero_grad(set_to_none=True)`; the loss stays
  on the device and is read only when the caller asks for it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.n_head, self.dropout = n_head, dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.fc, self.out = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)))))


class MinimalGPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int,
                 dropout: float) -> None:
        super().__init__()
        self.block_size = block_size
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.head.weight = self.wte.weight  # tied
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("attn.proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: Tensor) -> Tensor:
        """Next-token logits (B, T, V) of tokens idx (B, T)."""
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def fused_adamw(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float) -> torch.optim.AdamW:
    """Fused AdamW decaying matrices only (not biases and norm gains)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=lr, betas=betas, fused=True)


def update(model: nn.Module, opt: torch.optim.Optimizer, loss: Tensor, grad_clip: float) -> Tensor:
    """Backward, clip (when grad_clip > 0), step, zero the gradients; return the loss detached (no host sync)."""
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


class MinimalTrainer:
    """The reference's training loop on `train.npy` of a preprocess output directory."""

    def __init__(self, data_dir: Path, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int,
                 dropout: float, batch_size: int, lr: float, betas: tuple[float, float], weight_decay: float,
                 grad_clip: float, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = MinimalGPT(vocab_size, block_size, n_layer, n_head, n_embd, dropout).train()
        self.opt = fused_adamw(self.model, lr, betas, weight_decay)
        self.data = np.load(data_dir / "train.npy", mmap_mode="r")
        self.gen = torch.Generator().manual_seed(seed)
        self.block_size, self.batch_size, self.grad_clip = block_size, batch_size, grad_clip

    def batch(self) -> tuple[Tensor, Tensor]:
        starts = torch.randint(len(self.data) - self.block_size - 1, (self.batch_size,), generator=self.gen)
        xy = torch.from_numpy(np.stack([self.data[s : s + self.block_size + 1] for s in starts.tolist()])
                              .astype(np.int64))
        return xy[:, :-1], xy[:, 1:]

    def step(self, lr: float) -> Tensor:
        """One update at learning rate `lr`; return the loss as a tensor (no host sync)."""
        for group in self.opt.param_groups:
            group["lr"] = lr
        x, y = self.batch()
        logits = self.model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        return update(self.model, self.opt, loss, self.grad_clip)
