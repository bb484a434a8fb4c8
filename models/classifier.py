"""A small CNN classifier: the fixed, versioned feature extractor behind FID, KID, Inception Score and
precision/recall of every image generator.

Inception v3 needs downloaded weights and 299x299 RGB inputs; a pipeline that must run offline on 16x16 digits
trains this network on its own real training images instead (Inception-free FID/KID, as in the MNIST evaluations of
many GAN papers). Its scores are comparable only between runs that share one saved classifier, which is why the
classifier is a versioned pipeline artifact and not retrained per generator.

Image convention (shared with `models.base.ImageGenerator`): the network takes float32 (N, C, H, W) in [-1, 1];
stored data is uint8 [0, 255], mapped by `models.base.to_unit` (x / 127.5 - 1) and back by `to_uint8`.

Data without class labels can still train an extractor on `rotation_task` (predict which of four rotations an
image was given). Its "classes" are rotations, so Inception Score and class accuracy mean nothing then: an ideal
generator of upright images is classified as "rotation 0" throughout and scores an Inception Score of about 1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from models.base import to_unit

log = logging.getLogger(__name__)

WEIGHTS_FILE = "classifier.safetensors"
CONFIG_FILE = "classifier.json"
FORMAT_VERSION = 1  # bump when the architecture changes, so old files fail to load instead of loading wrongly


def as_input(x: Tensor | np.ndarray) -> Tensor:
    """Return images as the network's float32 [-1, 1] input: uint8 is converted, floating point is taken as is."""
    x = torch.as_tensor(x)
    if x.dtype == torch.uint8:
        return to_unit(x)
    if x.is_floating_point():
        return x.float()
    raise TypeError(f"images must be uint8 [0, 255] or floating point [-1, 1], got {x.dtype}")


# ---------------------------------------------------------------------------------------------- the network


@dataclass(frozen=True)
class ClassifierConfig:
    image_size: int  # H = W of the data
    channels: int  # 1 (grayscale) or 3 (RGB)
    n_classes: int  # >= 2; 4 for `rotation_task`
    width: int = 32  # channels of the first conv block; doubled at each downsampling, up to 4x
    feature_dim: int = 64  # the embedding FID/KID/precision/recall compare

    def __post_init__(self) -> None:
        if self.image_size < 4 or self.channels < 1 or self.width < 1 or self.feature_dim < 1:
            raise ValueError(f"invalid classifier config {self}")
        if self.n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got n_classes={self.n_classes}")


def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),  # trains far faster here than GroupNorm; in eval mode a fixed affine map
        nn.ReLU(),
    )


