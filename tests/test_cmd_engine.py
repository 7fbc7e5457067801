"""CMDEngine: gradients, EMA-only teacher, freezing, accumulation, bitwise resume; schedules."""
from __future__ import annotations

import io
import math

import pytest
import torch

from cmd_model.config import LossConfig, OptimConfig
from cmd_model.engine import CMDEngine, get_params_groups
from cmd_model.schedules import Schedules
from tests.tiny_models import tiny_swin_config, tiny_vit_config

torch.set_num_threads(2)


def _views(seed=0, b=4, g=32, loc=16, n_local=2):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, g, g, generator=gen) for _ in range(2)] + [
        torch.randn(b, 3, loc, loc, generator=gen) for _ in range(n_local)]


def _engine(loss=None, model=None, **optim):
    base = dict(epochs=4, warmup_epochs=1, lr=0.05, freeze_last_layer=0)
    base.update(optim)
    torch.manual_seed(0)
    return CMDEngine(model or tiny_vit_config(), loss or LossConfig(), OptimConfig(**base),
                     steps_per_epoch=3, global_batch=4)


# the demo's variant too: convolutional stem and BatchNorm in the heads (buffers, not parameters)
MODELS = {"vit": {}, "conv_stem+bn_head": {"conv_stem": True, "use_bn_in_head": True}}


@pytest.mark.parametrize("variant", MODELS)
def test_gradient_reaches_only_the_student_and_teacher_moves_only_by_ema(variant):
    e = _engine(LossConfig(mil_pooling="attention", teacher_mil_in_loss=True), tiny_vit_config(**MODELS[variant]))
    t0 = [p.detach().clone() for p in e.teacher.parameters()]
    m = e.train_step(_views(), it=1, epoch=0)
    assert all(p.grad is None for p in e.teacher.parameters())
    trainable = [(n, p) for n, p in e.student_module.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trainable)
    assert any(n.startswith("mil.") for n, _ in trainable)
    mom = m["momentum"]
    assert mom == pytest.approx(e.schedules.momentum[1])
    for p0, pt, ps in zip(t0, e.teacher.parameters(), e.student_module.parameters()):
        torch.testing.assert_close(pt, mom * p0 + (1 - mom) * ps.detach(), rtol=1e-6, atol=1e-7)
    # momentum 1: the teacher never changes, however many steps
    e = _engine(momentum_teacher=1.0)
    t0 = [p.detach().clone() for p in e.teacher.parameters()]
    for it in range(2):
        e.train_step(_views(it), it, 0)
    assert all(torch.equal(a, b) for a, b in zip(t0, e.teacher.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(t0, e.student_module.parameters()))


def test_param_groups_no_decay_on_bias_and_1d():
    e = _engine()
    g0, g1 = get_params_groups(e.student_module)
    assert all(p.ndim > 1 for p in g0["params"])
    assert all(p.ndim <= 1 for p in g1["params"]) and g1["weight_decay"] == 0.0
    m = e.train_step(_views(), 4, 1)
    assert e.optimizer.param_groups[0]["weight_decay"] == pytest.approx(m["wd"])
    assert e.optimizer.param_groups[1]["weight_decay"] == 0.0
    assert e.optimizer.param_groups[0]["lr"] == pytest.approx(m["lr"])


def test_last_layer_frozen_during_first_epochs():
    e = _engine(LossConfig(), tiny_vit_config(norm_last_layer=False), freeze_last_layer=1)
    last = {n: p.detach().clone() for n, p in e.student_module.named_parameters() if "last_layer" in n}
    e.train_step(_views(), 1, 0)
    now = dict(e.student_module.named_parameters())
    assert all(torch.equal(last[n], now[n]) for n in last)
    e.train_step(_views(), 3, 1)
    assert not all(torch.equal(last[n], now[n]) for n in last)


def test_gradient_accumulation_steps_every_n_calls():
    e = _engine(accumulate=2)
    p0 = [p.detach().clone() for p in e.student_module.parameters()]
    m = e.train_step(_views(0), 1, 0)
    assert m["optimizer_step"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(p0, e.student_module.parameters()))
    m = e.train_step(_views(1), 2, 0)
    assert m["optimizer_step"] == 1.0
    assert not all(torch.equal(a, b) for a, b in zip(p0, e.student_module.parameters()))


@pytest.mark.parametrize("variant", MODELS)
def test_resume_from_mid_run_state_is_bitwise_exact(variant):
    cfg = LossConfig(mil_pooling="attention")
    a = _engine(cfg, tiny_vit_config(**MODELS[variant]))
    for it in range(2):
        a.train_step(_views(it), it, 0)
    buf = io.BytesIO()
    torch.save({"engine": a.state_dict()}, buf)
    ref = a.train_step(_views(2), 2, 0)
    torch.manual_seed(123)  # a different init: everything must come from the state
    b = CMDEngine(tiny_vit_config(**MODELS[variant]), cfg,
                  OptimConfig(epochs=4, warmup_epochs=1, lr=0.05, freeze_last_layer=0),
                  steps_per_epoch=3, global_batch=4)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True)["engine"])
    got = b.train_step(_views(2), 2, 0)
    assert got == ref
    for (n, pa), pb in zip(a.student_module.state_dict().items(), b.student_module.state_dict().values()):
        assert torch.equal(pa, pb), n
    assert all(torch.equal(x, y) for x, y in zip(a.teacher.state_dict().values(), b.teacher.state_dict().values()))
    assert torch.equal(a.loss.center, b.loss.center) and torch.equal(a.loss.center_region, b.loss.center_region)


