"""Linear probes on frozen features: the fast one (Tune objective) and the paper's protocol."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def _num_classes(*ys: torch.Tensor) -> int:
    return int(max(int(y.max()) for y in ys if y.numel())) + 1


def _top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == y).float().mean()) if y.numel() else 0.0


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    epochs: int = 100,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Fast probe: standardised features, multinomial logistic regression (mean cross-entropy +
    weight_decay/2 * ||W||^2), full-batch L-BFGS with strong-Wolfe line search for at most `epochs`
    iterations. Deterministic for a seed; seconds on CPU for a few thousand images. Returns test
    top-1 in [0, 1]. Not the paper's protocol (see `paper_probe`): a cheap, low-variance objective
    for the study."""
    g = torch.Generator().manual_seed(seed)
    xtr = train_x.detach().float().cpu()
    xte = test_x.detach().float().cpu()
    ytr = train_y.detach().long().cpu()
    yte = test_y.detach().long().cpu()
    mean = xtr.mean(dim=0, keepdim=True)
    std = xtr.std(dim=0, keepdim=True).clamp_min(1e-6) if len(xtr) > 1 else torch.ones_like(mean)
    xtr = (xtr - mean) / std
    xte = (xte - mean) / std
    c = _num_classes(ytr, yte)
    w = (torch.randn(xtr.shape[1], c, generator=g) * 0.01).requires_grad_(True)
    b = torch.zeros(c, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max(int(epochs), 1), history_size=20,
                            tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, ytr) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return _top1(xte @ w + b, yte)


class PaperProbe(NamedTuple):
    """Top-1 of the paper protocol: after the last epoch, and the best over epochs (what the
    official eval_linear.py prints as "Max accuracy": chosen on the test split itself)."""

    final: float
    best: float


def paper_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 0.001,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> PaperProbe:
    """The official protocol (EsViT/DINO eval_linear.py): a linear layer (weight N(0, 0.01), bias 0)
    on the raw frozen features (the official ones are `last4`), SGD momentum 0.9, no weight decay,
    lr = lr * batch_size / 256, cosine annealing to 0 over `epochs`, shuffled mini-batches. Returns the last
    epoch's test top-1 and, separately, the best over epochs (the official script's number).

    Difference: features are extracted once (no RandomResizedCrop/flip per epoch; see README)."""
    g = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    xtr, ytr = train_x.detach().float().to(dev), train_y.detach().long().to(dev)
    xte, yte = test_x.detach().float().to(dev), test_y.detach().long().to(dev)
    c = _num_classes(ytr.cpu(), yte.cpu())
    linear = torch.nn.Linear(xtr.shape[1], c).to(dev)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * 0.01)
        linear.bias.zero_()
    opt = torch.optim.SGD(linear.parameters(), lr=lr * batch_size / 256.0, momentum=0.9, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1), eta_min=0)
    best = final = 0.0
    n = len(xtr)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).to(dev)
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            loss = F.cross_entropy(linear(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        with torch.no_grad():
            final = _top1(linear(xte), yte)
        best = max(best, final)
    return PaperProbe(final, best)
