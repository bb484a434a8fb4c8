"""Pure logic of image evaluation: pixel conversion, PNG grids, k-NN precision/recall and the classifier-based
FID/KID/Inception Score, checked on scikit-learn's digits against noise and a collapsed (single-class) generator."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.image_metrics import (
    class_accuracy,
    density_coverage,
    fid_floor,
    frechet_distance,
    grid_png,
    image_scores,
    inception_score,
    kernel_distance,
    precision_recall,
    to_uint8,
    to_unit,
)
from models.classifier import ClassifierConfig, fit_classifier
from tests.image_data import digits

# ---------------------------------------------------------------------------------------------- pixel convention


def test_uint8_to_unit_and_back_is_exact_for_every_value():
    pixels = torch.arange(256, dtype=torch.uint8)
    unit = to_unit(pixels)
    assert unit.dtype == torch.float32 and unit[0] == -1 and unit[-1] == 1
    torch.testing.assert_close(unit, pixels.float() / 127.5 - 1)
    assert torch.equal(to_uint8(unit), pixels)


def test_float_to_uint8_rounds_clamps_and_comes_back_within_half_a_step():
    x = torch.linspace(-1, 1, 1001)
    back = to_unit(to_uint8(x))
    assert (back - x).abs().max() <= 0.5 / 127.5 + 1e-6
    assert to_uint8(torch.tensor([-3.0, 0.0, 3.0])).tolist() == [0, 128, 255]  # 0 → 127.5 → 128 (half to even)
    with pytest.raises(TypeError):
        to_unit(torch.zeros(2))
    with pytest.raises(TypeError):
        to_uint8(torch.zeros(2, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------- grid_png


def decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_grayscale_grid_has_the_expected_size_layout_and_pixels():
    images = np.stack([np.full((1, 4, 3), 40 * (i + 1), dtype=np.uint8) for i in range(5)])  # (5, 1, H=4, W=3)
    image = decode(grid_png(images, nrow=2, scale=3, padding=1))
    assert image.format == "PNG" and image.mode == "L"
    assert image.size == ((2 * (3 + 1) + 1) * 3, (3 * (4 + 1) + 1) * 3)  # (width, height): 2 columns, 3 rows
    pixels = np.asarray(image)
    for i in range(5):
        top, left = (1 + (i // 2) * 5) * 3, (1 + (i % 2) * 4) * 3
        assert (pixels[top : top + 12, left : left + 9] == 40 * (i + 1)).all()  # the whole enlarged image
    assert (pixels[:3] == 128).all() and (pixels[:, :3] == 128).all()  # padding
    assert (pixels[33:45, 15:24] == 128).all()  # the sixth cell is empty


def test_rgb_grid_from_float_images():
    images = -torch.ones(2, 3, 2, 2)
    images[0, 0] = 1.0  # red
    images[1, 2] = 1.0  # blue
    image = decode(grid_png(images, nrow=4, scale=1, padding=0))
    assert image.mode == "RGB" and image.size == (4, 2)  # one row of two, no padding
    pixels = np.asarray(image)
    assert pixels[0, 0].tolist() == [255, 0, 0] and pixels[1, 3].tolist() == [0, 0, 255]


def test_grid_png_is_deterministic_and_rejects_other_channel_counts():
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert grid_png(images, nrow=3, scale=4) == grid_png(images.numpy(), nrow=3, scale=4)
    with pytest.raises(ValueError):
        grid_png(torch.zeros(2, 2, 4, 4), nrow=2)


# ---------------------------------------------------------------------------------------------- k-NN scores


def clusters(centres: list[float], n_each: int, seed: int, dim: int = 8) -> torch.Tensor:
    """Gaussian blobs of unit spread around (c, c, ..., c) for each c in `centres`."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([c + torch.randn(n_each, dim, generator=g) for c in centres])


def test_identical_sets_have_full_precision_recall_and_coverage():
    x = clusters([0.0], 300, seed=0)
    assert precision_recall(x, x.clone()) == (1.0, 1.0)
    density, coverage = density_coverage(x, x.clone())
    assert coverage == 1.0 and 0.8 < density < 1.5


def test_far_apart_sets_have_zero_precision_recall_density_and_coverage():
    real, fake = clusters([0.0], 200, seed=0), clusters([100.0], 200, seed=1)
    assert precision_recall(real, fake) == (0.0, 0.0)
    assert density_coverage(real, fake) == (0.0, 0.0)


