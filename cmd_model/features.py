"""Frozen-backbone feature extraction for the probes, kNN and retrieval (always the teacher's)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from cmd_model.backbone import FEATURE_KINDS, Backbone


@torch.no_grad()
def extract_feature_sets(
    backbone: Backbone,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    kinds: Sequence[str],
    device: torch.device | str = "cpu",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({kind: features (N, F) float32 on CPU}, labels (N,) int64) in one pass over `loader`
    (one backbone forward per batch serves `cls` and `avgpool`), with the backbone in eval mode
    (restored afterwards)."""
    unknown = [k for k in kinds if k not in FEATURE_KINDS]
    if unknown:
        raise ValueError(f"feature kind {unknown[0]!r}; expected one of {FEATURE_KINDS}")
    kinds = list(dict.fromkeys(kinds))
    was_training = backbone.training
    backbone.eval()
    feats: dict[str, list[torch.Tensor]] = {k: [] for k in kinds}
    labels = []
    try:
        for images, y in loader:
            images = images.to(device, non_blocking=True)
            for kind, f in backbone.feature_set(images, kinds).items():
                feats[kind].append(f.float().cpu())
            labels.append(torch.as_tensor(y).long().cpu())
    finally:
        backbone.train(was_training)
    if not labels:
        raise ValueError("extract_features: the loader yielded no batches")
    return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(labels)


def extract_features(
    backbone: Backbone,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    kind: str = "cls",
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, F), labels (N,)) of one `kind`: `extract_feature_sets` for a single kind."""
    sets, labels = extract_feature_sets(backbone, loader, (kind,), device)
    return sets[kind], labels
