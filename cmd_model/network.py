"""Student / teacher network: backbone + image head + dense head (+ MIL attention pooling)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from cmd_model.backbone import Backbone, build_backbone
from cmd_model.config import LossConfig, ModelConfig, method_uses
from cmd_model.heads import DINOHead
from cmd_model.mil_attention import GatedAttentionMIL


@dataclass
class NetOutput:
    """Per-view outputs, one list entry per input view, in the order of the views."""

    image_logits: list[torch.Tensor]  # (B, K) image head on the pooled feature
    token_logits: list[torch.Tensor] | None  # (B, N, K) dense head per token; None for dino
    tokens: list[torch.Tensor]  # (B, N, D) backbone tokens (region matching, MIL attention)
    mil_weights: list[torch.Tensor] | None  # (B, N) gated-attention weights; None unless attention


class CMDNetwork(nn.Module):
    """One network of the pair. `forward` runs the backbone once per group of consecutive views of
    the same resolution and the heads once on everything (DINO utils.MultiCropWrapper, EsViT's
    dense variant), so BatchNorm in a head sees all views together as in the official code."""

    def __init__(
        self,
        backbone: Backbone,
        head: DINOHead,
        dense_head: DINOHead | None = None,
        mil: GatedAttentionMIL | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.dense_head = dense_head
        self.mil = mil

    def forward(self, views: list[torch.Tensor]) -> NetOutput:
        if isinstance(views, torch.Tensor):
            views = [views]
        groups: list[list[torch.Tensor]] = []
        for v in views:
            if groups and groups[-1][0].shape[1:] == v.shape[1:]:
                groups[-1].append(v)
            else:
                groups.append([v])
        pooled_all, tokens_per_view = [], []
        for g in groups:
            pooled, tokens = self.backbone(torch.cat(g))
            pooled_all.append(pooled)
            tokens_per_view.extend(tokens.split([v.shape[0] for v in g]))
        sizes = [v.shape[0] for v in views]
        image_logits = list(self.head(torch.cat(pooled_all)).split(sizes))
        token_logits = None
        if self.dense_head is not None:
            flat = torch.cat([t.reshape(-1, t.shape[-1]) for t in tokens_per_view])
            out = self.dense_head(flat)
            token_logits = [
                o.reshape(t.shape[0], t.shape[1], -1)
                for o, t in zip(out.split([t.shape[0] * t.shape[1] for t in tokens_per_view]), tokens_per_view)
            ]
        mil_weights = [self.mil(t) for t in tokens_per_view] if self.mil is not None else None
        return NetOutput(image_logits, token_logits, list(tokens_per_view), mil_weights)


def build_network(model_cfg: ModelConfig, loss_cfg: LossConfig) -> CMDNetwork:
    """One network. The dense head exists for esvit/cmd, the attention MIL module only for cmd with
    attention pooling: every parameter takes part in the loss, as DDP requires."""
    dense, mil_term = method_uses(loss_cfg.method, "region"), method_uses(loss_cfg.method, "mil")
    backbone = build_backbone(model_cfg)
    d = backbone.embed_dim

    def head() -> DINOHead:
        return DINOHead(
            d,
            model_cfg.out_dim,
            use_bn=model_cfg.use_bn_in_head,
            norm_last_layer=model_cfg.norm_last_layer,
            nlayers=model_cfg.head_layers,
            hidden_dim=model_cfg.hidden_dim,
            bottleneck_dim=model_cfg.bottleneck_dim,
        )

    image_head = head()
    dense_head = head() if dense or mil_term else None
    mil = None
    if mil_term and loss_cfg.mil_pooling == "attention":
        mil = GatedAttentionMIL(d, loss_cfg.mil_attention_dim)
    return CMDNetwork(backbone, image_head, dense_head, mil)


def build_networks(model_cfg: ModelConfig, loss_cfg: LossConfig) -> tuple[CMDNetwork, CMDNetwork]:
    """(student, teacher): the teacher is a copy of the student (DINO: teacher loads the student's
    state dict) without gradients and without stochastic depth (DINO/EsViT build the teacher with
    drop_path_rate 0); it changes only through the EMA update."""
    student = build_network(model_cfg, loss_cfg)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad = False
    for m in teacher.modules():
        if hasattr(m, "drop_prob"):  # timm DropPath
            m.drop_prob = 0.0
    return student, teacher
