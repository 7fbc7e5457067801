"""Inter-level MIL terms L_S / L_T: image-level distribution vs the bag of token distributions."""
from __future__ import annotations

from typing import get_args

import torch

from cmd_model.config import MilKLDirection, MilKLReduction


def kl_log(log_p: torch.Tensor, log_q: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    """KL(p || q) = sum_k p_k (log p_k - log q_k) from log-probabilities (B, K); 0 log 0 = 0.

    reduction "batchmean": mean over B of the per-image KL; "mean": mean over all B*K elements
    (F.kl_div's default, the scale of the official term).
    """
    log_p = log_p.float()
    log_q = log_q.float()
    p = log_p.exp()
    elem = torch.where(p == 0, torch.zeros_like(p), p * (log_p - log_q))  # NaN stays NaN
    if reduction == "batchmean":
        return elem.sum(dim=-1).mean()
    if reduction == "mean":
        return elem.mean()
    raise ValueError(f"loss.mil_kl_reduction={reduction!r}; expected one of {get_args(MilKLReduction)}")


def mil_kl(image_log_probs: torch.Tensor, bag_log_probs: torch.Tensor, direction: str = "bag||image",
           reduction: str = "batchmean") -> torch.Tensor:
    """L_S / L_T on proper distributions (given as log-probabilities).

    The official call `F.kl_div(image, bag)` computes KL(bag || image): direction "bag||image".
    Nothing is detached (official: gradient reaches both the image head and the dense head).
    """
    if direction == "bag||image":
        return kl_log(bag_log_probs, image_log_probs, reduction)
    if direction == "image||bag":
        return kl_log(image_log_probs, bag_log_probs, reduction)
    raise ValueError(f"loss.mil_kl_direction={direction!r}; expected one of {get_args(MilKLDirection)}")


def legacy_kl_div(inp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`F.kl_div(inp, target)` as torch <= 1.10 computed it: entries with target <= 0 count as 0.

    = where(target > 0, target * (log(target) - inp), 0).mean(). The official student term feeds raw
    logits / tau_s (input) and their sum over tokens (target, with negative entries): current torch
    returns NaN there. `loss.mil_form: official` (the paper recipe) uses it.
    """
    inp = inp.float()
    target = target.float()
    pos = target > 0
    safe = torch.where(pos, target, torch.ones_like(target))  # no log of <= 0, no NaN gradient
    return torch.where(pos, safe * (torch.log(safe) - inp), torch.zeros_like(target)).mean()
