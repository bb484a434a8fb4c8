"""Model FLOPs utilisation (MFU): the share of the accelerator's peak that training's arithmetic uses.

FLOPs are the model's own (what a step must compute, not what the kernels happen to do): for a GPT, per trained
token, the forward pass costs 2 FLOPs per weight of every matrix multiply (24 d^2 per layer: QKV, output
projection, the 4x MLP) plus the attention scores and their weighted sum over the full context (4 T d per layer),
plus the vocabulary projection (2 d V); backward costs twice the forward, so a step is 3x the forward (Kaplan et
al. 2020, PaLM appendix B). Embedding lookups, norms and softmax are not counted. A unit test checks the formula
against torch's FlopCounterMode on a small model.

Peaks are dense (no sparsity) tensor-core figures from the vendors' data sheets, by the device name CUDA reports;
an unknown device gets no MFU (tokens/s only).
"""

from __future__ import annotations

# (substring of torch.cuda.get_device_name(), peak dense TFLOP/s at bf16, at fp32 incl. TF32 tensor cores)
PEAKS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989.0, 494.5),
    ("H100 PCIe", 756.0, 378.0),
    ("H100", 989.0, 494.5),  # SXM
    ("A100", 312.0, 156.0),
    ("L40S", 362.0, 183.0),
    ("L4", 121.0, 60.0),
    ("A10G", 70.0, 35.0),
    ("RTX 4090", 165.2, 82.6),
    ("RTX 3090", 71.0, 35.6),
    ("V100", 125.0, 15.7),  # fp16 tensor cores (no bf16); fp32 without TF32
    ("T4", 65.0, 8.1),
)


def gpt_train_flops_per_token(n_layer: int, n_embd: int, block_size: int, vocab_size: int) -> int:
    """Return the FLOPs of one training step (forward and backward) per token of a GPT at full context."""
    forward = n_layer * (24 * n_embd**2 + 4 * block_size * n_embd) + 2 * n_embd * vocab_size
    return 3 * forward


def peak_flops(device_name: str, bf16: bool) -> float | None:
    """Return the device's peak FLOP/s for the precision training uses, or None for a device not in the table."""
    for name, bf16_tflops, fp32_tflops in PEAKS:
        if name.lower() in device_name.lower():
            return 1e12 * (bf16_tflops if bf16 else fp32_tflops)
    return None


def mfu(tokens_per_second: float, flops_per_token: float, peak: float | None) -> float | None:
    """Return the fraction of `peak` that `tokens_per_second` at `flops_per_token` uses (None without a peak)."""
    return None if not peak else tokens_per_second * flops_per_token / peak
