"""Evaluation: feature extraction, fast probe, paper probe, kNN and retrieval on known answers."""
from __future__ import annotations

import math

import pytest
import torch

from cmd_model.backbone import build_backbone
from cmd_model.features import extract_features
from cmd_model.knn import knn_top1
from cmd_model.probe import linear_probe, paper_probe
from cmd_model.retrieval import retrieval
from tests.tiny_models import tiny_vit_config

torch.set_num_threads(2)


def _clusters(n_per=30, classes=5, dim=16, spread=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 3
    y = torch.arange(classes).repeat_interleave(n_per)
    x = centers[y] + spread * torch.randn(len(y), dim, generator=g)
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


def test_probe_and_knn_separable_clusters_are_perfect_shuffled_labels_are_chance():
    xtr, ytr = _clusters(seed=0)
    xte, yte = _clusters(seed=0)
    xte = xte + 0.1 * torch.randn_like(xte)
    assert linear_probe(xtr, ytr, xte, yte, epochs=50, weight_decay=1e-4, seed=0) == 1.0
    assert knn_top1(xtr, ytr, xte, yte, ks=(1, 10, 20), T=0.07) == {1: 1.0, 10: 1.0, 20: 1.0}
    assert paper_probe(xtr, ytr, xte, yte, epochs=20, batch_size=32, lr=2.0, seed=0) == (1.0, 1.0)
    g = torch.Generator().manual_seed(1)
    noise_tr, noise_te = torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g)
    ytr_s, yte_s = torch.randint(0, 5, (300,), generator=g), torch.randint(0, 5, (300,), generator=g)
    assert linear_probe(noise_tr, ytr_s, noise_te, yte_s, epochs=50, seed=0) < 0.35
    assert knn_top1(noise_tr, ytr_s, noise_te, yte_s, ks=(20,))[20] < 0.35
    # deterministic for a seed
    assert linear_probe(xtr, ytr_s[:150], xte, yte, epochs=20, seed=3) == linear_probe(
        xtr, ytr_s[:150], xte, yte, epochs=20, seed=3)


def test_knn_weighted_vote_by_hand():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
    labels = torch.tensor([0, 1, 1])
    q, qy = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    # T 0.07: exp(1/.07) > exp(.8/.07) + exp(.6/.07): class 0 wins; T 10: the two class-1 votes win
    assert knn_top1(train, labels, q, qy, ks=(1, 3), T=0.07) == {1: 1.0, 3: 1.0}
    assert knn_top1(train, labels, q, qy, ks=(3,), T=10.0) == {3: 0.0}
    assert knn_top1(train, labels, q, qy, ks=(200,), T=10.0) == {200: 0.0}  # k > n uses all


