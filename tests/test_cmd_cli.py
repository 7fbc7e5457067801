"""Heat maps and the evaluate CLI on a real checkpoint and the demo shards."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from cmd_model.config import LossConfig, OptimConfig
from cmd_model.engine import CMDEngine
from cmd_model.heatmap import save_heatmaps, token_weights
from cmd_model.tiny import tiny_vit_config

torch.set_num_threads(2)


def _engine(pooling="attention"):
    torch.manual_seed(0)
    return CMDEngine(tiny_vit_config(), LossConfig(mil_pooling=pooling), OptimConfig(epochs=1, warmup_epochs=0),
                     steps_per_epoch=1, global_batch=2)


@pytest.mark.parametrize("pooling", ["attention", "sum"])
def test_heatmap_png(tmp_path, pooling):
    e = _engine(pooling)
    images = torch.randn(2, 3, 32, 32)
    w, what = token_weights(e.teacher, images)
    assert w.shape == (2, 16)
    torch.testing.assert_close(w.sum(1), torch.ones(2))
    assert ("attention" in what) == (pooling == "attention")
    if pooling == "attention":
        torch.testing.assert_close(w, e.teacher.mil(e.teacher([images]).tokens[0]))
    out = save_heatmaps(e, images, tmp_path / "maps" / "heat.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_cli_prints_all_metrics(tmp_path, demo_shards, capsys):
    from cmd_model.evaluate import main

    e = _engine()
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"engine": e.state_dict(),
                "config": {"model": dataclasses.asdict(e.model_cfg), "loss": dataclasses.asdict(e.loss_cfg)}}, ckpt)
    out = main(["--checkpoint", str(ckpt), "--data", str(demo_shards), "--feature", "last4",
                "--paper-probe", "--paper-probe-epochs", "2", "--device", "cpu"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == pytest.approx(out)
    for key in ("probe_top1[last4]", "knn_top1[k=20]", "rank1[every9]", "rank5[every9]", "map100[every9]",
                "paper_probe_top1[last4]"):
        assert 0.0 <= out[key] <= 1.0, key
    with pytest.raises(ValueError, match="'engine' and 'config'"):
        torch.save({"x": 1}, tmp_path / "bad.pt")
        main(["--checkpoint", str(tmp_path / "bad.pt"), "--data", str(demo_shards)])
