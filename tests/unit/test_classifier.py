"""The offline feature-extractor classifier: it learns digits, trains deterministically, round-trips through
safetensors, and adapts to what torchmetrics feeds a custom `feature=` module."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.classifier import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    Classifier,
    ClassifierConfig,
    FeatureExtractor,
    LogitsExtractor,
    accuracy,
    embed,
    fit_classifier,
    load_classifier,
    random_shift,
    rotation_task,
    to_unit,
)
from tests.image_data import digits


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions gain nothing from a second thread, and OpenMP threads stall badly on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def split():
    images, labels = digits(16)
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:1300], order[1300:]
    return images[train], labels[train], images[test], labels[test]


@pytest.fixture(scope="module")
def trained(split):
    images, labels, _, _ = split
    config = ClassifierConfig(image_size=16, channels=1, n_classes=10, width=16)
    return fit_classifier(images, labels, config, steps=150, batch_size=64, lr=3e-3, seed=0)


def tiny_fit(seed: int) -> Classifier:
    images, labels = digits(8)
    config = ClassifierConfig(image_size=8, channels=1, n_classes=10, width=8, feature_dim=16)
    return fit_classifier(images[:256], labels[:256], config, steps=12, batch_size=32, lr=3e-3, seed=seed)


# ---------------------------------------------------------------------------------------------- training


def test_the_classifier_learns_digits_it_has_not_seen(trained, split):
    _, _, test_images, test_labels = split
    assert not trained.training  # returned ready for feature extraction
    assert accuracy(trained, test_images, test_labels) > 0.9


def test_the_same_seed_gives_identical_weights_and_another_seed_does_not():
    a, b, c = tiny_fit(seed=3), tiny_fit(seed=3), tiny_fit(seed=4)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert not all(torch.equal(t, c.state_dict()[n]) for n, t in a.state_dict().items())


def test_training_leaves_the_callers_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_fit(seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_fit_rejects_images_that_do_not_match_the_config():
    images, labels = digits(8)
    config = ClassifierConfig(image_size=16, channels=1, n_classes=10)
    with pytest.raises(ValueError, match="uint8 images"):
        fit_classifier(images, labels, config, steps=1, batch_size=8, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="labels"):
        fit_classifier(images, labels + 5, ClassifierConfig(8, 1, 10), steps=1, batch_size=8, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        ClassifierConfig(image_size=8, channels=1, n_classes=1)


def test_random_shift_translates_each_image_by_at_most_max_shift():
    x = torch.full((64, 1, 9, 9), -1.0)
    x[:, :, 4, 4] = 1.0  # one bright pixel in the centre of a black image
    shifted = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    assert torch.equal((shifted == 1).sum(dim=(1, 2, 3)), torch.ones(64, dtype=torch.long))  # moved, not lost
    rows, cols = (shifted[:, 0] == 1).nonzero()[:, 1:].T
    assert set(rows.tolist()) == set(cols.tolist()) == {2, 3, 4, 5, 6}  # every offset in [-2, 2] occurs


# ---------------------------------------------------------------------------------------------- persistence


def test_save_and_load_give_identical_logits_without_pickle(trained, split, tmp_path):
    trained.save(tmp_path / "clf")
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    spec = json.loads((tmp_path / "clf" / CONFIG_FILE).read_text(encoding="utf-8"))
    assert spec["config"]["n_classes"] == 10
    loaded = load_classifier(tmp_path / "clf")
    assert loaded.config == trained.config and not loaded.training
    x = to_unit(torch.from_numpy(split[2][:50]))
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))


def test_load_refuses_another_format_version(trained, tmp_path):
    trained.save(tmp_path)
    spec = json.loads((tmp_path / CONFIG_FILE).read_text(encoding="utf-8"))
    (tmp_path / CONFIG_FILE).write_text(json.dumps(spec | {"format_version": 99}), encoding="utf-8")
    with pytest.raises(ValueError, match="format"):
        load_classifier(tmp_path)


# ---------------------------------------------------------------------------------------------- rotation task


def test_rotation_task_rotates_each_image_by_its_label():
    images = np.zeros((40, 1, 5, 5), dtype=np.uint8)
    images[:, 0, 0, 0] = 255  # a marker in the top-left corner
    images[:, 0, 0, 1] = np.arange(40)  # and the image's index next to it, to follow each image
    rotated, labels = rotation_task(images, seed=0)
    assert rotated.dtype == np.uint8 and rotated.shape == images.shape and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [10, 10, 10, 10]  # balanced
    corner = {0: (0, 0), 1: (4, 0), 2: (4, 4), 3: (0, 4)}  # counter-clockwise quarter turns
    for i, label in enumerate(labels):
        assert rotated[i, 0][corner[label]] == 255
        np.testing.assert_array_equal(np.rot90(rotated[i, 0], -label), images[i, 0])
    again, same = rotation_task(images, seed=0)
    other = rotation_task(images, seed=1)[1]
    assert np.array_equal(again, rotated) and np.array_equal(same, labels) and not np.array_equal(other, labels)


def test_rotation_task_needs_square_images():
    with pytest.raises(ValueError, match="square"):
        rotation_task(np.zeros((4, 1, 5, 6), dtype=np.uint8), seed=0)


# ---------------------------------------------------------------------------------------------- torchmetrics adapters


def test_extractors_take_uint8_and_float_in_minus_one_one_alike(trained, split):
    pixels = torch.from_numpy(split[2][:32])
    features, logits = FeatureExtractor(trained), LogitsExtractor(trained)
    assert features.num_features == 64 and logits.num_features == 10
    f = features(pixels)
    assert f.shape == (32, 64) and f.dtype == torch.float64  # float64: KID's cubic kernel runs in this dtype
    assert torch.equal(f, features(to_unit(pixels)))
    assert torch.equal(logits(pixels), logits(to_unit(pixels)))
    assert logits(pixels).shape == (32, 10)
    with pytest.raises(TypeError):
        features(pixels.long())


def test_extractors_never_leave_eval_mode(trained, split):
    extractor = FeatureExtractor(trained)
    extractor.train()  # what a Metric's .train() would do to its child modules
    assert not extractor.training and not trained.training


def test_features_of_an_image_do_not_depend_on_its_batch(trained, split):
    x = to_unit(torch.from_numpy(split[2][:64]))
    batch, _ = embed(trained, x, batch_size=64)
    alone, _ = embed(trained, x[:5], batch_size=1)
    torch.testing.assert_close(alone, batch[:5], rtol=1e-4, atol=1e-4)


def test_torchmetrics_fid_accepts_the_extractor_without_probing_it(trained):
    from torchmetrics.image.fid import FrechetInceptionDistance

    # without num_features, FID would probe the module with a (1, 3, 299, 299) uint8 image and fail
    metric = FrechetInceptionDistance(feature=FeatureExtractor(trained))
    assert metric.real_features_sum.shape == (64,)
