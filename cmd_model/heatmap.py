"""Heat maps of the teacher's MIL instance weights: which patches the bag listens to.

Attention pooling: the gated-attention weights a_j. Sum/mean pooling (official) weights every token
equally, so the map shows each token's agreement with the image-level distribution instead: the
Bhattacharyya coefficient sum_k sqrt(P_k P_{j,k}) between the teacher's image distribution and the
token's distribution (centered and sharpened as in the loss), normalised over the tokens.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from cmd_model.network import CMDNetwork


@torch.no_grad()
def token_weights(teacher: CMDNetwork, images: torch.Tensor, center: torch.Tensor | None = None,
                  center_region: torch.Tensor | None = None, temp: float = 0.07) -> tuple[torch.Tensor, str]:
    """(B, N) per-token weights of the teacher for `images`, and what they are."""
    if teacher.dense_head is None:
        raise ValueError("heat maps need the dense head: loss.method 'esvit' or 'cmd', not 'dino'")
    was_training = teacher.training
    teacher.eval()
    try:
        out = teacher([images])
    finally:
        teacher.train(was_training)
    if out.mil_weights is not None:
        return out.mil_weights[0].float(), "gated-attention MIL weight"
    img = out.image_logits[0].float()
    tok = out.token_logits[0].float()
    c = center if center is not None else torch.zeros_like(img[:1])
    cr = center_region if center_region is not None else torch.zeros_like(img[:1])
    p = torch.softmax((img - c) / temp, -1)
    pt = torch.softmax((tok - cr) / temp, -1)
    agree = torch.sqrt(p[:, None, :] * pt).sum(-1)
    return agree / agree.sum(-1, keepdim=True).clamp_min(1e-12), "token agreement with the image distribution"


def _grid(n: int, h: int, w: int) -> tuple[int, int]:
    gh = max(1, round(math.sqrt(n * h / w)))
    if n % gh:
        gh = max(d for d in range(1, n + 1) if n % d == 0 and d <= gh) if n > 1 else 1
    return gh, n // gh


def save_heatmaps(engine_or_teacher: Any, images: torch.Tensor, path: str | Path,
                  mean: tuple[float, ...], std: tuple[float, ...]) -> Path:
    """Save one PNG: a row per image, the image beside its token-weight heat map (and an overlay).

    `engine_or_teacher`: a CMDEngine (its teacher, centers and final teacher temperature are used) or
    a CMDNetwork teacher. `images`: (B, 3, H, W) normalised with `mean` and `std` (the loader's:
    shards.augment IMAGENET_MEAN / IMAGENET_STD), e.g. a few val images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(engine_or_teacher, CMDNetwork):
        teacher, center, center_r, temp = engine_or_teacher, None, None, 0.07
    else:
        teacher = engine_or_teacher.teacher
        center, center_r = engine_or_teacher.loss.center, engine_or_teacher.loss.center_region
        temp = float(engine_or_teacher.loss_cfg.teacher_temp)
    device = next(teacher.parameters()).device
    images = images.to(device)
    weights, what = token_weights(teacher, images, center, center_r, temp)
    b, _, h, w = images.shape
    gh, gw = _grid(weights.shape[1], h, w)
    maps = weights.reshape(b, 1, gh, gw)
    maps = torch.nn.functional.interpolate(maps, size=(h, w), mode="nearest")[:, 0].cpu()
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    shown = (images.float().cpu() * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()

    fig, axes = plt.subplots(b, 3, figsize=(9, 3 * b), squeeze=False)
    for i in range(b):
        axes[i, 0].imshow(shown[i])
        axes[i, 0].set_title("image")
        im = axes[i, 1].imshow(maps[i].numpy(), cmap="inferno")
        axes[i, 1].set_title(what if i == 0 else "", fontsize=8)
        fig.colorbar(im, ax=axes[i, 1], fraction=0.046)
        axes[i, 2].imshow(shown[i])
        axes[i, 2].imshow(maps[i].numpy(), cmap="inferno", alpha=0.5)
        axes[i, 2].set_title("overlay")
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
