"""Inter-level MIL terms L_S / L_T: the image-level distribution against the bag of its token
(instance) distributions, and the bag pooling.

Pooling, official (main_esvit.py DDINOLoss.forward, "ours md"): `torch.sum(region, dim=1)`, an
unweighted sum; normalised to a distribution it equals the mean. "attention" weighs each token by
gated attention MIL (Ilse, Tomczak, Welling, ICML 2018, eq. 9; the module is
`cmd_model.mil_attention.GatedAttentionMIL`), not in the official code (see cmd_model/README.md).
"""
from __future__ import annotations

import math
import typing
from typing import get_args

import torch

from cmd_model.config import MilKLDirection, MilKLReduction, MilPooling
from cmd_model.precision import at_least_fp32

POOLINGS = typing.get_args(MilPooling)


def kl_log(log_p: torch.Tensor, log_q: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    """KL(p || q) = sum_k p_k (log p_k - log q_k) from log-probabilities (B, K); 0 log 0 = 0.

    reduction "batchmean": mean over B of the per-image KL; "mean": mean over all B*K elements
    (F.kl_div's default, the scale of the official term).
    """
    log_p = at_least_fp32(log_p)
    log_q = at_least_fp32(log_q)
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
    inp = at_least_fp32(inp)
    target = at_least_fp32(target)
    pos = target > 0
    safe = torch.where(pos, target, torch.ones_like(target))  # no log of <= 0, no NaN gradient
    return torch.where(pos, safe * (torch.log(safe) - inp), torch.zeros_like(target)).mean()


def bag_log_pool(token_log_probs: torch.Tensor, pooling: str, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The bag distribution of token distributions (B, N, K), as log-probabilities (B, K): pooled in
    the log domain (logsumexp over tokens), so sharp token distributions (tau 0.04-0.1) do not
    underflow in float32."""
    n = token_log_probs.shape[1]
    if pooling in ("sum", "mean"):
        # sum of N distributions normalised = their mean: log(1/N sum_j p_j)
        return torch.logsumexp(token_log_probs, dim=1) - math.log(n)
    if pooling == "attention":
        if weights is None:
            raise ValueError("attention pooling needs the per-token weights of GatedAttentionMIL")
        log_w = torch.log(weights.to(token_log_probs.dtype).clamp_min(1e-30))
        return torch.logsumexp(token_log_probs + log_w.unsqueeze(-1), dim=1)
    raise ValueError(f"loss.mil_pooling={pooling!r}; expected one of {POOLINGS}")