def test_state_from_another_config_names_the_problem():
    a = _engine()
    b = _engine(model=tiny_vit_config(out_dim=32))
    with pytest.raises(ValueError, match="does not match this config"):
        b.load_state_dict(a.state_dict())


def test_swin_engine_step_and_bf16_autocast():
    e = CMDEngine(tiny_swin_config(), LossConfig(), OptimConfig(epochs=2, warmup_epochs=0, freeze_last_layer=0),
                  steps_per_epoch=2, global_batch=2, amp_dtype=torch.bfloat16)
    m = e.train_step(_views(0, b=2, g=64, loc=32), 0, 0)
    assert all(math.isfinite(m[k]) for k in ("loss", "loss_image", "loss_region", "loss_mil_student"))


def test_schedules_match_closed_forms():
    optim = OptimConfig(epochs=10, lr=5e-4, min_lr=1e-6, warmup_epochs=2, weight_decay=0.04,
                        weight_decay_end=0.4, momentum_teacher=0.996)
    loss = LossConfig(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=4)
    spe, gb = 5, 64
    s = Schedules.build(optim, loss, spe, gb)
    total, warm = 50, 10
    base = 5e-4 * 64 / 256
    assert len(s.lr) == len(s.wd) == len(s.momentum) == total
    assert s.lr[0] == 0.0
    assert s.lr[4] == pytest.approx(base * 4 / (warm - 1))
    assert s.lr[warm - 1] == pytest.approx(base)
    for i in (warm, 23, total - 1):
        cos = 0.5 * (1 + math.cos(math.pi * (i - warm) / (total - warm)))
        assert s.lr[i] == pytest.approx(1e-6 + (base - 1e-6) * cos)
    for i in (0, 17, total - 1):
        c = 0.5 * (1 + math.cos(math.pi * i / total))
        assert s.wd[i] == pytest.approx(0.4 + (0.04 - 0.4) * c)
        assert s.momentum[i] == pytest.approx(1 + (0.996 - 1) * c)
    assert list(s.teacher_temp) == pytest.approx([0.04, 0.05, 0.06, 0.07] + [0.07] * 6)
    at = s.at(999, 999)  # past the end: clamped
    assert at["lr"] == s.lr[-1] and at["teacher_temp"] == 0.07
