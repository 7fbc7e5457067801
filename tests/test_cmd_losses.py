"""Each CMD loss term against an independent direct computation (numpy, loops) on small tensors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmd_model.config import LossConfig
from cmd_model.loss import CMDLoss, NonFiniteLossError
from cmd_model.loss.mil import bag_log_pool, legacy_kl_div
from cmd_model.loss.region import match_regions
from cmd_model.mil_attention import GatedAttentionMIL
from cmd_model.network import NetOutput

B, K, D, NG, NL = 3, 7, 5, 4, 2  # batch, prototypes, token width, tokens per global / local view
TAU_S, TAU_T = 0.1, 0.05


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _outputs(seed=0, n_views=4, scale=3.0, shift=0.0, mil=False):
    g = torch.Generator().manual_seed(seed)

    def view(n):
        return (torch.randn(B, K, generator=g) * scale + shift, torch.randn(B, n, K, generator=g) * scale + shift,
                torch.randn(B, n, D, generator=g))

    s = [view(NG if v < 2 else NL) for v in range(n_views)]
    t = [view(NG) for _ in range(2)]

    def pack(vs):
        w = [torch.softmax(torch.randn(B, x[1].shape[1], generator=g), -1) for x in vs] if mil else None
        return NetOutput([x[0] for x in vs], [x[1] for x in vs], [x[2] for x in vs], w)

    return pack(s), pack(t)


def _reference(s, t, cfg, center, center_r, pooling="mean"):
    """Direct numpy computation of the four terms (float64, explicit loops)."""
    sn = lambda a: a.detach().double().numpy()  # noqa: E731
    pairs = [(i, v) for i in range(2) for v in range(len(s.image_logits)) if v != i]
    li = lr = ls = lt = 0.0
    for i, v in pairs:
        P = _softmax((sn(t.image_logits[i]) - center) / TAU_T)
        q = np.log(_softmax(sn(s.image_logits[v]) / TAU_S))
        li += np.mean([-(P[b] * q[b]).sum() for b in range(B)])
        Pt = _softmax((sn(t.token_logits[i]) - center_r) / TAU_T)
        qs = np.log(_softmax(sn(s.token_logits[v]) / TAU_S))
        sf, tf = sn(s.tokens[v]), sn(t.tokens[i])
        per_b = []
        for b in range(B):
            per_j = []
            for j in range(sf.shape[1]):
                cos = [sf[b, j] @ tf[b, m] / np.linalg.norm(sf[b, j]) / np.linalg.norm(tf[b, m]) for m in range(NG)]
                m = int(np.argmax(cos))
                per_j.append(-(Pt[b, m] * qs[b, j]).sum())
            per_b.append(np.mean(per_j))
        lr += np.mean(per_b)
        # MIL, student view v: KL(bag || image)
        ps = _softmax(sn(s.image_logits[v]) / TAU_S)
        toks = _softmax(sn(s.token_logits[v]) / TAU_S)
        w = sn(s.mil_weights[v]) if pooling == "attention" else np.full(toks.shape[:2], 1 / toks.shape[1])
        bag = np.einsum("bn,bnk->bk", w, toks)
        ls += np.mean([(bag[b] * (np.log(bag[b]) - np.log(ps[b]))).sum() for b in range(B)])
        wt = sn(t.mil_weights[i]) if pooling == "attention" else np.full(Pt.shape[:2], 1 / NG)
        bag_t = np.einsum("bn,bnk->bk", wt, Pt)
        lt += np.mean([(bag_t[b] * (np.log(bag_t[b]) - np.log(P[b]))).sum() for b in range(B)])
    n = len(pairs)
    return li / n, lr / n, ls / n, lt / n


def _cfg(**kw):
    base = dict(student_temp=TAU_S, teacher_temp=TAU_T, warmup_teacher_temp=TAU_T)
    base.update(kw)
    return LossConfig(**base)


@pytest.mark.parametrize("pooling", ["sum", "mean", "attention"])
def test_all_terms_match_direct_computation(pooling):
    s, t = _outputs(mil=pooling == "attention")
    cfg = _cfg(mil_pooling=pooling, image_weight=0.3, region_weight=0.7, mil_weight=2.0)
    loss = CMDLoss(K, cfg).double()
    loss.center.normal_()  # non-zero centers, so centering is exercised
    loss.center_region.normal_()
    c, cr = loss.center.numpy().copy(), loss.center_region.numpy().copy()
    total, terms = loss(s, t, TAU_T)
    li, lr, ls, lt = _reference(s, t, cfg, c, cr, pooling)
    assert terms["loss_image"] == pytest.approx(li, rel=1e-5)
    assert terms["loss_region"] == pytest.approx(lr, rel=1e-5)
    assert terms["loss_mil_student"] == pytest.approx(ls, rel=1e-4, abs=1e-6)
    assert terms["loss_mil_teacher"] == pytest.approx(lt, rel=1e-4, abs=1e-6)
    assert float(total) == pytest.approx(0.3 * li + 0.7 * lr + 2.0 * ls, rel=1e-5)
    # centers: EMA 0.9 toward the mean over all teacher rows (image) / all teacher tokens (region)
    mean_img = torch.cat(t.image_logits).double().mean(0).numpy()
    mean_tok = torch.cat([x.reshape(-1, K) for x in t.token_logits]).double().mean(0).numpy()
    np.testing.assert_allclose(loss.center.numpy()[0], 0.9 * c[0] + 0.1 * mean_img, rtol=1e-5)
    np.testing.assert_allclose(loss.center_region.numpy()[0], 0.9 * cr[0] + 0.1 * mean_tok, rtol=1e-5)


def test_teacher_mil_in_loss_and_methods():
    s, t = _outputs()
    li, lr, ls, lt = _reference(s, t, _cfg(), np.zeros((1, K)), np.zeros((1, K)))
    total, _ = CMDLoss(K, _cfg(teacher_mil_in_loss=True))(s, t, TAU_T)
    assert float(total) == pytest.approx(0.5 * li + 0.5 * lr + ls + lt, rel=1e-5)
    total, terms = CMDLoss(K, _cfg(method="esvit"))(s, t, TAU_T)
    assert float(total) == pytest.approx(0.5 * li + 0.5 * lr, rel=1e-5)
    assert terms["loss_mil_student"] == 0.0
    s.token_logits = t.token_logits = None
    total, terms = CMDLoss(K, _cfg(method="dino", image_weight=0.5))(s, t, TAU_T)
    assert float(total) == pytest.approx(li, rel=1e-5)  # renormalised: the pure DINO loss
    assert terms["loss_region"] == 0.0


def test_region_matching_argmax_by_hand():
    s = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]])
    t = torch.tensor([[[0.0, 5.0], [3.0, 0.1], [-0.1, -0.2]]])
    assert match_regions(s, t).tolist() == [[1, 0, 2]]


def test_bag_pooling_by_hand():
    p = torch.tensor([[[0.5, 0.5, 0.0], [0.1, 0.2, 0.7]]])
    for pooling in ("sum", "mean"):  # official: the sum, normalised; the same as the mean
        torch.testing.assert_close(bag_log_pool(p.log(), pooling).exp(), torch.tensor([[0.3, 0.35, 0.35]]))
    a = torch.tensor([[0.25, 0.75]])
    torch.testing.assert_close(bag_log_pool(p.log(), "attention", a).exp(), torch.tensor([[0.2, 0.275, 0.525]]))
    mil = GatedAttentionMIL(4, 3)
    h = torch.randn(2, 5, 4)
    with torch.no_grad():
        expect = torch.softmax(mil.w(torch.tanh(mil.V(h)) * torch.sigmoid(mil.U(h))).squeeze(-1), -1)
    torch.testing.assert_close(mil(h), expect)


def test_mil_terms_zero_when_tokens_agree_with_image():
    s, t = _outputs()
    for out in (s, t):  # every token predicts exactly what the image head predicts
        out.token_logits = [img[:, None, :].expand(-1, tok.shape[1], -1).clone()
                            for img, tok in zip(out.image_logits, out.token_logits)]
    loss = CMDLoss(K, _cfg())
    loss.center_region.copy_(loss.center)  # same centering for image and tokens
    _, terms = loss(s, t, TAU_T)
    assert abs(terms["loss_mil_student"]) < 1e-6
    assert abs(terms["loss_mil_teacher"]) < 1e-6


def test_finite_with_negative_logits_and_legacy_matches_formula():
    s, t = _outputs(scale=5.0, shift=-40.0)
    for legacy in (False, True):
        total, terms = CMDLoss(K, _cfg(mil_form="official" if legacy else "proper_kl"))(s, t, TAU_T)
        assert math.isfinite(float(total)) and all(math.isfinite(v) for v in terms.values())
    # legacy = torch<=1.10 kl_div: target <= 0 entries count as 0
    x = torch.tensor([[-1.0, 2.0, 0.5]])
    y = torch.tensor([[-3.0, 0.5, 2.0]])
    expect = (0.5 * (math.log(0.5) - 2.0) + 2.0 * (math.log(2.0) - 0.5)) / 3
    assert float(legacy_kl_div(x, y)) == pytest.approx(expect)
    assert math.isnan(float(F.kl_div(x, y, reduction="sum")))  # the defect on current torch
    # the legacy student term is the official call on raw logits / tau_s, summed over tokens
    _, terms = CMDLoss(K, _cfg(mil_form="official"))(s, t, TAU_T)
    v_pairs = [1, 2, 3, 0, 2, 3]
    ref = np.mean([
        float(legacy_kl_div(s.image_logits[v] / TAU_S, (s.token_logits[v] / TAU_S).sum(1))) for v in v_pairs])
    assert terms["loss_mil_student"] == pytest.approx(ref, rel=1e-5)


def test_gradient_flows_through_student_only():
    s, t = _outputs()
    for out in (s, t):
        out.image_logits = [x.requires_grad_(out is s) for x in out.image_logits]
        out.token_logits = [x.requires_grad_(out is s) for x in out.token_logits]
    total, _ = CMDLoss(K, _cfg(teacher_mil_in_loss=True))(s, t, TAU_T)
    total.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s.image_logits + s.token_logits)
    assert all(x.grad is None for x in t.image_logits + t.token_logits)


def test_non_finite_names_the_term():
    s, t = _outputs()
    s.token_logits[3] = s.token_logits[3].clone()
    s.token_logits[3][0, 0, 0] = float("nan")
    loss = CMDLoss(K, _cfg())
    before = loss.center_region.clone()
    with pytest.raises(NonFiniteLossError) as info:
        loss(s, t, TAU_T)
    assert "loss_region" in info.value.terms and "loss_mil_student" in info.value.terms
    assert "loss_image" not in info.value.terms
    assert "loss_region" in str(info.value)
    assert torch.equal(loss.center_region, before)  # no state touched


def test_collapse_signals():
    s, t = _outputs()
    t.image_logits = [torch.zeros(B, K), torch.zeros(B, K)]  # uniform teacher
    _, terms = CMDLoss(K, _cfg())(s, t, TAU_T)
    assert terms["teacher_entropy"] == pytest.approx(math.log(K), rel=1e-5)
    assert terms["collapse"] == 1.0
    s, t = _outputs()
    t.image_logits = [torch.eye(K)[:B] * 10, torch.eye(K)[:B] * 10]
    _, terms = CMDLoss(K, _cfg())(s, t, TAU_T)
    assert terms["prototypes_used"] == B and terms["collapse"] == 0.0
