"""Every image generator through the whole pipeline on the embedded digits with `dvc exp run -S model.name=...`,
registered, and answering with PNG images over HTTP from `mlflow models serve`."""

from __future__ import annotations

import base64
import io
import json

import pytest
import requests
from PIL import Image

from tests.e2e.conftest import make_project

pytestmark = pytest.mark.e2e

_TRAIN = {"max_steps": 20, "batch_size": 32, "eval_interval": 10, "eval_batches": 2, "warmup_steps": 0}
IMAGE_TINY = {
    "classifier": {"steps": 40, "width": 8, "feature_dim": 16},
    "model": {
        "dcgan": {"n_z": 16, "ngf": 16, "ndf": 16, "train": _TRAIN},
        "cdcgan": {"n_z": 16, "ngf": 16, "ndf": 16, "train": _TRAIN},
        "vae": {"latent_dim": 8, "base_channels": 8, "train": _TRAIN},
        "ddpm": {"block_out_channels": [16, 32], "num_train_timesteps": 50, "sample_steps": 5, "train": _TRAIN},
    },
    "evaluate": {"n_images": 100, "kid_subset_size": 50},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    proj = make_project(tmp_path_factory.mktemp("images"))
    proj.set_params(IMAGE_TINY)
    proj.run("git", "commit", "-qam", "tiny image settings")
    return proj


def png(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


@pytest.mark.parametrize("name", ["dcgan", "cdcgan", "vae", "ddpm"])
def test_exp_run_trains_registers_and_serves_images(project, name):
    project.run("dvc", "exp", "run", "-n", f"img-{name}", "-S", f"model.name={name}")
    metrics = json.loads((project.root / "metrics/evaluate.json").read_text())
    assert metrics["fid"] >= metrics["fid_real_floor"] >= 0
    assert "up to date" in project.run("dvc", "status").stdout
    assert f"img-{name}" in project.run("dvc", "exp", "show", "--json").stdout
    plots = json.loads(project.run("dvc", "plots", "show", "--json").stdout)
    assert not plots.get("errors"), plots["errors"]  # the loss curve and the pictures, by `dvc plots`
    assert {"plots/evaluate/samples.png", "plots/evaluate/nearest.png"} <= set(plots["data"])
    loss = plots["data"]["loss"][0]["content"]["data"]["values"]
    assert {row["filename::field"] for row in loss} == {"train_steps.json::train_loss", "train.json::val_loss"}

    version = json.loads((project.root / "metrics/register.json").read_text())["version"]
    with project.serve(f"models:/image-generator/{version}") as url:
        record = {"n": 3, "seed": 5, "scale": 2} | ({"class_label": 7} if name == "cdcgan" else {})
        resp = requests.post(f"{url}/invocations", json={"inputs": [record]}, timeout=120)
        assert resp.status_code == 200, resp.text
        rows = resp.json()["predictions"]
        assert len(rows) == 3
        images = [png(r["image"]) for r in rows]
        assert all(img.format == "PNG" and img.size == (32, 32) for img in images)  # 16 px, scaled by 2
        assert [r["class_label"] for r in rows] == ([7, 7, 7] if name == "cdcgan" else [-1, -1, -1])
        again = requests.post(f"{url}/invocations", json={"inputs": [record]}, timeout=120).json()
        assert again["predictions"] == rows  # seeded

        if name == "cdcgan":
            bad = requests.post(f"{url}/invocations", json={"inputs": [{"n": 1, "class_label": 10}]},
                                timeout=60)
            assert bad.status_code == 400
            assert bad.json()["message"] == "field 'class_label': 10 is invalid; expected a class id in 0..9"
            assert requests.get(f"{url}/ping", timeout=5).status_code == 200
        too_many = requests.post(f"{url}/invocations", json={"inputs": [{"n": 5000}]}, timeout=60)
        assert too_many.status_code == 400
        assert too_many.json()["message"] == "field 'n': 5000 is invalid; expected an integer in 1..256"
        half = requests.post(f"{url}/invocations", json={"inputs": [{"n": 2.5}]}, timeout=60)
        assert half.json()["message"] == "field 'n': 2.5 is invalid; expected an integer in 1..256"  # not 2 images
