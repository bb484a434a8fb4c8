"""ingest → clean → preprocess on image data: the embedded digits, folders with classes, arrays, Hugging Face
datasets, and the bad input a user will feed them (no images, corrupt files, mixed sizes and modes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dataprep.tokenize import load_images
from runtime.errors import DataError
from tasks.clean import clean
from tasks.ingest import ingest
from tasks.preprocess import preprocess
from tests.conftest import REPO_ROOT, TINY_IMAGE

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def run_data_stages(params) -> tuple[dict, dict, dict]:
    return ingest(params), clean(params), preprocess(params)


def image_params(project, **overrides):
    merged = {**TINY_IMAGE, **overrides}
    merged["model"] = {**TINY_IMAGE["model"], "name": overrides.get("model", {}).get("name", "dcgan")}
    return project.make_params(**merged)


def test_embedded_digits_become_arrays_of_the_configured_size_with_labels(project):
    params = image_params(project, ingest={"image_sources": ["embedded:digits"]}, preprocess={"image_size": 16})
    ingested, cleaned, pre = run_data_stages(params)
    assert (ingested["n_images"], ingested["n_classes"]) == (1797, 10)
    assert cleaned["images_out"] == 1797 and cleaned["mode"] == "L"
    total = 0
    for split in ("train", "val", "test"):
        images, labels = load_images(params.preprocess.out_dir, split)
        assert images.dtype == np.uint8 and images.shape[1:] == (1, 16, 16)
        assert labels.dtype == np.int64 and set(np.unique(labels)) <= set(range(10))
        total += len(images)
    assert total == 1797 and pre["train_n_images"] > 0.8 * 1797
    meta = json.loads((params.preprocess.out_dir / "meta.json").read_text())
    assert meta["classes"] == [str(d) for d in range(10)] and meta["modality"] == "image"
    first = (params.preprocess.out_dir / "train.npy").read_bytes()
    preprocess(params)
    assert (params.preprocess.out_dir / "train.npy").read_bytes() == first  # deterministic


def test_subfolders_are_classes_and_splits_are_stable(project):
    project.write_images(per_class=30)
    params = image_params(project)
    run_data_stages(params)
    meta = json.loads((params.preprocess.out_dir / "meta.json").read_text())
    assert meta["classes"] == ["left", "right", "top"] and meta["n_classes"] == 3
    images, labels = load_images(params.preprocess.out_dir, "train")
    left = images[labels == 0].astype(float)
    assert left[..., :4].mean() > left[..., 4:].mean() + 100  # label 0 is "left": bright left half (8 px wide)
    assert sum(meta[s]["n_images"] for s in ("train", "val", "test")) == 90


def test_corrupt_images_are_dropped_and_counted_and_mixed_sizes_and_modes_are_converted(project):
    root = project.write_images(per_class=20, classes=("a", "b"))
    (root / "a" / "truncated.png").write_bytes((root / "a" / "000.png").read_bytes()[:40])
    (root / "b" / "not-an-image.png").write_bytes(b"this is text, not a PNG")
    (root / "b" / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (30, 20), (200, 30, 30)).save(root / "a" / "wide-red.png")
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(root / "b" / "transparent.png")
    Image.new("P", (10, 10)).save(root / "b" / "palette.gif")
    Image.new("L", (2, 2), 128).save(root / "b" / "tiny.png")
    (root / "b" / "copy.png").write_bytes((root / "b" / "001.png").read_bytes())
    params = image_params(project)
    _, cleaned, _ = run_data_stages(params)
    assert cleaned["dropped_undecodable"] == 3
    assert cleaned["dropped_too_small"] == 1
    assert cleaned["dropped_duplicate"] == 1
    assert cleaned["mode"] == "RGB"  # auto: one image has colour
    assert cleaned["converted_mode"] >= 40  # the grayscale ones
    assert cleaned["images_out"] == 40 + 3
    images, _ = load_images(params.preprocess.out_dir, "train")
    assert images.shape[1:] == (3, 8, 8)


def test_forcing_grayscale_converts_colour_images(project):
    root = project.write_images(per_class=10, classes=("a", "b"))
    Image.new("RGB", (12, 12), (10, 200, 10)).save(root / "a" / "green.png")
    params = image_params(project, clean={"image_mode": "L"})
    _, cleaned, _ = run_data_stages(params)
    assert cleaned["mode"] == "L"
    assert load_images(params.preprocess.out_dir, "train")[0].shape[1] == 1


def test_arrays_with_and_without_labels(project):
    rng = np.random.default_rng(0)
    inputs = project.path("data", "inputs")
    inputs.mkdir(parents=True)
    np.savez(inputs / "set.npz", image=rng.integers(0, 256, (60, 10, 10), dtype=np.uint8),
             label=np.arange(60) % 2)
    params = image_params(project, ingest={"image_sources": ["data/inputs/set.npz"]})
    ingested, _, _ = run_data_stages(params)
    assert (ingested["n_images"], ingested["n_classes"]) == (60, 2)

    np.save(inputs / "floats.npy", rng.random((50, 12, 12, 3)))
    params = image_params(project, ingest={"image_sources": ["data/inputs/floats.npy"]})
    ingested, cleaned, _ = run_data_stages(params)
    assert (ingested["n_images"], ingested["n_classes"], cleaned["mode"]) == (50, 0, "RGB")


def test_a_saved_hugging_face_image_dataset_is_read_offline(project):
    import datasets

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)) for _ in range(40)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    ds = datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(40)]}, features=features)
    ds.save_to_disk(str(project.path("hf-images")))
    params = image_params(project, ingest={"image_sources": [f"hf:{project.path('hf-images')}"]})
    ingested, _, _ = run_data_stages(params)
    assert (ingested["n_images"], ingested["n_classes"]) == (40, 2)
    assert json.loads((params.preprocess.out_dir / "meta.json").read_text())["classes"] == ["cat", "dog"]


@pytest.mark.parametrize("setup, message", [
    (lambda root: (root / "empty").mkdir(parents=True), "directory has no image files"),
    (lambda root: None, "no such file or directory"),
])
def test_bad_image_sources_fail_with_one_line(project, setup, message):
    setup(project.path("data", "inputs"))
    params = image_params(project, ingest={"image_sources": ["data/inputs/empty"]})
    with pytest.raises(DataError, match=message):
        ingest(params)


def test_labelled_and_unlabelled_sources_cannot_be_mixed(project):
    project.write_images(per_class=5, classes=("a", "b"))
    np.save(project.path("data", "inputs", "more.npy"), np.zeros((5, 8, 8), dtype=np.uint8))
    params = image_params(project, ingest={"image_sources": ["data/inputs/images", "data/inputs/more.npy"]})
    with pytest.raises(DataError, match="label all of them or none"):
        ingest(params)


def test_only_corrupt_images_stop_clean_with_the_counts(project):
    folder = project.path("data", "inputs", "images")
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"\x89PNG broken")
    params = image_params(project)
    ingest(params)
    with pytest.raises(DataError, match="no images left after cleaning: 3 in, 3 undecodable"):
        clean(params)


def test_the_command_line_reports_an_empty_folder_in_one_line(project):
    project.path("data", "inputs", "images").mkdir(parents=True)
    image_params(project)
    proc = subprocess.run([sys.executable, "-m", "tasks.ingest"], cwd=project.root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ingest: source 'data/inputs/images': directory has no image files")
    assert "Traceback" not in proc.stderr
