"""Constraints between a generator's hyper-parameters, torch-free: the params schema (config/params.py) checks
them when params.yaml is read, and each model's Config checks them again when built directly from Python. One
function per rule, so the two can never disagree. Each returns the problem in words, or None."""

from __future__ import annotations

from collections.abc import Sequence


def unet_widths_problem(block_out_channels: Sequence[int], norm_num_groups: int) -> str | None:
    """DDPM: GroupNorm splits each UNet width into norm_num_groups groups, so every width must be a multiple."""
    bad = [c for c in block_out_channels if c % norm_num_groups]
    if bad:
        return f"block_out_channels {bad} must be multiples of norm_num_groups ({norm_num_groups})"
    return None
