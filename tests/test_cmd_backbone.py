"""Backbone wrapper, heads and network on real (tiny) timm models."""
from __future__ import annotations

import pytest
import torch

from cmd_model.backbone import build_backbone
from cmd_model.config import LossConfig
from cmd_model.heads import DINOHead, cancel_last_layer_grads
from cmd_model.network import build_networks
from tests.tiny_models import tiny_swin_config, tiny_vit_config

torch.set_num_threads(2)


def test_vit_pooled_is_cls_and_tokens_exclude_prefix_and_registers():
    cfg = tiny_vit_config()
    cfg.backbone_kwargs = dict(cfg.backbone_kwargs, reg_tokens=2)
    bb = build_backbone(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    pooled, tokens = bb(x)
    full = bb.model.forward_features(x)  # (B, 1 + 2 + 16, D)
    assert full.shape[1] == 1 + 2 + 16
    assert tokens.shape == (2, 16, 48)
    torch.testing.assert_close(pooled, full[:, 0])
    torch.testing.assert_close(tokens, full[:, 3:])
    # a local crop of another size goes through the same model (dynamic_img_size)
    p16, t16 = bb(torch.randn(2, 3, 16, 16))
    assert p16.shape == (2, 48) and t16.shape == (2, 4, 48)


def test_conv_stem_keeps_the_token_grid_and_trains():
    bb = build_backbone(tiny_vit_config(conv_stem=True))
    convs = [m for m in bb.model.patch_embed.proj if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2)] * 3 + [(1, 1)]  # patch 8 = three stride-2 convs, then 1x1
    for size, n in ((32, 16), (16, 4)):  # the same grid as the linear patch embedding, both crop sizes
        pooled, tokens = bb(torch.randn(2, 3, size, size))
        assert pooled.shape == (2, 48) and tokens.shape == (2, n, 48)
    tokens.sum().backward()
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs)


def test_conv_stem_refuses_swin_and_odd_patches():
    with pytest.raises(ValueError, match="conv_stem is for ViT"):
        build_backbone(tiny_swin_config(conv_stem=True))
    cfg = tiny_vit_config(conv_stem=True)
    cfg.backbone_kwargs = dict(cfg.backbone_kwargs, patch_size=6, img_size=36)
    with pytest.raises(ValueError, match="power-of-two patch"):
        build_backbone(cfg)


def test_swin_two_resolutions_pooled_is_token_mean():
    bb = build_backbone(tiny_swin_config()).eval()
    for size, n in ((64, 4), (32, 1), (96, 9)):
        pooled, tokens = bb(torch.randn(2, 3, size, size))
        assert tokens.shape == (2, n, 128)
        torch.testing.assert_close(pooled, tokens.mean(1))


def test_feature_kinds():
    vit = build_backbone(tiny_vit_config()).eval()
    x = torch.randn(3, 3, 32, 32)
    assert vit.features(x, "cls").shape == (3, 48)
    torch.testing.assert_close(vit.features(x, "avgpool"), vit(x)[1].mean(1))
    last = vit.features(x, "last4")  # depth 2: the last min(4, depth) blocks
    assert last.shape == (3, 96) == (3, vit.feature_dim("last4"))
    # the last block's average-pooled normed patch tokens == avgpool of the final tokens
    torch.testing.assert_close(last[:, 48:], vit.features(x, "avgpool"))
    assert vit.features(x, "last4cls").shape == (3, 96)
    torch.testing.assert_close(vit.features(x, "last4cls")[:, 48:], vit.features(x, "cls"))
    swin = build_backbone(tiny_swin_config()).eval()
    y = torch.randn(2, 3, 64, 64)
    f = swin.features(y, "last4")  # stage-3 blocks (64, 64) + stage-4 blocks (128, 128)
    assert f.shape == (2, 384) == (2, swin.feature_dim("last4"))
    torch.testing.assert_close(f[:, -128:], swin.features(y, "avgpool"))
    with pytest.raises(ValueError, match="unknown feature kind"):
        swin.features(y, "nope")


def test_dino_head_shapes_weight_norm_and_freeze():
    head = DINOHead(48, 64, norm_last_layer=True, nlayers=3, hidden_dim=32, bottleneck_dim=16)
    out = head(torch.randn(2, 5, 48))
    assert out.shape == (2, 5, 64)
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(64))
    head_bn = DINOHead(48, 64, use_bn=True, norm_last_layer=False, nlayers=2, hidden_dim=32, bottleneck_dim=16)
    assert head_bn(torch.randn(2, 5, 48)).shape == (2, 5, 64)
    assert head_bn.last_layer.parametrizations.weight.original0.requires_grad
    head_bn(torch.randn(4, 48)).sum().backward()
    cancel_last_layer_grads(head_bn, epoch=0, freeze_epochs=1)
    assert all(p.grad is None for n, p in head_bn.named_parameters() if "last_layer" in n)
    assert all(p.grad is not None for n, p in head_bn.named_parameters() if "last_layer" not in n)
    head_bn(torch.randn(4, 48)).sum().backward()
    cancel_last_layer_grads(head_bn, epoch=1, freeze_epochs=1)
    assert all(p.grad is not None for p in head_bn.parameters())


def test_network_multicrop_outputs_and_teacher_copy():
    student, teacher = build_networks(tiny_vit_config(drop_path_rate=0.1), LossConfig(mil_pooling="attention"))
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(getattr(m, "drop_prob", 0.0) == 0.0 for m in teacher.modules())
    assert any(getattr(m, "drop_prob", 0.0) > 0 for m in student.modules())
    for (ns, ps), (nt, pt) in zip(student.state_dict().items(), teacher.state_dict().items()):
        assert ns == nt and torch.equal(ps, pt)
    views = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)]
    student.eval()
    out = student(views)
    assert [t.shape for t in out.image_logits] == [(2, 64)] * 3
    assert [t.shape for t in out.token_logits] == [(2, 16, 64), (2, 16, 64), (2, 4, 64)]
    assert [t.shape for t in out.tokens] == [(2, 16, 48), (2, 16, 48), (2, 4, 48)]
    assert [t.shape for t in out.mil_weights] == [(2, 16), (2, 16), (2, 4)]
    torch.testing.assert_close(out.mil_weights[2].sum(1), torch.ones(2))
    # one view alone gives the same outputs (grouping by resolution changes nothing without BN)
    alone = student([views[2]])
    torch.testing.assert_close(alone.image_logits[0], out.image_logits[2])
    torch.testing.assert_close(alone.token_logits[0], out.token_logits[2])
    dino_s, _ = build_networks(tiny_vit_config(), LossConfig(method="dino"))
    assert dino_s.dense_head is None and dino_s.mil is None
    assert dino_s(views).token_logits is None
