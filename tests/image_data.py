"""Image data shared by the image model and metric tests: the real digits, and a two-class synthetic set."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits


def digits(size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits as uint8 (N, 1, size, size) and int64 labels."""
    data = load_digits()
    x = torch.from_numpy(data.images).float()[:, None] / 16  # (N, 1, 8, 8) in [0, 1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), data.target.astype(np.int64)


def halves(n: int, seed: int = 0, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Return n images in [-1, 1] bright on the left half (label 0) or the right half (label 1), a little noisy."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(2, (n,), generator=gen)
    left = (torch.arange(size) < size // 2).float()  # (size,)
    bright = torch.where(y[:, None] == 0, left, 1 - left)  # (n, size) columns
    x = -1 + 2 * bright[:, None, None, :].expand(n, 1, size, size)  # (n, 1, size, size)
    return (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(-1, 1), y


def contrast(images: torch.Tensor) -> torch.Tensor:
    """Mean brightness of the left half minus that of the right half, per image (n,)."""
    half = images.size(-1) // 2
    return images[..., :half].mean(dim=(1, 2, 3)) - images[..., half:].mean(dim=(1, 2, 3))
