"""The precision the loss computes in: float32 for half-precision activations, float64 kept."""
from __future__ import annotations

import torch


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Softmax, log and KL of bf16/fp16 logits (autocast) are taken in float32; a float64 run stays
    float64 end to end, which is how tests compare computations whose float32 summation order
    differs between CPUs (tests/test_cmd_distributed.py)."""
    return x if x.dtype == torch.float64 else x.float()
