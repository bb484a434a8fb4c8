"""The MFU arithmetic: the GPT FLOPs formula against torch's own count, and the device peak table."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.gpt import GPT, GPTConfig
from training.flops import gpt_train_flops_per_token, mfu, peak_flops


@pytest.mark.parametrize("n_layer,n_embd,block_size,vocab", [(2, 32, 16, 97), (3, 48, 24, 211)])
def test_the_gpt_formula_equals_the_counted_forward_and_backward(n_layer, n_embd, block_size, vocab):
    # Attention dropout on: the CPU attention then runs as matmuls, which the counter sees (SDPA's CPU kernel it does
    # not). Batch 3 at full context, one training step's forward and backward.
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=n_embd,
                          dropout=0.1)).train()
    x = torch.randint(0, vocab, (3, block_size))
    with FlopCounterMode(display=False) as counter:
        model.loss((x, x)).backward()
    assert counter.get_total_flops() == 3 * block_size * gpt_train_flops_per_token(n_layer, n_embd, block_size, vocab)


def test_peaks_follow_the_device_name_and_precision_and_unknown_devices_get_no_mfu():
    assert peak_flops("NVIDIA H100 80GB HBM3", bf16=True) == 989e12
    assert peak_flops("NVIDIA H100 PCIe", bf16=True) == 756e12
    assert peak_flops("NVIDIA A100-SXM4-40GB", bf16=False) == 156e12
    assert peak_flops("Some New Accelerator", bf16=True) is None
    assert mfu(1000.0, 1e9, None) is None
    assert mfu(1000.0, 1e9, 4e12) == pytest.approx(0.25)
