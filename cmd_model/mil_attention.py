"""Learned weights of the instances (tokens) in a bag: the attention pooling of the MIL terms."""
from __future__ import annotations

import torch
from torch import nn

from cmd_model.precision import at_least_fp32


class GatedAttentionMIL(nn.Module):
    """Gated attention MIL (Ilse et al., ICML 2018, eq. 9): a = softmax_j(w^T (tanh(V h_j) * sigmoid(U h_j))),
    per-token weights from the token features h (B, N, D) -> (B, N), summing to 1 over N. Not in
    the official code; used by `loss.mil_pooling: attention` (cmd_model/loss/mil.py)."""

    def __init__(self, in_dim: int, hidden_dim: int = 64) -> None:
        super().__init__()
        self.V = nn.Linear(in_dim, hidden_dim)
        self.U = nn.Linear(in_dim, hidden_dim)
        self.w = nn.Linear(hidden_dim, 1, bias=False)  # w^T: no bias (a bias cancels in the softmax)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1)
        return torch.softmax(at_least_fp32(a), dim=-1)
