"""Multiple-instance bag pooling of token (instance) distributions into an image (bag) distribution.

Official (main_esvit.py DDINOLoss.forward, "ours md"): `torch.sum(region, dim=1)`, an unweighted
sum; normalised to a distribution it equals the mean. "attention" is gated attention MIL (Ilse,
Tomczak, Welling, ICML 2018, eq. 9): a = softmax_j(w^T (tanh(V h_j) * sigmoid(U h_j))), not in the
official code (see cmd_model/README.md).
"""
from __future__ import annotations

import math
import typing

import torch
from torch import nn

from cmd_model.config import MilPooling

POOLINGS = typing.get_args(MilPooling)


class GatedAttentionMIL(nn.Module):
    """Per-token weights from the token features h (B, N, D) -> (B, N), summing to 1 over N."""

    def __init__(self, in_dim: int, hidden_dim: int = 64) -> None:
        super().__init__()
        self.V = nn.Linear(in_dim, hidden_dim)
        self.U = nn.Linear(in_dim, hidden_dim)
        self.w = nn.Linear(hidden_dim, 1, bias=False)  # w^T: no bias (a bias cancels in the softmax)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1)
        return torch.softmax(a.float(), dim=-1)


def uniform_weights(token_probs: torch.Tensor) -> torch.Tensor:
    """1/N for each token: what sum and mean pooling give each instance."""
    b, n = token_probs.shape[:2]
    return token_probs.new_full((b, n), 1.0 / n)


def bag_pool(
    token_probs: torch.Tensor, pooling: str, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool token distributions (B, N, K) into a bag distribution (B, K).

    Returns (bag, per-token weights (B, N)); weights are uniform for "sum"/"mean" so a heat map
    can show every pooling the same way.
    """
    if pooling == "sum":
        raw = token_probs.sum(dim=1)  # official: unweighted sum over instances
        return raw / raw.sum(dim=-1, keepdim=True), uniform_weights(token_probs)
    if pooling == "mean":
        return token_probs.mean(dim=1), uniform_weights(token_probs)
    if pooling == "attention":
        if weights is None:
            raise ValueError("attention pooling needs the per-token weights of GatedAttentionMIL")
        return torch.einsum("bn,bnk->bk", weights.to(token_probs.dtype), token_probs), weights
    raise ValueError(f"loss.mil_pooling={pooling!r}; expected one of {POOLINGS}")


def bag_log_pool(token_log_probs: torch.Tensor, pooling: str, weights: torch.Tensor | None = None) -> torch.Tensor:
    """log of `bag_pool` computed in the log domain (logsumexp over tokens), so sharp token
    distributions (tau 0.04-0.1) do not underflow in float32. (B, N, K) log-probs -> (B, K)."""
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
