"""Where tensors live: the device `train.device` asks for, the autocast dtype `train.precision` gives, and whether
`train.compile` compiles."""

from __future__ import annotations

import torch


def pick_device(requested: str) -> torch.device:
    """Resolve `train.device`: auto prefers CUDA, then MPS, then CPU; an explicit device must exist."""
    from runtime.errors import ParamsError

    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if requested == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (requested == "cuda" and not cuda) or (requested == "mps" and not mps):
        raise ParamsError(f"train.device: {requested!r} is not available on this machine; allowed values: auto, cpu"
                          + (", cuda" if cuda else "") + (", mps" if mps else ""))
    return torch.device(requested)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype: bf16 on CUDA under `auto`, none (fp32) elsewhere."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def compile_enabled(setting: bool | str, device: torch.device) -> bool:
    """Resolve `train.compile`: auto compiles on CUDA only. On CPU it does not pay: the default GPT's first step
    compiles for ~74 s and the compiled step then runs at 0.67x eager speed (BENCHMARKS.md, training throughput)."""
    return on_cuda_when_auto(setting, device)


def on_cuda_when_auto(setting: bool | str, device: torch.device) -> bool:
    """Resolve a true | false | auto setting whose auto means: on CUDA devices only (train.compile, train.prefetch)."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)