def test_a_fake_set_covering_half_the_real_modes_is_precise_but_recalls_half():
    modes = [0.0, 20.0, 40.0, 60.0]
    real = clusters(modes, 250, seed=0, dim=4)
    half = clusters(modes[:2], 500, seed=1, dim=4)  # as many samples, two of the four modes
    matched = clusters(modes, 250, seed=1, dim=4)
    precision, recall = precision_recall(real, half)
    assert precision > 0.9
    assert 0.4 < recall < 0.6
    assert precision_recall(real, matched)[1] > 0.9  # the same sample size recalls nearly everything
    assert 0.4 < density_coverage(real, half)[1] < 0.6  # coverage


def test_precision_recall_does_not_depend_on_the_chunk_size():
    real, fake = clusters([0.0, 3.0], 150, seed=0), clusters([1.0], 200, seed=1)
    assert precision_recall(real, fake, chunk_size=7) == precision_recall(real, fake)
    assert density_coverage(real, fake, chunk_size=13) == density_coverage(real, fake)


def test_precision_recall_needs_more_points_than_k():
    with pytest.raises(ValueError, match="more than k"):
        precision_recall(torch.zeros(3, 2), torch.ones(10, 2), k=3)


# ---------------------------------------------------------------------------------------------- classifier scores


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions gain nothing from a second thread, and OpenMP threads stall badly on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    """Trained classifier; two disjoint halves of the real digits; all the zeros (a collapsed generator); noise."""
    images, labels = digits(16)
    config = ClassifierConfig(image_size=16, channels=1, n_classes=10, width=16)
    classifier = fit_classifier(images, labels, config, steps=150, batch_size=64, lr=3e-3, seed=0)
    real = to_unit(torch.from_numpy(images))
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))
    half_a, half_b = order[:898], order[898:]
    zeros = real[torch.from_numpy(labels == 0)]
    n = len(zeros)  # 178: every fake set has as many images, since FID depends on n
    noise = torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return {"classifier": classifier, "real": real, "labels": torch.from_numpy(labels), "a": real[half_a],
            "other": real[half_b[:n]], "zeros": zeros, "noise": noise}


def test_fid_ranks_real_far_below_mode_collapse_and_noise(data):
    clf, real = data["classifier"], data["a"]
    fid = {name: frechet_distance(real, data[name], clf) for name in ("other", "zeros", "noise")}
    assert fid["other"] * 10 < fid["zeros"]
    assert fid["other"] * 10 < fid["noise"]


def test_kid_ranks_real_far_below_mode_collapse_and_noise(data):
    clf, real = data["classifier"], data["a"]
    kid = {name: kernel_distance(real, data[name], clf, subset_size=100, subsets=20)[0]
           for name in ("other", "zeros", "noise")}
    assert kid["other"] * 10 < kid["zeros"]
    assert kid["other"] * 10 < kid["noise"]


def test_inception_score_of_real_digits_is_high_and_of_one_class_is_about_one(data):
    clf = data["classifier"]
    assert inception_score(data["other"], clf, splits=2)[0] > 6  # out of 10 classes
    assert inception_score(data["zeros"], clf, splits=2)[0] < 1.5


def test_image_scores_report_every_score_deterministically(data):
    clf, real = data["classifier"], data["a"]
    scores = image_scores(real, data["other"], clf, kid_subset_size=100, kid_subsets=10)
    assert set(scores) == {"fid", "kid_mean", "kid_std", "inception_score_mean", "inception_score_std",
                           "precision", "recall", "density", "coverage"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in scores.values())
    assert scores == image_scores(real, data["other"], clf, kid_subset_size=100, kid_subsets=10)
    assert scores["precision"] > 0.7 and scores["recall"] > 0.7
    collapsed = image_scores(real, data["zeros"], clf, kid_subset_size=1000, kid_subsets=10)  # subset clamped
    assert collapsed["recall"] < 0.3 < scores["recall"]  # mode collapse shows as lost recall
    assert collapsed["coverage"] < scores["coverage"]


def test_uint8_and_float_images_score_the_same(data):
    clf, real, other = data["classifier"], data["a"], data["other"]
    fid = frechet_distance(to_uint8(real), to_uint8(other), clf)
    assert fid == pytest.approx(frechet_distance(real, other, clf), rel=1e-6)


