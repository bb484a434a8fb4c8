"""Denoising diffusion probabilistic model (`model.name: ddpm`): a diffusers UNet that predicts noise.

The network and the diffusion process are separate objects, as in lucidrains' denoising-diffusion-pytorch and
diffusers' `train_unconditional.py`: `unet` (a `UNet2DModel`) predicts the noise ε added to an image, and
`scheduler` (a `DDPMScheduler`, not a module: rebuilt from the config) owns the noise schedule and the forward
process q(x_t | x_0). Training follows Ho et al. 2020, algorithm 1 (https://arxiv.org/abs/2006.11239): draw noise
and a timestep, noise the image, predict the noise, take the MSE.

An exponential moving average of the weights (`ema`, a frozen copy of the UNet updated after every optimizer step)
is what validation and sampling use. Samples come from the full ancestral sampler ("ddpm", one network call per
training timestep) or the fast deterministic DDIM (https://arxiv.org/abs/2010.02502) and DPM-Solver++
(https://arxiv.org/abs/2211.01095) samplers, all diffusers schedulers built from the training schedule.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from torch import Tensor

from models.base import ImageGenerator, OnnxGraph, Optimization, Traced
from models.rules import unet_widths_problem

BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")
SAMPLERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm_solver": DPMSolverMultistepScheduler}
SAMPLE_CHUNK = 256  # images denoised per batch inside `sample`, to bound memory


@dataclass(frozen=True)
class DDPMConfig:
    image_size: int = 16  # from the data: height and width
    channels: int = 1  # from the data: 1 grey, 3 RGB
    n_classes: int = 0  # from the data; unused by this unconditional model, kept for the common interface
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # UNet width per level; each level after the first halves H, W
    layers_per_block: int = 1  # ResNet blocks per resolution
    attention: bool = True  # self-attention at the lowest resolution (last down block, middle, first up block)
    norm_num_groups: int = 8  # GroupNorm groups; every width must be a multiple
    num_train_timesteps: int = 1000  # T, the length of the forward (noising) process
    beta_schedule: str = "linear"  # "linear" (Ho et al.) or "squaredcos_cap_v2" (cosine, Nichol & Dhariwal)
    ema_decay: float = 0.999  # of the weight average that validation and sampling use
    sampler: str = "ddim"  # default sampler: "ddpm" (full ancestral), "ddim" or "dpm_solver" (both deterministic)
    sample_steps: int = 50  # network calls of the fast samplers (ddpm uses num_train_timesteps)

    def __post_init__(self) -> None:
        # JSON gives lists back: keep the config comparable after a round trip.
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        levels = len(self.block_out_channels)
        if levels == 0 or any(c < 1 for c in self.block_out_channels):
            raise ValueError(f"block_out_channels must be one or more positive widths, got {self.block_out_channels}")
        if self.image_size < 1 or self.image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size ({self.image_size}) must be a positive multiple of 2**{levels - 1} = "
                             f"{2 ** (levels - 1)}: each of the {levels} UNet levels after the first halves it")
        if self.channels < 1 or self.layers_per_block < 1 or self.norm_num_groups < 1:
            raise ValueError("channels, layers_per_block and norm_num_groups must be positive")
        if problem := unet_widths_problem(self.block_out_channels, self.norm_num_groups):
            raise ValueError(problem)
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be at least 2, got {self.num_train_timesteps}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule {self.beta_schedule!r} is not allowed; allowed values: "
                             f"{', '.join(BETA_SCHEDULES)}")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be strictly between 0 and 1, got {self.ema_decay}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} is not allowed; allowed values: {', '.join(SAMPLERS)}")
        if not 1 <= self.sample_steps <= self.num_train_timesteps:
            raise ValueError(f"sample_steps must be between 1 and num_train_timesteps ({self.num_train_timesteps}), "
                             f"got {self.sample_steps}")


def build_unet(config: DDPMConfig) -> UNet2DModel:
    """Return the noise-prediction network ε_θ(x_t, t) the config describes."""
    levels = len(config.block_out_channels)
    attn = [config.attention and i == levels - 1 for i in range(levels)]  # lowest resolution only
    return UNet2DModel(
        sample_size=config.image_size,
        in_channels=config.channels,
        out_channels=config.channels,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        add_attention=config.attention,  # in the middle block
        attention_head_dim=None,  # one head as wide as the block, as in Ho et al.
        norm_num_groups=config.norm_num_groups,
    )


def build_scheduler(config: DDPMConfig) -> DDPMScheduler:
    """Return the training diffusion process: noise schedule β_1..β_T, forward noising and the samplers' base."""
    # The linear schedule's endpoints are tuned for T = 1000; scale them so a shorter process still ends near pure
    # noise (Nichol & Dhariwal 2021, https://arxiv.org/abs/2102.09672, appendix).
    scale = 1000 / config.num_train_timesteps
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=min(scale * 1e-4, 0.999),
        beta_end=min(scale * 0.02, 0.999),
        prediction_type="epsilon",
        clip_sample=True,  # the predicted x_0 stays in the data range [-1, 1]
        timestep_spacing="trailing",  # samplers with fewer steps still start at t = T - 1, from pure noise
    )


