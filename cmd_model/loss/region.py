"""Region-level term L_R (EsViT): each student token distilled from its best-matching teacher token."""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def match_regions(s_feat: torch.Tensor, t_feat: torch.Tensor) -> torch.Tensor:
    """argmax_i cos(s_j, t_i) for each student token j: (B, Ns, D), (B, Nt, D) -> (B, Ns).

    main_esvit.py DDINOLoss.forward: `region_sim_matrix.max(dim=2)[1]` on L2-normalised backbone
    token features (not on the head outputs). The index has no gradient in the official code.
    """
    sim = torch.matmul(F.normalize(s_feat.float(), dim=-1), F.normalize(t_feat.float(), dim=-1).transpose(1, 2))
    return sim.argmax(dim=2)


def region_ce(t_token_probs: torch.Tensor, s_token_log_probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """mean_b mean_j -sum_k P_{m(j),k} q_{j,k}; P (B, Nt, K), q (B, Ns, K), index (B, Ns)."""
    k = t_token_probs.shape[-1]
    matched = torch.gather(t_token_probs, 1, index.unsqueeze(-1).expand(-1, -1, k))
    return torch.sum(-matched * s_token_log_probs, dim=-1).mean()