def test_fid_floor_compares_two_disjoint_halves_of_the_real_images(data):
    clf, real = data["classifier"], data["real"]
    floor = fid_floor(real, clf, seed=0, n=178)
    assert floor == fid_floor(real, clf, seed=0, n=178) != fid_floor(real, clf, seed=1, n=178)
    assert floor * 10 < frechet_distance(data["a"], data["zeros"], clf)
    with pytest.raises(ValueError, match="2n"):
        fid_floor(real, clf, seed=0, n=len(real))


def test_class_accuracy_is_high_for_true_labels_and_chance_for_shuffled_ones(data):
    clf, real, labels = data["classifier"], data["real"], data["labels"]
    true = class_accuracy(clf, real, labels, n_classes=10)
    assert true["accuracy"] > 0.9 and len(true["per_class"]) == 10 and min(true["per_class"]) > 0.7
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert class_accuracy(clf, real, shuffled, n_classes=10)["accuracy"] < 0.2
    only_zeros = class_accuracy(clf, data["zeros"], torch.zeros(len(data["zeros"]), dtype=torch.long), n_classes=10)
    assert only_zeros["per_class"][0] > 0.9 and only_zeros["per_class"][1:] == [None] * 9


# ---------------------------------------------------------------------------------------------- copies and collapse


def test_nearest_neighbours_agree_with_brute_force_and_can_skip_self():
    from evaluation.image_metrics import nearest_neighbours

    gen = torch.Generator().manual_seed(0)
    ref, queries = torch.randn(50, 4, generator=gen), torch.randn(7, 4, generator=gen)
    dist, idx = nearest_neighbours(queries, ref, chunk_size=3)
    brute = torch.cdist(queries.double(), ref.double())
    assert torch.equal(idx, brute.argmin(dim=1))
    assert torch.allclose(dist, brute.min(dim=1).values)
    self_dist, self_idx = nearest_neighbours(ref[:10], ref, exclude_self=True, chunk_size=4)
    assert (self_dist > 0).all() and not (self_idx == torch.arange(10)).any()


def test_copies_of_training_images_are_flagged_and_fresh_samples_are_not():
    from evaluation.image_metrics import copy_report

    gen = torch.Generator().manual_seed(1)
    train, fresh, held_out = (torch.randn(n, 8, generator=gen) for n in (400, 200, 200))
    copies = train[:200] + 1e-6 * torch.randn(200, 8, generator=gen)
    replayed = copy_report(copies, train, held_out, quantile=0.05)
    assert replayed["memorization"] == 1.0
    new = copy_report(fresh, train, held_out, quantile=0.05)
    assert new["memorization"] < 0.15  # about the quantile: fresh draws are as near as real images are
    assert new["memorization_real"] < 0.15
    assert new["nn_distance_median"] > 100 * replayed["nn_distance_median"]
    half_copied = copy_report(torch.cat([copies[:100], fresh[:100]]), train, quantile=0.05)
    assert 0.45 <= half_copied["memorization"] <= 0.6
    assert half_copied["indices"][:100].tolist() == list(range(100))  # each copy points at its original


def test_copy_report_threshold_from_a_subsample_matches_the_full_one():
    from evaluation.image_metrics import copy_report

    gen = torch.Generator().manual_seed(2)
    train, fake = torch.randn(3000, 4, generator=gen), torch.randn(300, 4, generator=gen)
    full = copy_report(fake, train, quantile=0.1)
    sub = copy_report(fake, train, quantile=0.1, max_reference=1000)
    assert sub["copy_threshold"] == pytest.approx(full["copy_threshold"], rel=0.15)


def test_feature_spread_falls_towards_zero_as_samples_collapse():
    from evaluation.image_metrics import feature_spread

    gen = torch.Generator().manual_seed(3)
    real, same = torch.randn(500, 8, generator=gen), torch.randn(500, 8, generator=gen)
    collapsed = torch.randn(1, 8, generator=gen) + 0.01 * torch.randn(500, 8, generator=gen)
    assert feature_spread(same) / feature_spread(real) == pytest.approx(1.0, abs=0.05)
    assert feature_spread(collapsed) / feature_spread(real) < 0.02
    with pytest.raises(ValueError, match="at least 2"):
        feature_spread(real[:1])
