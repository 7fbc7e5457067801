"""model.init_checkpoint restores what main_esvit.py restores, from its own checkpoint layout."""
from __future__ import annotations

import pytest
import torch

from cmd_model.config import LossConfig, OptimConfig
from cmd_model.engine import CMDEngine
from harness.remote_files import file_exists, read_checkpoint
from tests.official_layout import esvit_checkpoint
from tests.tiny_models import tiny_swin_config, tiny_vit_config

torch.set_num_threads(2)


def _engine(model_cfg, loss_cfg=None) -> CMDEngine:
    """As the harness's train loop builds it: init checkpoints read by the harness's reader (a
    path, a file:// URL or a bucket URI)."""
    return CMDEngine(model_cfg, loss_cfg or LossConfig(), OptimConfig(epochs=1, warmup_epochs=0),
                     steps_per_epoch=1, global_batch=2, read_checkpoint=read_checkpoint)


def _distinct_pair() -> CMDEngine:
    """A source engine whose teacher differs from its student (as after training)."""
    torch.manual_seed(1)
    src = _engine(tiny_swin_config())
    with torch.no_grad():
        for p in src.teacher.parameters():
            p.add_(torch.randn_like(p))
    return src


def test_official_layout_restores_teacher_student_heads_and_centers(tmp_path):
    src = _distinct_pair()
    ckpt = esvit_checkpoint(src)
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    for location in (str(tmp_path / "checkpoint.pth"), (tmp_path / "checkpoint.pth").as_uri()):  # path, file://
        torch.manual_seed(2)
        dst = _engine(tiny_swin_config(init_checkpoint=location))
        for name in ("teacher", "_student"):
            got, want = getattr(dst, name).state_dict(), getattr(src, name).state_dict()
            assert got.keys() == want.keys()
            assert all(torch.equal(got[k], want[k]) for k in want), name
        assert torch.equal(dst.loss.center, ckpt["dino_loss"]["center"])
        assert torch.equal(dst.loss.center_region, ckpt["dino_loss"]["center_grid"])
        assert dst.optimizer.state_dict()["state"] == {}  # a new run: optimizer and schedules restart
    # a DINO run from the same checkpoint: no dense head to restore, the rest as above
    dino = _engine(tiny_swin_config(init_checkpoint=str(tmp_path / "checkpoint.pth")), LossConfig(method="dino"))
    assert torch.equal(dino.teacher.head.last_layer.parametrizations.weight.original1,
                       src.teacher.head.last_layer.parametrizations.weight.original1)


def test_mismatched_checkpoint_lists_missing_and_unexpected_keys(tmp_path):
    ckpt = esvit_checkpoint(_distinct_pair())
    del ckpt["student"]["module.head_dense.mlp.0.weight"]
    ckpt["teacher"]["head.extra.weight"] = torch.zeros(1)
    del ckpt["dino_loss"]["center_grid"]
    torch.save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        _engine(tiny_swin_config(init_checkpoint=str(tmp_path / "bad.pth")))
    msg = str(err.value)
    assert "official layout" in msg and "\n" not in msg
    assert "student: missing keys ['dense_head.mlp.0.weight'], unexpected keys []" in msg
    assert "teacher: missing keys [], unexpected keys ['head.extra.weight']" in msg
    assert "centers: missing keys ['dino_loss.center_region']" in msg
    with pytest.raises(FileNotFoundError, match="no file at"):
        _engine(tiny_swin_config(init_checkpoint=str(tmp_path / "none.pth")))
    assert file_exists((tmp_path / "bad.pth").as_uri()) and not file_exists(str(tmp_path / "none.pth"))


def test_harness_checkpoint_and_plain_backbone(tmp_path):
    src = _distinct_pair()
    torch.save({"engine": src.state_dict(), "config": {}}, tmp_path / "state.pt")
    dst = _engine(tiny_swin_config(init_checkpoint=str(tmp_path / "state.pt")))
    assert all(torch.equal(a, b) for a, b in zip(dst.teacher.state_dict().values(), src.teacher.state_dict().values()))
    # a DINO teacher backbone with MultiCropWrapper / DDP prefixes: backbone only, copied to the teacher
    torch.manual_seed(3)
    vit = _engine(tiny_vit_config())
    state = {f"module.backbone.{k}": v for k, v in vit.teacher.backbone.model.state_dict().items()}
    state["module.head.mlp.0.weight"] = torch.zeros(3, 3)  # DINO head keys are dropped
    torch.save({"teacher": state}, tmp_path / "dino.pth")
    torch.manual_seed(4)
    dst = _engine(tiny_vit_config(init_checkpoint=str(tmp_path / "dino.pth")))
    x = torch.randn(2, 3, 32, 32)
    for net in (dst.teacher, dst.student_module):
        torch.testing.assert_close(net.backbone.eval()(x)[0], vit.teacher.backbone.eval()(x)[0])
    bad = {k: v for k, v in vit.teacher.backbone.model.state_dict().items() if not k.startswith("blocks.1.")}
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    expected = r"backbone layout.*missing keys \['blocks.1.*unexpected keys \['extra.weight'\]"
    with pytest.raises(ValueError, match=expected):
        _engine(tiny_vit_config(init_checkpoint=str(tmp_path / "bad.pth")))