class Classifier(nn.Module):
    """conv stem → (stride-2 block, block) × n_down → global average pool → linear (features) → ReLU → linear.

    Used for features in eval mode only: BatchNorm then applies its running statistics, so an image's features
    never depend on the rest of its batch."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        n_down = max(1, int(math.log2(config.image_size // 4)))  # down to about 4x4: 8→4, 16→4, 28→7, 32→4
        widths = [config.width * min(2**i, 4) for i in range(n_down + 1)]
        blocks = [_conv_block(config.channels, widths[0], stride=1)]
        for c_in, c_out in zip(widths, widths[1:]):
            blocks += [_conv_block(c_in, c_out, stride=2), _conv_block(c_out, c_out, stride=1)]
        self.body = nn.Sequential(*blocks)
        self.project = nn.Linear(widths[-1], config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.n_classes)

    def features(self, x: Tensor) -> Tensor:
        """Return the embedding (N, feature_dim) of images x (N, C, H, W) in [-1, 1].

        Taken before the ReLU, so it is dense (no units stuck at zero), which suits FID's Gaussian fit."""
        h = self.body(x)  # (N, widths[-1], h, w)
        return self.project(h.mean(dim=(2, 3)))  # global average pool → (N, feature_dim)

    def classify(self, features: Tensor) -> Tensor:
        """Return logits (N, n_classes) from `features`."""
        return self.head(F.relu(features))

    def forward(self, x: Tensor) -> Tensor:
        """Return logits (N, n_classes) of images x (N, C, H, W) in [-1, 1]."""
        return self.classify(self.features(x))

    def save(self, directory: Path) -> None:
        """Write weights (safetensors) and the config that rebuilds the network (JSON) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_model(self, str(directory / WEIGHTS_FILE))
        spec = {"format_version": FORMAT_VERSION, "config": dataclasses.asdict(self.config)}
        (directory / CONFIG_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_classifier(directory: Path, map_location: str | torch.device = "cpu") -> Classifier:
    """Rebuild a classifier from `directory` (classifier.json + classifier.safetensors), in eval mode, without
    unpickling anything."""
    spec = json.loads((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8"))
    if spec.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory}: classifier format {spec.get('format_version')}, expected {FORMAT_VERSION}")
    model = Classifier(ClassifierConfig(**spec["config"]))
    load_model(model, str(Path(directory) / WEIGHTS_FILE), device=str(map_location))
    return model.to(map_location).eval()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------------- training


def _check_images(images: np.ndarray, config: ClassifierConfig) -> None:
    expected = (config.channels, config.image_size, config.image_size)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(f"expected uint8 images (N, {', '.join(map(str, expected))}), "
                         f"got {images.dtype} {images.shape}")


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image of x (B, C, H, W) by its own random offset of up to `max_shift` pixels per axis.

    Edges are replicated into the uncovered border (no artificial black frame on non-black backgrounds). Offsets
    are drawn from `generator` (a CPU generator)."""
    b, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), mode="replicate")  # (B, C, H + 2s, W + 2s)
    dy, dx = torch.randint(0, 2 * s + 1, (2, b), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * s)
    cols = (dx[:, None] + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
    return padded.gather(2, rows).gather(3, cols)  # (B, C, H, W)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Yield index batches forever, each epoch a fresh permutation drawn from `generator` (ragged tail dropped)."""
    batch_size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def fit_classifier(images: np.ndarray, labels: np.ndarray, config: ClassifierConfig, *, steps: int,
                   batch_size: int, lr: float, seed: int, augment: bool = True,
                   device: str | torch.device = "cpu", log_every: int = 100) -> Classifier:
    """Train a classifier on uint8 images (N, C, H, W) with int64 labels (N,) and return it in eval mode.

    AdamW with a cosine decay of `lr` to zero; augmentation shifts images by 1-2 pixels (no flips: a mirrored digit
    is another symbol). Deterministic given `seed` (bit-identical on CPU): the initial weights come from
    `torch.manual_seed(seed)` inside a forked RNG (the caller's global RNG is left alone), batch order and shifts
    from an explicit generator."""
    _check_images(images, config)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    labels = np.asarray(labels, dtype=np.int64)
    if len(images) == 0 or labels.shape != (len(images),) or labels.min() < 0 or labels.max() >= config.n_classes:
        raise ValueError(f"expected {len(images)} labels in [0, {config.n_classes}), got {labels.shape}")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(config)
    model.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # uint8: a quarter of float32's memory
    y_all = torch.from_numpy(labels).to(device)
    max_shift = 1 if config.image_size < 16 else 2
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    batches = _batches(len(images), batch_size, generator)
    seen, correct, total_loss = 0, torch.zeros((), device=device), torch.zeros((), device=device)
    for step in range(1, steps + 1):
        idx = next(batches).to(device)
        x, y = to_unit(x_all[idx]), y_all[idx]
        if augment:
            x = random_shift(x, max_shift, generator)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        total_loss += loss.detach() * len(y)  # summed on the device: no GPU sync but at log time
        correct += (logits.argmax(dim=1) == y).sum()
        seen += len(y)
        if step % log_every == 0 or step == steps:
            log.info("classifier step %d/%d: loss %.4f, train accuracy %.3f, lr %.2e",
                     step, steps, total_loss.item() / seen, correct.item() / seen, schedule.get_last_lr()[0])
            seen, correct, total_loss = 0, torch.zeros_like(correct), torch.zeros_like(total_loss)
    return model.eval()


@torch.inference_mode()
def embed(model: Classifier, images: Tensor | np.ndarray, *, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """Return (features (N, feature_dim), logits (N, n_classes)), float32 on the CPU, of images (N, C, H, W) that
    are uint8 [0, 255] or float [-1, 1], computed in batches on the model's device."""
    model.eval()
    images = torch.as_tensor(images)
    device = _device(model)
    features, logits = [], []
    for start in range(0, len(images), batch_size):
        f = model.features(as_input(images[start : start + batch_size]).to(device))
        features.append(f.cpu())
        logits.append(model.classify(f).cpu())
    if not features:
        return torch.zeros(0, model.config.feature_dim), torch.zeros(0, model.config.n_classes)
    return torch.cat(features), torch.cat(logits)


def accuracy(model: Classifier, images: np.ndarray, labels: np.ndarray, batch_size: int = 512) -> float:
    """Return the fraction of uint8 images (N, C, H, W) classified as their label."""
    _, logits = embed(model, images, batch_size=batch_size)
    return (logits.argmax(dim=1) == torch.as_tensor(np.asarray(labels, dtype=np.int64))).float().mean().item()


def rotation_task(images: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (rotated images, labels) for data without classes: each image rotated counter-clockwise by
    label x 90 degrees, labels 0-3 balanced and shuffled by `seed`.

    A classifier trained on it (n_classes=4) learns shape features usable for FID/KID/precision/recall
    (self-supervised rotation prediction, Gidaris et al. 2018); its Inception Score is not meaningful."""
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"rotation needs square images (N, C, H, H), got {images.shape}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(len(images)) % 4).astype(np.int64)
    rotated = images.copy()
    for k in (1, 2, 3):
        rotated[labels == k] = np.rot90(images[labels == k], k, axes=(2, 3))
    return rotated, labels


# ---------------------------------------------------------------------------------------------- torchmetrics adapters
#
# What torchmetrics 1.9.0 does with a custom `feature=` module (read in image/fid.py, kid.py, inception.py):
# - with the default normalize=False, `update(imgs)` passes imgs to the module untouched: any dtype, any range;
# - normalize=True is harmful here: InceptionScore then feeds `(imgs * 255).byte()` even to a custom module
#   (FID/KID do not), which wraps negative [-1, 1] values around; so the metrics are built with normalize=False;
# - FID reads the module's `num_features` (else it probes it with a random uint8 image of `input_img_size`,
#   (3, 299, 299) by default, which a 16x16 grayscale network cannot take); KID and IS never ask;
# - FID casts the features to float64 for its sums and covariances and returns its result in the features' dtype;
#   KID computes its cubic polynomial kernel in the features' dtype, where float32 rounding can swamp the small
#   real-vs-fake differences, hence float64 features by default;
# - KID and IS draw subsets / a permutation with torch's global RNG at `compute()` (the caller seeds it).
# The adapters below therefore accept uint8 [0, 255] and float [-1, 1] alike (see `as_input`), move the input to
# the classifier's device, and never leave eval mode.


class _Extractor(nn.Module):
    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier.eval()

    def train(self, mode: bool = True) -> _Extractor:
        """Stay in eval mode whatever the metric holding this module is set to (like torchmetrics' Inception)."""
        return super().train(False)

    def _input(self, x: Tensor) -> Tensor:
        return as_input(x).to(_device(self.classifier))


class FeatureExtractor(_Extractor):
    """The classifier's embedding as a torchmetrics `feature=` module (FID, KID): images → (N, feature_dim)."""

    def __init__(self, classifier: Classifier, dtype: torch.dtype = torch.float64) -> None:
        super().__init__(classifier)
        self.num_features = classifier.config.feature_dim
        self.dtype = dtype

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(self._input(x)).to(self.dtype)


class LogitsExtractor(_Extractor):
    """The classifier's logits as a torchmetrics `feature=` module (Inception Score): images → (N, n_classes)."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__(classifier)
        self.num_features = classifier.config.n_classes

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self._input(x))

