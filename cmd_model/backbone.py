"""Backbone wrapper: any timm ViT or Swin by name -> (pooled feature, final-stage tokens).

CMD needs both a pooled image feature (for the image head) and the final-stage tokens (for the
dense head, the region matching and the MIL bag); timm models expose them differently, so this
module hides the difference behind `Backbone.forward` and `Backbone.features`.
"""
from __future__ import annotations

import math
import typing
from typing import Any

import timm
import torch
from timm.layers import PatchEmbed
from torch import nn

from cmd_model.config import FeatureKind, ModelConfig

FEATURE_KINDS = typing.get_args(FeatureKind)


class Backbone(nn.Module):
    """A timm ViT (tokens with prefix tokens) or Swin (NHWC grid) behind one interface.

    ViT: pooled = CLS token after the final norm (DINO / EsViT ViT); tokens = patch tokens, CLS and
    register tokens excluded. Swin: tokens = final-stage tokens after the final norm, flattened;
    pooled = their average (EsViT swin_transformer.py `forward_features`: norm then avgpool).
    """

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.family = _family(model, name)
        self.embed_dim: int = int(model.num_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pooled (B, D), tokens (B, N, D))."""
        out = self.model.forward_features(x)
        if self.family == "swin":
            tokens = out.flatten(1, 2)  # timm Swin is NHWC
            return tokens.mean(dim=1), tokens
        npt = int(getattr(self.model, "num_prefix_tokens", 0))
        tokens = out[:, npt:]
        if getattr(self.model, "has_class_token", npt > 0) and npt > 0:
            return out[:, 0], tokens
        return tokens.mean(dim=1), tokens

    @torch.no_grad()
    def features(self, x: torch.Tensor, kind: str = "cls") -> torch.Tensor:
        """Evaluation feature of `kind`.

        "cls": the pooled feature (CLS for ViT, token average for Swin: what kNN uses in the
        official eval_knn.py); "avgpool": mean of the final tokens; "last4": concatenation of the
        average-pooled outputs of the last 4 blocks (EsViT `forward_return_n_last_blocks`, the
        official linear-probe feature: 2304-d for Swin-T); "last4cls": DINO's ViT linear-probe
        feature (CLS of the last 4 blocks, each through the final norm).
        """
        if kind == "cls":
            return self.forward(x)[0]
        if kind == "avgpool":
            return self.forward(x)[1].mean(dim=1)
        if kind in ("last4", "last4cls"):
            return self._last_blocks(x, 4, cls=kind == "last4cls")
        raise ValueError(f"unknown feature kind {kind!r}; expected one of {FEATURE_KINDS}")

    @torch.no_grad()
    def feature_set(self, x: torch.Tensor, kinds: list[str] | tuple[str, ...]) -> dict[str, torch.Tensor]:
        """`features(x, kind)` for several kinds, running the plain forward once for `cls` and
        `avgpool` (what an evaluation with a probe feature and a kNN feature needs)."""
        out: dict[str, torch.Tensor] = {}
        if "cls" in kinds or "avgpool" in kinds:
            pooled, tokens = self.forward(x)
            out.update(cls=pooled, avgpool=tokens.mean(dim=1))
        for kind in kinds:
            if kind not in out:
                out[kind] = self.features(x, kind)
        return {kind: out[kind] for kind in kinds}

    def _last_blocks(self, x: torch.Tensor, n: int, cls: bool) -> torch.Tensor:
        m = self.model
        if self.family == "swin":
            if cls:
                raise ValueError("feature 'last4cls' needs a class token; Swin has none (use 'last4')")
            outs: list[tuple[int, torch.Tensor]] = []
            h = m.patch_embed(x)
            last_stage = len(m.layers) - 1
            for si, stage in enumerate(m.layers):
                h = stage.downsample(h)
                for blk in stage.blocks:
                    h = blk(h)
                    outs.append((si, h))
            feats = []
            for si, h_ in outs[-n:]:
                # EsViT applies the final norm only to last-stage blocks (its width is the last one's)
                h_ = m.norm(h_) if si == last_stage else h_
                feats.append(h_.mean(dim=(1, 2)))
            return torch.cat(feats, dim=1)
        n = min(n, len(m.blocks))
        inter = m.forward_intermediates(
            x, indices=n, norm=True, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=cls
        )
        if cls:
            if not getattr(m, "has_class_token", False):
                raise ValueError(f"feature 'last4cls' needs a class token; {self.name} has none")
            return torch.cat([prefix[:, 0] for _, prefix in inter], dim=1)
        return torch.cat([t.mean(dim=1) for t in inter], dim=1)

    def feature_dim(self, kind: str) -> int:
        """Width of `features(x, kind)` without running the model."""
        if kind in ("cls", "avgpool"):
            return self.embed_dim
        if self.family == "swin":
            dims = [int(stage.blocks[0].norm1.normalized_shape[0]) for stage in self.model.layers for _ in stage.blocks]
            return sum(dims[-4:])
        return self.embed_dim * min(4, len(self.model.blocks))


def _family(model: nn.Module, name: str) -> str:
    from timm.models.swin_transformer import SwinTransformer

    if isinstance(model, SwinTransformer):
        return "swin"
    if hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens") and hasattr(model, "forward_intermediates"):
        return "vit"
    raise ValueError(
        f"backbone {name!r} ({type(model).__name__}) is neither a timm ViT-like model "
        "(blocks + num_prefix_tokens) nor a timm SwinTransformer"
    )


class ConvStemEmbed(PatchEmbed):
    """timm's PatchEmbed with its one patch-sized conv replaced by a convolutional stem:
    log2(patch) stride-2 3x3 convs (GroupNorm, ReLU) doubling the width up to embed_dim, then a
    1x1 conv (Xiao et al., NeurIPS 2021). Same token grid, dynamic sizes and output formats as
    PatchEmbed, so it is a drop-in `embed_layer` for timm's VisionTransformer. GroupNorm, not the
    paper's BatchNorm: per-image statistics keep the teacher, eval and DDP ranks independent of
    the batch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        patch, in_chans, dim = self.patch_size[0], self.proj.in_channels, self.proj.out_channels
        n = int(math.log2(patch)) if patch > 1 else 0
        if self.patch_size[0] != self.patch_size[1] or 2 ** n != patch:
            raise ValueError(f"model.conv_stem needs a square power-of-two patch size, got {self.patch_size}")
        layers: list[nn.Module] = []
        width = max(dim // 2 ** max(n - 1, 0), 1)
        for _ in range(n):
            layers += [nn.Conv2d(in_chans, width, 3, stride=2, padding=1, bias=False),
                       nn.GroupNorm(math.gcd(8, width), width), nn.ReLU(inplace=True)]
            in_chans, width = width, min(width * 2, dim)
        layers.append(nn.Conv2d(in_chans, dim, 1))
        self.proj = nn.Sequential(*layers)


def build_backbone(cfg: ModelConfig) -> Backbone:
    """Create the timm model by name with random init (nothing is downloaded); `cfg.init_checkpoint`
    is restored on the whole network pair by `cmd_model.init_checkpoint`."""
    kwargs: dict[str, Any] = dict(cfg.backbone_kwargs)
    if cfg.dynamic_img_size:
        kwargs.setdefault("dynamic_img_size", True)
    if cfg.conv_stem:
        kwargs["embed_layer"] = ConvStemEmbed
    try:
        model = timm.create_model(
            cfg.backbone, pretrained=False, num_classes=0, drop_path_rate=cfg.drop_path_rate, **kwargs
        )
    except (RuntimeError, TypeError, ValueError) as exc:  # unknown name or kwarg
        raise ValueError(f"model.backbone={cfg.backbone!r} with backbone_kwargs={kwargs}: {exc}") from exc
    backbone = Backbone(model, cfg.backbone)
    if cfg.conv_stem and backbone.family != "vit":
        raise ValueError(f"model.conv_stem is for ViT backbones; {cfg.backbone!r} is {backbone.family}")
    return backbone
