"""Tiny model configs for tests and CPU smoke runs (random init, milliseconds per step)."""
from __future__ import annotations

from cmd_model.config import ModelConfig


def tiny_vit_config(**overrides) -> ModelConfig:
    """timm vit_tiny_patch16_224 shrunk: patch 8, 32 px, depth 2, width 48; heads out_dim 64."""
    cfg = ModelConfig(
        backbone="vit_tiny_patch16_224",
        backbone_kwargs={"patch_size": 8, "img_size": 32, "depth": 2, "embed_dim": 48, "num_heads": 3},
        out_dim=64, hidden_dim=32, bottleneck_dim=16,
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def tiny_swin_config(**overrides) -> ModelConfig:
    """timm swin_tiny_patch4_window7_224 shrunk: 64 px, window 4, width 16, depths 2-2-2-2."""
    cfg = ModelConfig(
        backbone="swin_tiny_patch4_window7_224",
        backbone_kwargs={"img_size": 64, "window_size": 4, "embed_dim": 16, "depths": (2, 2, 2, 2),
                         "num_heads": (1, 2, 2, 4)},
        out_dim=64, hidden_dim=32, bottleneck_dim=16,
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg
