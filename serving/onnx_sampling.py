"""Sampling from an ONNX export (serving/exports.py) as a consumer would: onnxruntime and numpy only, no torch and
no other code of this project, so this file is also what a consumer outside Python has to port.

`ddim_sample`: the deterministic DDIM sampler (Song et al. 2021, https://arxiv.org/abs/2010.02502, eta = 0) of an
exported DDPM, driven by its `unet` graph and the schedule its onnx.json carries. From the same starting noise it
reproduces `DDPM.sample(n, sampler="ddim")`, which runs diffusers' `DDIMScheduler`: the same timesteps, the same
step in float32, the same clipping of the predicted image; fed PyTorch's noise predictions it matches bit for bit,
and through the ONNX UNet within `DDIM_TOLERANCE` (tests/unit/test_onnx.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "onnx.json"  # = serving.exports.ONNX_MANIFEST (not imported: this file stands alone)
# How far this loop's images may lie from the product's for the same noise, in [-1, 1] units: a quarter of one
# uint8 grey level (1 / 127.5), so the pixels agree but for rounding ties. The ONNX UNet's float32 differences
# (~1e-6) pass through 1 / sqrt(alphas_cumprod) at the noisiest steps; measured: 6e-5 on the tests' tiny model
# (5 steps), 6e-4 on the default one, untrained, at 50 steps (bench/onnx_parity.py).
DDIM_TOLERANCE = 2e-3


def read_manifest(onnx_dir: Path) -> dict[str, Any]:
    """Return the manifest of the ONNX export in `onnx_dir`."""
    return json.loads((Path(onnx_dir) / MANIFEST).read_text(encoding="utf-8"))


def trailing_timesteps(n_train: int, steps: int) -> np.ndarray:
    """Return the `steps` timesteps, descending, of "trailing" spacing (Lin et al. 2024, table 2): the first is
    n_train - 1, so even a few steps start from pure noise."""
    return np.round(np.arange(n_train, 0, -n_train / steps)).astype(np.int64) - 1


def ddim_step(x: np.ndarray, eps: np.ndarray, t: int, prev_t: int, schedule: dict[str, Any],
              alphas_cumprod: np.ndarray) -> np.ndarray:
    """Return x_{prev_t} from x_t and the predicted noise `eps` (eta = 0: no fresh noise)."""
    a = alphas_cumprod[t]  # float32 scalars keep every product in float32, as in the product's sampler
    a_prev = alphas_cumprod[prev_t] if prev_t >= 0 else np.float32(schedule["final_alpha_cumprod"])
    x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5  # the image the noise prediction implies
    if schedule["clip_sample"]:
        r = schedule["clip_sample_range"]
        x0 = np.clip(x0, -r, r)
    return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps


def ddim_sample(onnx_dir: Path, noise: np.ndarray, steps: int | None = None, session=None) -> np.ndarray:
    """Denoise `noise` (n, C, H, W) float32, x_T ~ N(0, I), with the exported DDPM in `onnx_dir` in `steps` DDIM
    steps (default: the model's sample_steps); return images (n, C, H, W) float32 in [-1, 1]. `session` is an
    onnxruntime InferenceSession of its `unet` graph, to reuse one (or set threads); one is made by default."""
    manifest = read_manifest(onnx_dir)
    usage = manifest["usage"]
    if manifest["family"] != "ddpm" or usage.get("sampler") != "ddim":
        raise ValueError(f"{onnx_dir} holds a {manifest['family']} export; ddim_sample needs a ddpm one")
    schedule = usage["schedule"]
    if schedule["timestep_spacing"] != "trailing" or schedule["prediction_type"] != "epsilon":
        raise ValueError("ddim_sample covers trailing timesteps and epsilon prediction only")
    n_train = schedule["num_train_timesteps"]
    steps = usage["sample_steps"] if steps is None else steps
    if not 1 <= steps <= n_train:
        raise ValueError(f"steps must be between 1 and num_train_timesteps ({n_train}), got {steps}")
    if session is None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(Path(onnx_dir) / manifest["graphs"]["unet"]["file"]),
                                               providers=["CPUExecutionProvider"])
    alphas_cumprod = np.asarray(schedule["alphas_cumprod"], dtype=np.float32)
    x = np.asarray(noise, dtype=np.float32)
    for t in trailing_timesteps(n_train, steps):
        eps = session.run(["eps"], {"x_t": x, "t": np.full(len(x), t, dtype=np.int64)})[0]
        # The previous timestep is t - T // steps, not the next entry of the list: diffusers' DDIM step, which the
        # product runs, computes it so (the two differ when steps does not divide T).
        x = ddim_step(x, eps, int(t), int(t) - n_train // steps, schedule, alphas_cumprod)
    return np.clip(x, -1, 1)
