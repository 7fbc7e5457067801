"""Weighted kNN classifier on L2-normalised features (DINO eval_knn.py `knn_classifier`)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_top1(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    T: float = 0.07,
    chunk: int = 256,
) -> dict[int, float]:
    """Top-1 for each k: the k most cosine-similar train images vote with weight exp(sim / T)
    (official k in {10, 20, 100, 200}, T 0.07). k larger than the train set uses all of it."""
    xtr = F.normalize(train_x.detach().float().cpu(), dim=1)
    xte = F.normalize(test_x.detach().float().cpu(), dim=1)
    ytr = train_y.detach().long().cpu()
    yte = test_y.detach().long().cpu()
    c = int(max(int(ytr.max()), int(yte.max()) if yte.numel() else 0)) + 1
    kmax = min(max(ks), len(xtr))
    correct = {k: 0 for k in ks}
    for s in range(0, len(xte), chunk):
        q = xte[s:s + chunk]
        target = yte[s:s + chunk]
        sim, idx = (q @ xtr.T).topk(kmax, dim=1, largest=True, sorted=True)
        neighbours = ytr[idx]  # (b, kmax)
        weights = (sim / T).exp()
        for k in ks:
            kk = min(k, kmax)
            onehot = F.one_hot(neighbours[:, :kk], c).float()  # (b, kk, c)
            probs = (onehot * weights[:, :kk, None]).sum(dim=1)
            correct[k] += int((probs.argmax(dim=1) == target).sum())
    n = max(len(xte), 1)
    return {k: correct[k] / n for k in ks}
