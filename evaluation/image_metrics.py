"""Pure logic of image evaluation: sample grids as PNG bytes and quality scores in the pipeline classifier's space.

Every score embeds images with one fixed, versioned `models.classifier.Classifier` trained on the real training
images (Inception v3 would need a download and 299x299 RGB input), so scores compare generators that were
evaluated with the same classifier file only:

- FID (Heusel et al. 2017), KID (Binkowski et al. 2018) and Inception Score (Salimans et al. 2016) come from
  torchmetrics with the classifier as its `feature=` module (`FeatureExtractor`, `LogitsExtractor`);
- improved precision/recall (Kynkaanniemi et al. 2019: fidelity / diversity) and density/coverage (Naeem et al.
  2020) are computed here from k-nearest-neighbour balls in the same feature space.

FID is biased upwards at small sample sizes: compare values computed from the same number of images, and report
`fid_floor` (real vs real, same n) next to it. Images are float (N, C, H, W) in [-1, 1] (uint8 is accepted too).
Every function is deterministic given its inputs and seed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from models.base import to_uint8, to_unit
from models.classifier import Classifier, FeatureExtractor, LogitsExtractor, embed

__all__ = [
    "class_accuracy",
    "copy_report",
    "density_coverage",
    "feature_spread",
    "fid_floor",
    "frechet_distance",
    "grid_png",
    "image_scores",
    "inception_score",
    "kernel_distance",
    "nearest_neighbours",
    "precision_recall",
    "to_uint8",
    "to_unit",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- sample grids


def _pixels(images: Tensor | np.ndarray) -> np.ndarray:
    """Return images (N, C, H, W) as a uint8 array: uint8 is kept, floating point [-1, 1] is converted."""
    images = torch.as_tensor(images).detach().cpu()
    if images.dtype != torch.uint8:
        images = to_uint8(images)
    return images.numpy()


def grid_png(images: Tensor | np.ndarray, nrow: int, scale: int = 1, padding: int = 1, pad_value: int = 128) -> bytes:
    """Return a PNG of images (N, C, H, W), uint8 or float [-1, 1], laid out `nrow` per row with `padding` pixels
    of gray `pad_value` around each, then enlarged `scale` times (nearest neighbour). Grayscale for C=1, RGB for C=3.

    The PNG is (rows * (H + padding) + padding) * scale pixels high, likewise wide with min(nrow, N) columns."""
    from PIL import Image

    pixels = _pixels(images)
    if pixels.ndim != 4 or pixels.shape[1] not in (1, 3) or len(pixels) == 0:
        raise ValueError(f"expected images (N, 1 or 3, H, W) with N >= 1, got {pixels.shape}")
    n, c, h, w = pixels.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = np.full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value, dtype=np.uint8)
    for i, image in enumerate(pixels):
        top, left = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        grid[:, top : top + h, left : left + w] = image
    grid = grid.repeat(scale, axis=1).repeat(scale, axis=2)
    array = grid[0] if c == 1 else grid.transpose(1, 2, 0)  # PIL: (H, W) → "L", (H, W, 3) → "RGB"
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- torchmetrics scores


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global CPU RNG for the block (KID and IS draw from it in `compute`), then restore it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _quiet_buffer_warning() -> Iterator[None]:
    # KID and IS warn at construction that they keep every feature vector: 64 floats an image is nothing here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
        yield


def _batches(images: Tensor, batch_size: int) -> Iterator[Tensor]:
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


def _device(classifier: Classifier) -> torch.device:
    return next(classifier.parameters()).device


def frechet_distance(real: Tensor, fake: Tensor, classifier: Classifier, *, batch_size: int = 256) -> float:
    """Return the FID between `real` and `fake` in the classifier's feature space (torchmetrics, float64)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    # normalize=False (the default): images reach the extractor untouched and it reads their dtype
    metric = FrechetInceptionDistance(feature=FeatureExtractor(classifier)).to(_device(classifier))
    for batch in _batches(real, batch_size):
        metric.update(batch, real=True)
    for batch in _batches(fake, batch_size):
        metric.update(batch, real=False)
    return metric.compute().item()