class DDPM(ImageGenerator):
    """An unconditional diffusion model: UNet noise predictor, its weight average, and the noise schedule."""

    Config = DDPMConfig

    def __init__(self, config: DDPMConfig) -> None:
        super().__init__(config)
        self.unet = build_unet(config)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False).eval()  # not in optimizer_groups()
        # Updates applied to `ema`: sets the decay warm-up. A buffer, so it is saved with the weights and resumes.
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.scheduler = build_scheduler(config)

    def train(self, mode: bool = True) -> DDPM:
        super().train(mode)
        self.ema.eval()  # the average is never trained
        return self

    def _denoising_loss(self, net: UNet2DModel, x0: Tensor) -> Tensor:
        """Return the simple DDPM loss ||ε - ε_θ(x_t, t)||² of images x0 (B, C, H, W) under network `net`."""
        noise = torch.randn_like(x0)  # ε ~ N(0, I), from the global RNG
        t = torch.randint(0, self.config.num_train_timesteps, (x0.size(0),), device=x0.device)  # (B,)
        x_t = self.scheduler.add_noise(x0, noise, t)  # √ᾱ_t x0 + √(1 - ᾱ_t) ε
        return F.mse_loss(net(x_t, t).sample.float(), noise)

    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, _ = batch
        return self._denoising_loss(self.unet, x)

    def validation_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """Score the averaged weights: they are what samples come from."""
        x, _ = batch
        return self._denoising_loss(self.ema, x)

    def compile_targets(self) -> list[torch.nn.Module]:
        return [self.unet]  # the online network the loss runs; the EMA copy only averages weights

    def train_step(self, micro_batches: Sequence[tuple[Tensor, Tensor]], opt: Optimization) -> dict[str, Tensor]:
        metrics = super().train_step(micro_batches, opt)
        self.update_ema()
        return metrics

    @torch.no_grad()
    def update_ema(self) -> None:
        """Move the averaged weights toward the online ones: ema = decay * ema + (1 - decay) * w."""
        n = int(self.ema_updates)
        decay = min(self.config.ema_decay, (1 + n) / (10 + n))  # warm-up: early weights are forgotten quickly
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.unet.parameters()), 1 - decay)
        for avg, online in zip(self.ema.buffers(), self.unet.buffers()):
            avg.copy_(online)
        self.ema_updates += 1

    def onnx_graphs(self) -> dict[str, OnnxGraph]:
        """The averaged UNet for one denoising step; the sampler's loop and schedule go into `onnx_usage`."""
        cfg, g = self.config, torch.Generator().manual_seed(0)

        def inputs(b: int) -> tuple[Tensor, Tensor]:
            return (torch.randn(b, cfg.channels, cfg.image_size, cfg.image_size, generator=g),
                    torch.randint(cfg.num_train_timesteps, (b,), generator=g))

        shape = f"(batch, {cfg.channels}, {cfg.image_size}, {cfg.image_size})"
        doc = (f"predicted noise eps {shape} float32 of noisy images x_t {shape} float32 at timesteps t (batch,) "
               f"int64 in [0, {cfg.num_train_timesteps}): the averaged (EMA) UNet that sampling uses, one network "
               f"call of a sampler step")
        return {"unet": OnnxGraph(
            module=Traced(self.ema, lambda unet, x, t: unet(x, t).sample), inputs=inputs(2),
            input_names=("x_t", "t"), output_names=("eps",),
            dynamic_axes={"x_t": {0: "batch"}, "t": {0: "batch"}, "eps": {0: "batch"}}, tolerance=1e-4, doc=doc,
            checks=(inputs(1), inputs(3)))}

    def onnx_usage(self) -> dict[str, Any]:
        """The DDIM sampler (eta = 0) exactly as `sample(..., sampler="ddim")` runs it: the schedule values of the
        product's own scheduler, and the step (serving/onnx_sampling.py implements it with numpy)."""
        ddim = SAMPLERS["ddim"].from_config(self.scheduler.config)
        if ddim.config.thresholding or ddim.config.prediction_type != "epsilon":
            raise ValueError("the ONNX DDIM loop covers epsilon prediction without thresholding only")
        return super().onnx_usage() | {
            "sampler": "ddim", "eta": 0.0, "sample_steps": self.config.sample_steps,
            "noise": "x_T ~ N(0, I), float32 (batch, *image_shape)",
            "schedule": {"num_train_timesteps": ddim.config.num_train_timesteps,
                         "beta_schedule": ddim.config.beta_schedule, "beta_start": ddim.config.beta_start,
                         "beta_end": ddim.config.beta_end, "timestep_spacing": ddim.config.timestep_spacing,
                         "prediction_type": "epsilon", "clip_sample": bool(ddim.config.clip_sample),
                         "clip_sample_range": float(ddim.config.clip_sample_range),
                         "final_alpha_cumprod": float(ddim.final_alpha_cumprod),
                         "alphas_cumprod": ddim.alphas_cumprod.tolist()},  # float32 values, exact in JSON
            "timesteps": "trailing: round(arange(T, 0, -T / steps)) - 1, T = num_train_timesteps",
            "step": "a = alphas_cumprod[t]; a_prev = alphas_cumprod[t - T // steps], or final_alpha_cumprod when "
                    "that is negative; x0 = (x - sqrt(1 - a) eps) / sqrt(a), clipped to +-clip_sample_range when "
                    "clip_sample; x = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps (all float32)",
            "output": "clip(x, -1, 1) after the last step: images in [-1, 1]"}

    @torch.inference_mode()
    def sample(self, n: int, *, generator: torch.Generator, labels: Tensor | None = None, steps: int | None = None,
               sampler: str | None = None) -> Tensor:
        """Return `n` images (n, C, H, W) in [-1, 1] denoised by the averaged network, on the model's device.

        `sampler` defaults to the config's; `steps` to `sample_steps` (ddim, dpm_solver) or `num_train_timesteps`
        (ddpm). The starting noise is drawn on the generator's device (CPU for a CPU generator) and moved to the
        model, so a seed gives the same images on any device. `labels` is ignored (unconditional model)."""
        sampler = sampler or self.config.sampler
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is not allowed; allowed values: {', '.join(SAMPLERS)}")
        n_steps = self.config.num_train_timesteps
        if steps is None:
            steps = n_steps if sampler == "ddpm" else self.config.sample_steps
        if not 1 <= steps <= n_steps:
            raise ValueError(f"steps must be between 1 and num_train_timesteps ({n_steps}), got {steps}")
        device = self.ema_updates.device
        size, c = self.config.image_size, self.config.channels
        x_T = torch.randn((n, c, size, size), generator=generator, device=generator.device)  # (n, C, H, W)
        if n == 0:
            return x_T.to(device)
        images = [self._denoise(chunk.to(device), sampler, steps, generator) for chunk in x_T.split(SAMPLE_CHUNK)]
        return torch.cat(images).clamp(-1, 1)

    def _denoise(self, x: Tensor, sampler: str, steps: int, generator: torch.Generator) -> Tensor:
        """Run the reverse process from noise x (B, C, H, W) with a fresh scheduler (they keep per-run state)."""
        scheduler = SAMPLERS[sampler].from_config(self.scheduler.config)  # eta = 0 for DDIM: deterministic
        scheduler.set_timesteps(steps, device=x.device)
        for t in scheduler.timesteps:
            eps = self.ema(scheduler.scale_model_input(x, t), t).sample  # (B, C, H, W) predicted noise
            # Only the ancestral DDPM step draws noise; diffusers draws it on a CPU generator's device and moves it.
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        return x
