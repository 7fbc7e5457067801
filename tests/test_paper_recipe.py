"""The paper recipe as a user runs it: `harness/train.py --config tune_spaces/recipes/paper.yaml`,
shrunk to a tiny Swin for CPU, from a checkpoint in the official layout, with the official MIL form."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmd_model.engine import CMDEngine
from harness.config import load_config
from tests.official_layout import esvit_checkpoint

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "tune_spaces" / "recipes" / "paper.yaml"
pytestmark = pytest.mark.slow


def cpu_overrides(shards: Path, storage: Path, init: Path) -> list[str]:
    """paper.yaml on one CPU: a tiny Swin (tiny_swin_config's shape), small crops and heads,
    one short epoch, and a teacher that does not move (momentum 1) so its start can be checked."""
    return [
        f"data.shards={shards}", "data.num_workers=0", "data.batch_size=8", "data.samples_per_epoch=16",
        "data.crops.global_size=64", "data.crops.local_size=32", "data.crops.local_crops=2",
        "data.crops.eval_size=64", "data.crops.eval_resize=72",
        "model.backbone_kwargs={img_size: 64, window_size: 4, embed_dim: 16, depths: [2, 2, 2, 2], "
        "num_heads: [1, 2, 2, 4]}",
        "model.out_dim=64", "model.hidden_dim=32", "model.bottleneck_dim=16", f"model.init_checkpoint={init}",
        "optim.epochs=1", "optim.warmup_epochs=0", "optim.momentum_teacher=1.0",
        "eval.probe_every=1", "eval.probe_epochs=5",
        "scaling.use_gpu=false", "scaling.num_workers=1", "scaling.cpus_per_worker=1",
        f"run.storage={storage}",
    ]


def test_paper_recipe_trains_from_an_official_checkpoint_with_the_official_mil_term(ray_head, demo_shards,
                                                                                      tmp_path):
    overrides = cpu_overrides(demo_shards, tmp_path / "runs", tmp_path / "checkpoint.pth")
    cfg = load_config(str(PAPER), overrides)
    assert cfg.loss.mil_form == "official" and cfg.eval.probe_feature == "last4"  # the recipe's, not ours
    torch.manual_seed(1)
    source = CMDEngine(dataclasses.replace(cfg.model, init_checkpoint=None), cfg.loss, cfg.optim,
                       steps_per_epoch=1, global_batch=8)
    with torch.no_grad():  # a teacher unlike any fresh init
        for p in source.teacher.parameters():
            p.add_(torch.randn_like(p))
    torch.save(esvit_checkpoint(source), tmp_path / "checkpoint.pth")

    proc = subprocess.run([sys.executable, "harness/train.py", "--config", str(PAPER), "--name", "paper",
                           *overrides], cwd=ROOT, env=ray_head.env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    state = torch.load(sorted((tmp_path / "runs" / "paper").glob("checkpoint_*/state.pt"))[-1], weights_only=True)
    assert state["config"]["loss"]["mil_form"] == "official"
    metrics = state["history"][-1]
    assert metrics["loss_mil_student"] != 0.0  # the MIL term is in the loss
    # the probe on the recipe's last4 (the last 4 blocks pooled), kNN and retrieval on the pooled
    # final feature, as the official protocol; the metrics name each feature and its width
    backbone = source.teacher.backbone
    assert metrics["probe_feature_dim.last4"] == backbone.feature_dim("last4") > backbone.feature_dim("cls")
    assert metrics["knn_feature_dim.cls"] == backbone.feature_dim("cls")
    want = source.teacher.state_dict()  # momentum 1: the teacher is still the checkpoint's
    got = state["engine"]["teacher"]
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