def kernel_distance(real: Tensor, fake: Tensor, classifier: Classifier, *, subset_size: int, subsets: int = 100,
                    seed: int = 0, batch_size: int = 256) -> tuple[float, float]:
    """Return the KID (mean, std over `subsets` random subsets of `subset_size`, clamped to the smaller set).

    With `subset_size` equal to the number of images every subset holds them all, and the std is 0: pick a
    subset size well below the sample count (torchmetrics' default 1000 suits 10k+ images)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    subset_size = min(subset_size, len(real), len(fake))
    if subset_size < 2:
        raise ValueError(f"KID needs at least 2 real and 2 fake images, got {len(real)} and {len(fake)}")
    with _quiet_buffer_warning():
        metric = KernelInceptionDistance(feature=FeatureExtractor(classifier), subsets=subsets,
                                         subset_size=subset_size).to(_device(classifier))
    for batch in _batches(real, batch_size):
        metric.update(batch, real=True)
    for batch in _batches(fake, batch_size):
        metric.update(batch, real=False)
    with _seeded(seed):
        mean, std = metric.compute()
    return mean.item(), std.item()


def inception_score(images: Tensor, classifier: Classifier, *, splits: int = 10, seed: int = 0,
                    batch_size: int = 256) -> tuple[float, float]:
    """Return the Inception Score (mean, std over `splits` splits) of `images` under the classifier's logits.

    Between 1 (every image gets the same class distribution) and n_classes (confident and uniformly spread)."""
    from torchmetrics.image.inception import InceptionScore

    with _quiet_buffer_warning():
        # normalize must stay False: with True, IS feeds (imgs * 255).byte() even to a custom module
        metric = InceptionScore(feature=LogitsExtractor(classifier), splits=splits).to(_device(classifier))
    for batch in _batches(images, batch_size):
        metric.update(batch)
    with _seeded(seed):
        mean, std = metric.compute()
    return mean.item(), std.item()


# ---------------------------------------------------------------------------------------------- k-NN manifold scores


def _knn_radii(x: Tensor, k: int, chunk_size: int) -> Tensor:
    """Return the distance (N,) from each row of x (N, D) to its k-th nearest other row."""
    if len(x) <= k:
        raise ValueError(f"k-NN radii need more than k={k} points, got {len(x)}")
    # k + 1: each row is its own nearest neighbour, at distance 0. topk is ~10x faster than kthvalue on CPU.
    return torch.cat([torch.cdist(x[s : s + chunk_size], x).topk(k + 1, dim=1, largest=False).values[:, -1]
                      for s in range(0, len(x), chunk_size)])


def _ball_hits(points: Tensor, centres: Tensor, radii: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Return, for each point, how many of the balls (centres, radii) contain it, and for each ball whether any
    point lies in it. Distances are computed `chunk_size` points at a time: memory chunk_size x len(centres)."""
    counts = torch.empty(len(points), dtype=torch.long, device=points.device)
    hit = torch.zeros(len(centres), dtype=torch.bool, device=points.device)
    for s in range(0, len(points), chunk_size):
        inside = torch.cdist(points[s : s + chunk_size], centres) <= radii  # (chunk, M)
        counts[s : s + chunk_size] = inside.sum(dim=1)
        hit |= inside.any(dim=0)
    return counts, hit


def _as_features(x: Tensor | np.ndarray) -> Tensor:
    x = torch.as_tensor(x).detach().double()  # float64: k-NN radii of near-duplicates must not round to ties
    if x.ndim != 2:
        raise ValueError(f"expected features (N, D), got shape {tuple(x.shape)}")
    return x


def precision_recall(real_feats: Tensor, fake_feats: Tensor, k: int = 3, chunk_size: int = 1024) -> tuple[float, float]:
    """Return improved (precision, recall) of Kynkaanniemi et al. 2019 from features (N, D) and (M, D).

    Precision: the fraction of fakes inside the real manifold (the union of balls around each real point reaching
    its k-th nearest real neighbour): are samples realistic? Recall: the fraction of reals inside the fake manifold
    built the same way: is the real variety covered?"""
    real, fake = _as_features(real_feats), _as_features(fake_feats)
    fake_in_real, _ = _ball_hits(fake, real, _knn_radii(real, k, chunk_size), chunk_size)
    real_in_fake, _ = _ball_hits(real, fake, _knn_radii(fake, k, chunk_size), chunk_size)
    return (fake_in_real > 0).double().mean().item(), (real_in_fake > 0).double().mean().item()


