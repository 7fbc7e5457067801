"""Heat maps of a real engine's teacher."""
from __future__ import annotations

import pytest
import torch

from cmd_model.config import LossConfig, OptimConfig
from cmd_model.engine import CMDEngine
from cmd_model.heatmap import save_heatmaps, token_weights
from shards.augment import IMAGENET_MEAN, IMAGENET_STD
from tests.tiny_models import tiny_vit_config

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
    out = save_heatmaps(e, images, tmp_path / "maps" / "heat.png", IMAGENET_MEAN, IMAGENET_STD)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
