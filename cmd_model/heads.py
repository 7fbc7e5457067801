"""DINO projection head (image head on the pooled feature, dense head on every token).

Architecture from DINO/EsViT `vision_transformer.py` class `DINOHead`: MLP (Linear, [BN], GELU)
x (nlayers-1) -> Linear to the bottleneck, L2-normalise, weight-normalised last Linear without
bias whose norm (g) is fixed to 1 when `norm_last_layer`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """Projection head applied to the last dimension of (..., in_dim) -> (..., out_dim)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(_init_weights)  # DINOHead._init_weights: trunc_normal(std .02), zero bias
        # Weight-normalised last layer; parametrization original0 = g, original1 = v (DINO: weight_g
        # filled with 1, frozen when norm_last_layer).
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        if norm_last_layer:
            g.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = self.mlp(x.reshape(-1, shape[-1]))  # flat so BatchNorm1d also works on tokens
        x = F.normalize(x, dim=-1, p=2)
        x = self.last_layer(x)
        return x.reshape(*shape[:-1], x.shape[-1])


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)


def cancel_last_layer_grads(model: nn.Module, epoch: int, freeze_epochs: int) -> None:
    """Drop the gradients of every head's last layer during the first `freeze_epochs` epochs
    (DINO utils.cancel_gradients_last_layer; stabilises the start of training)."""
    if epoch >= freeze_epochs:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None