def density_coverage(real_feats: Tensor, fake_feats: Tensor, k: int = 5, chunk_size: int = 1024) -> tuple[float, float]:
    """Return (density, coverage) of Naeem et al. 2020, which use real-manifold balls only (robust to outliers).

    Density: the mean number of real balls containing a fake, divided by k (about 1 when matched; can exceed 1).
    Coverage: the fraction of real balls containing at least one fake."""
    real, fake = _as_features(real_feats), _as_features(fake_feats)
    counts, hit = _ball_hits(fake, real, _knn_radii(real, k, chunk_size), chunk_size)
    return counts.sum().item() / (k * len(fake)), hit.double().mean().item()


# ------------------------------------------------------------------------------ per-image units for a comparison

def frechet_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """The Fréchet distance of two feature sets (N, D), float64: the FID formula torchmetrics computes."""
    from scipy import linalg

    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    mu_r, mu_f = real.mean(axis=0), fake.mean(axis=0)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = linalg.sqrtm(cov_r @ cov_f)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r) + np.trace(cov_f) - 2 * np.trace(covmean))


def kernel_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """The unbiased squared MMD with KID's polynomial kernel (x.y / D + 1)^3 over the whole sets (N, D)."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    d = real.shape[1]
    k_rr, k_ff, k_rf = ((a @ b.T / d + 1) ** 3 for a, b in ((real, real), (fake, fake), (real, fake)))
    m, n = len(real), len(fake)
    return float((k_rr.sum() - np.trace(k_rr)) / (m * (m - 1)) + (k_ff.sum() - np.trace(k_ff)) / (n * (n - 1))
                 - 2 * k_rf.mean())


def inception_from_logits(logits: np.ndarray) -> float:
    """The Inception Score of one set of samples from their classifier logits (N, C): exp E[KL(p(y|x) || p(y))]."""
    logits = np.asarray(logits, dtype=np.float64)
    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    p = np.exp(logp)
    marginal = np.log(p.mean(axis=0) + 1e-12)
    return float(np.exp((p * (logp - marginal)).sum(axis=1).mean()))


def manifold_hits(real: np.ndarray, fake: np.ndarray, k: int, chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per fake: inside the real manifold (precision's unit); per real: inside the fake manifold (recall's)."""
    real_t, fake_t = _as_features(real), _as_features(fake)
    fake_in_real, _ = _ball_hits(fake_t, real_t, _knn_radii(real_t, k, chunk_size), chunk_size)
    real_in_fake, _ = _ball_hits(real_t, fake_t, _knn_radii(fake_t, k, chunk_size), chunk_size)
    return (fake_in_real > 0).numpy().astype(np.float64), (real_in_fake > 0).numpy().astype(np.float64)


# ---------------------------------------------------------------------------------------------- the report


