"""RankMe: the effective rank of an embedding matrix, a label-free measure of representation
quality (Garrido, Balestriero, Najman, LeCun, "RankMe: Assessing the Downstream Performance of
Pretrained Self-Supervised Representations by Their Rank", ICML 2023, eq. 1)."""
from __future__ import annotations

import torch

EPS = 1e-7  # the paper's epsilon, added to each normalised singular value


@torch.no_grad()
def rankme(features: torch.Tensor, eps: float = EPS) -> float:
    """exp(entropy of the singular values of `features` (N, D) normalised to sum 1).

    A matrix of rank k with equal singular values gives k; a collapsed embedding (every row the
    same) gives 1; at most min(N, D). Computed in float64 on the raw, uncentred features, as the
    paper does.
    """
    if features.ndim != 2 or min(features.shape) == 0:
        raise ValueError(f"rankme needs a non-empty (N, D) matrix, got shape {tuple(features.shape)}")
    sigma = torch.linalg.svdvals(features.detach().double().cpu())
    p = sigma / sigma.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))