def test_retrieval_by_hand_and_modes():
    # query (label 0) ranks the gallery: g1 (1), g0 (0), g3 (1), g2 (0)
    gallery = torch.tensor([[0.9, 0.1], [1.0, 0.0], [-1.0, 0.0], [0.5, -0.5]])
    g_y = torch.tensor([0, 1, 0, 1])
    q, q_y = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    r = retrieval(q, q_y, "test_vs_train", gallery, g_y)
    assert r["rank1"] == 0.0 and r["rank5"] == 1.0
    assert r["map100"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    # every9: queries are test indices 0, 9, 18; gallery = train + the other test images
    xte, yte = _clusters(n_per=4, classes=5)  # 20 test images
    xtr, ytr = _clusters(n_per=6, classes=5, seed=0)  # same centers, other samples
    r = retrieval(xte, yte, "every9", xtr, ytr)
    assert r["queries"] == 3 and r["gallery"] == 30 + 17
    assert r["rank1"] == 1.0 and r["map100"] == 1.0
    with pytest.raises(ValueError, match="needs train_feats"):
        retrieval(xte, yte, "test_vs_train")


def test_paper_probe_final_epoch_and_official_best_by_hand():
    """1-D, two classes, full batch, lr 2 (batch 256), SGD momentum 0.9, cosine over 2 epochs:
    epoch 1 lr 2, epoch 2 lr 1. From ~0 weights (init N(0, 0.01)) every p is 1/2:
      grad W = (-0.5, +0.5), grad b = (-0.25, +0.25) -> logit gap z0 - z1 = 2x + 1 (boundary -0.5);
      epoch 2: p0(x=1) = sigmoid(3), p0(x=-1) = sigmoid(-1): grad W0 = -0.1028, grad b0 = +0.0317;
      momentum buf W0 = -0.5528, b0 = -0.1933 -> W0 = 1.5528, b0 = 0.6933 -> gap = 3.1056 x + 1.3866
      (boundary -0.4465). Test x = -0.47 (label 0) is right after epoch 1, wrong after epoch 2."""
    xtr, ytr = torch.tensor([[1.0], [1.0], [1.0], [-1.0]]), torch.tensor([0, 0, 0, 1])
    xte, yte = torch.tensor([[-0.47], [1.0]]), torch.tensor([0, 0])
    assert paper_probe(xtr, ytr, xte, yte, epochs=2, batch_size=256, lr=2.0, seed=0) == (0.5, 1.0)
    result = paper_probe(xtr, ytr, xte, yte, epochs=1, batch_size=256, lr=2.0, seed=0)
    assert (result.final, result.best) == (1.0, 1.0)


def test_map100_standard_and_official_by_hand():
    """Query label 0; ranked gallery labels 1, 0, 1, 0, 0 (3 relevant). Depth 2 (at_map=2): one hit,
    at rank 2, precision 1/2. Official (divide by hits found): 1/2 / 1 = 0.5. Standard (divide by
    min(2, relevant 3) = 2): 1/2 / 2 = 0.25. Depth 100: hits at 2, 4, 5: precisions 1/2, 2/4, 3/5;
    both divide by 3."""
    gallery = torch.tensor([[0.9, 0.1], [1.0, 0.0], [0.5, -0.5], [0.2, 0.9], [-1.0, 0.0]])
    g_y = torch.tensor([0, 1, 1, 0, 0])
    q, q_y = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    r = retrieval(q, q_y, "test_vs_train", gallery, g_y, at_map=2)
    assert (r["map100"], r["map100_official"]) == (pytest.approx(0.25), pytest.approx(0.5))
    r = retrieval(q, q_y, "test_vs_train", gallery, g_y)
    assert r["map100"] == r["map100_official"] == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)
    r = retrieval(q, torch.tensor([2]), "test_vs_train", gallery, g_y)  # no relevant item: 0, not NaN
    assert r["map100"] == r["map100_official"] == 0.0


def test_extract_features_from_a_loader():
    bb = build_backbone(tiny_vit_config())
    bb.train()
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 1, 2])) for _ in range(2)]
    x, y = extract_features(bb, loader, "last4", "cpu")
    assert x.shape == (6, 96) and x.dtype == torch.float32 and y.tolist() == [0, 1, 2, 0, 1, 2]
    assert bb.training  # mode restored
    x2, _ = extract_features(bb, loader, "last4", "cpu")
    assert torch.equal(x, x2)  # eval mode: deterministic
    assert math.isfinite(float(x.sum()))


def test_rankme_against_hand_values():
    from cmd_model.rankme import rankme

    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(200, 32, generator=g, dtype=torch.float64))  # orthonormal columns
    for k in (1, 5, 17):
        # rank k with equal singular values: the entropy of k equal weights is ln k, so RankMe = k
        # (up to the paper's eps: (1/k + eps) terms, and 32 - k zero values at eps each)
        z = q[:, :k]  # k orthonormal columns: k singular values of 1
        p = torch.full((k,), 1 / k, dtype=torch.float64) + 1e-7
        expect = float(torch.exp(-(p * p.log()).sum() - (32 - k) * 1e-7 * math.log(1e-7)))
        padded = torch.cat([z, torch.zeros(200, 32 - k, dtype=torch.float64)], 1)
        assert rankme(padded) == pytest.approx(expect, rel=1e-9)
        assert rankme(z) == pytest.approx(k, rel=1e-5)
    # singular values 3 and 1: p = (0.75, 0.25), RankMe = exp(-(.75 ln .75 + .25 ln .25)) = 1.7548...
    two = q[:, :2] @ torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
    assert rankme(two) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), rel=1e-6)
    # collapsed (every row the same): one singular value; the 7 zero ones add 7 * -eps ln eps = 1.1e-5
    assert rankme(torch.ones(50, 8)) == pytest.approx(1.0, abs=2e-5)
    with pytest.raises(ValueError, match="non-empty"):
        rankme(torch.zeros(0, 4))