def image_scores(real: Tensor, fake: Tensor, classifier: Classifier, *, kid_subset_size: int, kid_subsets: int = 100,
                 batch_size: int = 256, k: int = 3, seed: int = 0) -> dict[str, float]:
    """Return FID, KID, Inception Score (of `fake`), precision/recall (k) and density/coverage (k=5) of `fake`
    against `real`, both float (N, C, H, W) in [-1, 1]."""
    scores = {"fid": frechet_distance(real, fake, classifier, batch_size=batch_size)}
    scores["kid_mean"], scores["kid_std"] = kernel_distance(real, fake, classifier, subset_size=kid_subset_size,
                                                            subsets=kid_subsets, seed=seed, batch_size=batch_size)
    splits = max(2, min(10, len(fake) // 100))  # ~100 images a split estimate the class marginal; 2 give a std
    scores["inception_score_mean"], scores["inception_score_std"] = inception_score(
        fake, classifier, splits=splits, seed=seed, batch_size=batch_size)
    real_feats, _ = embed(classifier, real, batch_size=batch_size)
    fake_feats, _ = embed(classifier, fake, batch_size=batch_size)
    scores["precision"], scores["recall"] = precision_recall(real_feats, fake_feats, k=k)
    scores["density"], scores["coverage"] = density_coverage(real_feats, fake_feats)
    log.info("image scores (%d real, %d fake): %s", len(real), len(fake),
             ", ".join(f"{name} {value:.4g}" for name, value in scores.items()))
    return scores


def fid_floor(real: Tensor, classifier: Classifier, *, seed: int, n: int, batch_size: int = 256) -> float:
    """Return the FID between two disjoint random halves of `real`, n images each: the value a generator that
    reproduced the real distribution would reach with n samples."""
    if 2 * n > len(real):
        raise ValueError(f"fid_floor needs 2n = {2 * n} real images, got {len(real)}")
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
    return frechet_distance(real[order[:n]], real[order[n : 2 * n]], classifier, batch_size=batch_size)


def class_accuracy(classifier: Classifier, images: Tensor, requested_labels: Tensor, n_classes: int,
                   batch_size: int = 256) -> dict[str, float | list[float | None]]:
    """Return how often the classifier assigns a sample the class it was generated for: overall, and per class
    (None for a class with no samples). Meaningful for conditional generators and a classifier of real classes."""
    _, logits = embed(classifier, images, batch_size=batch_size)
    requested = torch.as_tensor(requested_labels).long().cpu()
    if requested.shape != (len(logits),):
        raise ValueError(f"expected {len(logits)} requested labels, got shape {tuple(requested.shape)}")
    correct = (logits.argmax(dim=1) == requested).double()
    per_class = [correct[requested == c].mean().item() if (requested == c).any() else None for c in range(n_classes)]
    return {"accuracy": correct.mean().item(), "per_class": per_class}


# ---------------------------------------------------------------------------------------------- copies and collapse


def nearest_neighbours(queries: Tensor | np.ndarray, reference: Tensor | np.ndarray, *, exclude_self: bool = False,
                       chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Return (distance, index) of the nearest row of `reference` (M, D) to each row of `queries` (N, D), Euclidean,
    float64. With `exclude_self` the queries are the reference's first N rows and a row is not its own neighbour."""
    q, ref = _as_features(queries), _as_features(reference)
    if len(ref) <= int(exclude_self):
        raise ValueError(f"nearest neighbours need at least {int(exclude_self) + 1} reference points, got {len(ref)}")
    dists, idx = [], []
    for s in range(0, len(q), chunk_size):
        d = torch.cdist(q[s : s + chunk_size], ref)
        if exclude_self:
            rows = torch.arange(len(d))
            d[rows, rows + s] = math.inf
        best = d.min(dim=1)
        dists.append(best.values)
        idx.append(best.indices)
    return torch.cat(dists), torch.cat(idx)


def copy_report(fake_feats: Tensor, train_feats: Tensor, held_out_feats: Tensor | None = None, *,
                quantile: float = 0.05, max_reference: int = 5000, seed: int = 0) -> dict:
    """Measure how close samples sit to the training set: likely copies of training images.

    The threshold is the `quantile` of the train-to-train nearest-neighbour distances (each training image to its
    nearest other training image; at most `max_reference` of them, drawn with `seed`): a sample nearer to a
    training image than that is closer than all but a `quantile` of real images are to each other. A generator
    that draws new images from the data distribution has about `quantile` of its samples under it (held-out real
    images, when given, show that reference level); a generator that replays its training set has nearly all.

    Returns the share of likely copies (`memorization`), the threshold, the samples' median nearest-neighbour
    distance, the held-out reference share (`memorization_real`) and, per sample, its distance and nearest index.
    """
    train = _as_features(train_feats)
    if len(train) > max_reference:
        rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:max_reference].sort().values
        queries = train[rows]
        reference = torch.cat([queries, train[torch.ones(len(train), dtype=torch.bool).index_fill_(0, rows, False)]])
    else:
        queries = reference = train
    train_nn, _ = nearest_neighbours(queries, reference, exclude_self=True)
    threshold = torch.quantile(train_nn, quantile).item()
    dist, idx = nearest_neighbours(fake_feats, train)
    report = {"memorization": (dist < threshold).double().mean().item(), "copy_threshold": threshold,
              "nn_distance_median": dist.median().item(), "train_nn_distance_median": train_nn.median().item(),
              "distances": dist, "indices": idx}
    if held_out_feats is not None and len(held_out_feats):
        real_dist, _ = nearest_neighbours(held_out_feats, train)
        report["memorization_real"] = (real_dist < threshold).double().mean().item()
    return report


def feature_spread(feats: Tensor | np.ndarray, max_points: int = 2000, seed: int = 0) -> float:
    """Return the mean pairwise Euclidean distance between feature rows (at most `max_points`, drawn with `seed`).

    Divided by the same spread of real images it measures diversity: about 1 when samples vary as much as the
    data, towards 0 as a generator collapses onto few outputs."""
    x = _as_features(feats)
    if len(x) < 2:
        raise ValueError(f"a spread needs at least 2 points, got {len(x)}")
    if len(x) > max_points:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_points]]
    d = torch.cdist(x, x)
    return (d.sum() / (len(x) * (len(x) - 1))).item()
