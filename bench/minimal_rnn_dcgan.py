"""References for the recurrent and adversarial families, as a user would write them in plain PyTorch (nothing
from this project but the data files they read):

- `MinimalLSTMTrainer`: embedding -> `nn.LSTM`/`nn.GRU` (one fused call over the window, no Python loop per
  timestep) -> linear head, dropout as configured; truncated BPTT over `batch_size` contiguous streams with the
  state carried (detached) from window to window; fused AdamW, clipping.
- `MinimalDCGANStep`: the reference DCGAN loop: fakes generated once per step, the discriminator stepped on reals
  and the detached fakes, the generator on the same fakes through the updated discriminator; BCE with logits;
  Adam(fused) per network. The networks are given (the product's architecture), so the ratio measures the step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.minimal_gpt import fused_adamw, update


class MinimalLSTM(nn.Module):
    def __init__(self, cell: str, vocab_size: int, n_layer: int, n_embd: int, n_hidden: int, dropout: float) -> None:
        super().__init__()
        self.embed, self.drop = nn.Embedding(vocab_size, n_embd), nn.Dropout(dropout)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(n_embd, n_hidden, num_layers=n_layer, batch_first=True, dropout=dropout if n_layer > 1 else 0.0)
        self.head = nn.Linear(n_hidden, vocab_size)

    def forward(self, x: Tensor, state=None):
        h, state = self.rnn(self.drop(self.embed(x)), state)
        return self.head(self.drop(h)), state


class MinimalLSTMTrainer:
    def __init__(self, data_dir: Path, cell: str, vocab_size: int, n_layer: int, n_embd: int, n_hidden: int,
                 dropout: float, block_size: int, batch_size: int, lr: float, betas: tuple[float, float],
                 weight_decay: float, grad_clip: float, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = MinimalLSTM(cell, vocab_size, n_layer, n_embd, n_hidden, dropout).train()
        self.opt = fused_adamw(self.model, lr, betas, weight_decay)
        data = np.load(data_dir / "train.npy", mmap_mode="r")
        per_stream = (len(data) - 1) // batch_size
        self.streams = np.stack([data[b * per_stream : (b + 1) * per_stream + 1] for b in range(batch_size)])
        self.block_size, self.grad_clip = block_size, grad_clip
        self.n_windows, self.position, self.state = (per_stream - 1) // block_size, 0, None

    def step(self, lr: float) -> Tensor:
        for group in self.opt.param_groups:
            group["lr"] = lr
        k = self.position % self.n_windows
        self.position += 1
        if k == 0:
            self.state = None
        xy = torch.from_numpy(self.streams[:, k * self.block_size : (k + 1) * self.block_size + 1].astype(np.int64))
        logits, state = self.model(xy[:, :-1], self.state)
        self.state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        loss = F.cross_entropy(logits.flatten(0, 1), xy[:, 1:].flatten())
        return update(self.model, self.opt, loss, self.grad_clip)


class MinimalDCGANStep:
    def __init__(self, G: nn.Module, D: nn.Module, images: np.ndarray, n_z: int, batch_size: int, lr: float,
                 betas: tuple[float, float], seed: int) -> None:
        self.G, self.D, self.images, self.n_z, self.batch_size = G.train(), D.train(), images, n_z, batch_size
        self.opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas, fused=True)
        self.opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas, fused=True)
        self.gen = torch.Generator().manual_seed(seed)

    def step(self, lr: float) -> Tensor:
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        idx = torch.randint(len(self.images), (self.batch_size,), generator=self.gen).numpy()
        x = torch.from_numpy(np.ascontiguousarray(self.images[idx])).float().div_(127.5).sub_(1.0)
        fake = self.G(torch.randn(self.batch_size, self.n_z))
        real_logits, fake_logits = self.D(x), self.D(fake.detach())
        d_loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                  + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        logits = self.D(fake)
        g_loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        return g_loss.detach()
