"""Image retrieval by cosine similarity: Rank-1, Rank-5, mAP@100 two ways (official retrieval.py)."""
from __future__ import annotations

import typing

import torch
import torch.nn.functional as F

from cmd_model.config import RetrievalMode

MODES = typing.get_args(RetrievalMode)


@torch.no_grad()
def retrieval(
    feats: torch.Tensor,
    labels: torch.Tensor,
    mode: str = "every9",
    train_feats: torch.Tensor | None = None,
    train_labels: torch.Tensor | None = None,
    at_map: int = 100,
    chunk: int = 512,
) -> dict[str, float]:
    """`feats`/`labels` are the test split. Modes (official retrieval.py `split_mode`):
    "every9" ('ratio'): queries = every 9th test image (index % 9 == 0), gallery = train + the other
    test images; "test_vs_train" ('origin'): queries = test, gallery = train.
    Two AP@100, both summing precision at each hit in the top 100: `map100` divides by
    min(100, relevant items in the gallery), the standard AP@k; `map100_official` divides by the
    hits found in the top 100 (retrieval.py: `precision_sum / pos_num`; one hit at rank 1 gives 1).
    A query without a hit scores 0 in both."""
    test_x = feats.detach().float().cpu()
    test_y = labels.detach().long().cpu()
    tr_x = train_feats.detach().float().cpu() if train_feats is not None else test_x[:0]
    tr_y = train_labels.detach().long().cpu() if train_labels is not None else test_y[:0]
    if mode == "every9":
        qmask = torch.arange(len(test_x)) % 9 == 0
        q_x, q_y = test_x[qmask], test_y[qmask]
        g_x = torch.cat([tr_x, test_x[~qmask]])
        g_y = torch.cat([tr_y, test_y[~qmask]])
    elif mode == "test_vs_train":
        if train_feats is None or train_labels is None:
            raise ValueError("retrieval mode 'test_vs_train' needs train_feats and train_labels")
        q_x, q_y, g_x, g_y = test_x, test_y, tr_x, tr_y
    else:
        raise ValueError(f"eval.retrieval_mode={mode!r}; expected one of {MODES}")
    if len(q_x) == 0 or len(g_x) == 0:
        raise ValueError(f"retrieval {mode}: {len(q_x)} queries, {len(g_x)} gallery images")
    q_x = F.normalize(q_x, dim=1)
    g_x = F.normalize(g_x, dim=1)
    depth = min(at_map, len(g_x))
    relevant = torch.bincount(g_y, minlength=int(max(int(g_y.max()), int(q_y.max()))) + 1)
    r1 = r5 = ap_sum = ap_official_sum = 0.0
    for s in range(0, len(q_x), chunk):
        sim = q_x[s:s + chunk] @ g_x.T
        _, idx = sim.topk(depth, dim=1, largest=True, sorted=True)
        hits = (g_y[idx] == q_y[s:s + chunk, None]).float()  # (b, depth)
        r1 += float(hits[:, 0].sum())
        r5 += float(hits[:, :5].amax(dim=1).sum())
        precision_sum = (hits.cumsum(dim=1) / torch.arange(1, depth + 1) * hits).sum(dim=1)
        ap_official_sum += float((precision_sum / hits.sum(dim=1).clamp_min(1)).sum())
        ideal = relevant[q_y[s:s + chunk]].clamp(max=at_map).float()
        ap_sum += float((precision_sum / ideal.clamp_min(1)).sum())
    n = len(q_x)
    return {"rank1": r1 / n, "rank5": r5 / n, "map100": ap_sum / n, "map100_official": ap_official_sum / n,
            "queries": float(n), "gallery": float(len(g_x))}
