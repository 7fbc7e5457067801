"""Checkpoints in the official CMD layout (main_esvit.py `save_dict`), built from a CMDEngine's
networks: what an EsViT/CMD user hands to `model.init_checkpoint`."""
from __future__ import annotations

import argparse
import re
import warnings

import torch
from torch import nn

from cmd_model.engine import CMDEngine
from cmd_model.heads import DINOHead


def official_head(head: DINOHead) -> nn.Module:
    """The same head as EsViT's DINOHead builds it: `nn.utils.weight_norm` (keys weight_g, weight_v)."""
    official = nn.Module()
    official.mlp = head.mlp
    linear = nn.Linear(head.last_layer.in_features, head.last_layer.out_features, bias=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the API main_esvit.py used, deprecated since
        official.last_layer = nn.utils.weight_norm(linear)
    params = head.last_layer.parametrizations.weight
    with torch.no_grad():
        official.last_layer.weight_g.copy_(params.original0)
        official.last_layer.weight_v.copy_(params.original1)
    return official


def official_network_state(net, prefix: str) -> dict[str, torch.Tensor]:
    """main_esvit.py's state dict of a Swin network: EsViT's Swin layout (downsample at the end of
    a stage, persistent relative_position_index buffers), `head` and `head_dense` as attributes of
    the backbone model; `module.` for the DDP-wrapped student."""
    out = {}
    for k, v in net.backbone.model.state_dict().items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        out[k] = v.clone()
        if k.endswith("attn.relative_position_bias_table"):
            out[k.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(16, 16).long()
    for name, head in (("head", net.head), ("head_dense", net.dense_head)):
        out.update({f"{name}.{k}": v.clone() for k, v in official_head(head).state_dict().items()})
    return {prefix + k: v for k, v in out.items()}


def esvit_checkpoint(src: CMDEngine) -> dict:
    """A checkpoint as main_esvit.py saves it (save_dict) for the networks of `src`."""
    opt = torch.optim.AdamW(src.student_module.parameters())
    out_dim = src.loss.center.shape[-1]
    return {
        "student": official_network_state(src.student_module, "module."),
        "teacher": official_network_state(src.teacher, ""),
        "optimizer": opt.state_dict(),
        "epoch": 300,
        "args": argparse.Namespace(arch="swin_tiny", out_dim=out_dim, lr=0.0005, local_crops_number=[8]),
        "dino_loss": {"center": torch.randn(1, out_dim), "center_grid": torch.randn(1, out_dim)},
        "fp16_scaler": {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                        "growth_interval": 2000, "_growth_tracker": 3},
    }
