"""MLflow pyfunc for image generators, logged as code (models-from-code): nothing is pickled.

`mlflow models serve` and `mlflow.pyfunc.load_model` import this file and rebuild the generator from its
safetensors weights and JSON config (artifact `generator`). A request row asks for `n` images (required) with
optional `seed`, `class_label` (conditional generators: an id in 0..n_classes-1), `steps` (iterative samplers such
as DDPM: sampler steps) and `scale` (nearest-neighbour upscaling of the PNGs). The answer has one row per image:
`image` (base64-encoded PNG), `index` (within its request row), `class_label` (-1 when unconditional) and `seed`.
Over HTTP: `{"inputs": [{"n": 2, "seed": 1}]}` in, `{"predictions": [{"image": ..., ...}, ...]}` out.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

from serving.requests import as_rows, bad_request, integer, missing
from serving.signatures import ImageRequest, ImageResponse

MAX_IMAGES = 256  # per request row; more is refused with HTTP 400
MAX_ROWS = 64  # request rows per request
MAX_STEPS = 1000
MAX_SCALE = 16
FIELDS = tuple(ImageRequest.model_fields)


def request_settings(row: dict[str, Any], n_classes: int, conditional: bool) -> dict[str, Any]:
    """Validate one request row; raise a 400-mapped error naming the bad field and what it accepts."""
    if missing(row.get("n")):
        raise bad_request("field 'n' is required: the number of images to generate")
    out = {"n": integer(row, "n", None, 1, MAX_IMAGES, f"an integer in 1..{MAX_IMAGES}"),
           "seed": integer(row, "seed", None, 0, 2**63 - 1, "an integer in 0..2**63-1"),
           "steps": integer(row, "steps", None, 1, MAX_STEPS, f"an integer in 1..{MAX_STEPS}"),
           "scale": integer(row, "scale", 1, 1, MAX_SCALE, f"an integer in 1..{MAX_SCALE}")}
    if conditional:
        out["class_label"] = integer(row, "class_label", None, 0, n_classes - 1,
                                      f"a class id in 0..{n_classes - 1}")
    elif not missing(row.get("class_label")):
        raise bad_request("field 'class_label': this generator is unconditional; omit the field")
    else:
        out["class_label"] = None
    return out


def png_base64(image, scale: int) -> str:
    """Encode one uint8 image (C, H, W) as a base64 PNG, upscaled by `scale` (nearest neighbour)."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image).transpose(1, 2, 0)
    pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    if scale > 1:
        pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class ImageGeneratorModel(PythonModel):
    """Generate images with a trained image generator."""

    def load_context(self, context) -> None:
        import torch

        from models.base import load_generator

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_generator(Path(context.artifacts["generator"]), self.device).eval()
        meta = json.loads(Path(context.artifacts["data_meta"]).read_text(encoding="utf-8"))
        self.n_classes = int(meta.get("n_classes", 0))
        self.conditional = bool(getattr(self.model, "conditional", False))

    # The type hints are the signature (serving/signatures.py): MLflow passes the rows as sent.
    def predict(self, context, model_input: list[ImageRequest], params=None) -> list[ImageResponse]:
        import torch

        from models.base import to_uint8

        settings = [request_settings(row, self.n_classes, self.conditional)
                    for row in as_rows(model_input, FIELDS, MAX_ROWS)]  # all checked before any work
        if sum(s["n"] for s in settings) > MAX_IMAGES:
            raise bad_request(f"the request asks for {sum(s['n'] for s in settings)} images in all; at most "
                              f"{MAX_IMAGES} per request")
        out: list[dict[str, Any]] = []
        for s in settings:
            seed = s["seed"] if s["seed"] is not None else torch.seed() % 2**63
            gen = torch.Generator().manual_seed(seed)
            labels = None
            if self.conditional:
                labels = (torch.full((s["n"],), s["class_label"], dtype=torch.long) if s["class_label"] is not None
                          else torch.randint(self.n_classes, (s["n"],), generator=gen))
            with torch.no_grad():
                images = self.model.sample(s["n"], generator=gen, labels=labels, steps=s["steps"])
            pixels = to_uint8(images).cpu().numpy()
            out += [{"image": png_base64(image, s["scale"]), "index": i,
                     "class_label": int(labels[i]) if labels is not None else -1, "seed": seed}
                    for i, image in enumerate(pixels)]
        return out


mlflow.models.set_model(ImageGeneratorModel())
