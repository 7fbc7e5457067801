"""Teacher output centers (DINO centering), EMA over the batch, exact across workers."""
from __future__ import annotations

import torch
import torch.distributed as dist

from cmd_model.precision import at_least_fp32


def dist_ready() -> bool:
    """True when a torch.distributed process group is up (Ray Train / torchrun / tests)."""
    return dist.is_available() and dist.is_initialized()


@torch.no_grad()
def batch_mean(logits: torch.Tensor) -> torch.Tensor:
    """Mean over all rows of (..., K) across every worker -> (1, K).

    main_esvit.py DDINOLoss.update_center: sum, all_reduce, divide by rows * world size. Here the
    row count is all-reduced too, so unequal local batches still give the exact global mean.
    """
    flat = at_least_fp32(logits.detach()).reshape(-1, logits.shape[-1])
    total = flat.sum(dim=0, keepdim=True)
    count = torch.tensor([float(flat.shape[0])], device=flat.device)
    if dist_ready():
        packed = torch.cat([total.reshape(-1), count])
        dist.all_reduce(packed)
        total, count = packed[:-1].reshape(1, -1), packed[-1:]
    return total / count


@torch.no_grad()
def ema_center(center: torch.Tensor, logits: torch.Tensor, momentum: float) -> torch.Tensor:
    """center * m + batch_mean * (1 - m) (DDINOLoss.update_center, momentum 0.9)."""
    return center * momentum + batch_mean(logits) * (1.0 - momentum)
