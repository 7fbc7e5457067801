"""`python -m harness.evaluate` reproduces a run's own evaluation, each metric on its protocol's feature."""
from __future__ import annotations

import json

import torch

from cmd_model.engine import CMDEngine
from cmd_model.features import extract_features
from cmd_model.knn import knn_top1
from harness.backbone_eval import evaluate_backbone
from harness.checkpoint import save_checkpoint
from harness.config import TrainConfig, build_config, to_dict
from harness.evaluate import main
from shards.pipeline import eval_loader

torch.set_num_threads(2)


def _run_checkpoint(folder, demo_shards) -> tuple[TrainConfig, CMDEngine]:
    """A checkpoint folder as harness/train_loop.py writes it, for a tiny ViT run on the demo shards
    whose eval settings differ from the defaults (probe on last4, seed 3)."""
    cfg = build_config({
        "data": {"shards": str(demo_shards), "crops": {"eval_size": 32, "eval_resize": 36}},
        "model": {"backbone": "vit_tiny_patch16_224", "out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16,
                  "backbone_kwargs": {"patch_size": 8, "img_size": 32, "depth": 2, "embed_dim": 48, "num_heads": 3}},
        "eval": {"probe_feature": "last4", "probe_epochs": 20},
        "run": {"seed": 3},
    })
    torch.manual_seed(0)
    engine = CMDEngine(cfg.model, cfg.loss, cfg.optim, steps_per_epoch=1, global_batch=2)
    save_checkpoint(folder, {"engine": engine.state_dict(), "epoch": 1, "step": 0, "config": to_dict(cfg)})
    return cfg, engine


def test_folder_or_file_reproduces_the_runs_numbers_on_the_named_features(tmp_path, demo_shards, capsys):
    cfg, engine = _run_checkpoint(tmp_path / "checkpoint_000001", demo_shards)
    study = evaluate_backbone(engine.teacher_backbone, cfg.data, cfg.eval, torch.device("cpu"), seed=cfg.run.seed)
    assert main(["--checkpoint", str(tmp_path / "checkpoint_000001"), "--paper-probe", "--device", "cpu",
                 "eval.paper_probe_epochs=2"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("probe_top1", "knn_top1", "rank1", "rank5", "map100", "map100_official"):
        assert printed[key] == study[key], key  # the study's number, same split, settings and seed
    # the probe on the run's eval.probe_feature, kNN / retrieval on the pooled final feature
    assert printed["probe_feature_dim.last4"] == 2 * 48 and printed["knn_feature_dim.cls"] == 48  # depth 2: both blocks
    assert 0.0 <= printed["paper_probe_top1"] <= printed["paper_probe_best_top1"] <= 1.0
    assert {f"knn_top1[k={k}]" for k in cfg.eval.knn_k} <= set(printed)
    train = extract_features(engine.teacher_backbone, eval_loader(cfg.data, cfg.data.train_split), "cls")
    val = extract_features(engine.teacher_backbone, eval_loader(cfg.data, cfg.data.val_split), "cls")
    assert printed["knn_top1"] == knn_top1(*train, *val, ks=(20,))[20]
    # the state file itself, and an override of the kNN feature
    assert main(["--checkpoint", str(tmp_path / "checkpoint_000001" / "state.pt"), "--device", "cpu",
                 "eval.knn_feature=avgpool"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["probe_top1"] == study["probe_top1"] and "knn_feature_dim.avgpool" in printed


def test_bad_checkpoint_and_overrides_are_one_line(tmp_path, demo_shards, capsys):
    assert main(["--checkpoint", str(tmp_path / "nope")]) == 2
    assert "no such checkpoint folder or state.pt in one" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: checkpoint {tmp_path}: no state.pt in it\n"
    _run_checkpoint(tmp_path / "ckpt", demo_shards)
    assert main(["--checkpoint", str(tmp_path / "ckpt"), "optim.lr=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only eval.* and data.*" in err
    assert main(["--checkpoint", str(tmp_path / "ckpt"), "eval.knn_feature=nope"]) == 2
    assert "'eval.knn_feature' must be one of" in capsys.readouterr().err


def test_label_free_evaluation_reports_rankme_of_the_val_features_alone(tmp_path, demo_shards):
    """Unlabeled shards: each measured epoch is RankMe of the teacher's val features, nothing that
    needs labels, and the same number the labelled evaluation reports."""
    from cmd_model.rankme import rankme

    cfg, engine = _run_checkpoint(tmp_path / "checkpoint_000001", demo_shards)
    free = build_config(to_dict(cfg), {"eval.label_free": True})
    metrics = evaluate_backbone(engine.teacher_backbone, free.data, free.eval, torch.device("cpu"))
    assert set(metrics) == {"rankme", "probe_seconds"}
    val = extract_features(engine.teacher_backbone, eval_loader(cfg.data, cfg.data.val_split),
                           cfg.eval.rankme_feature, torch.device("cpu"))[0]
    assert metrics["rankme"] == rankme(val)
    labelled = evaluate_backbone(engine.teacher_backbone, cfg.data, cfg.eval, torch.device("cpu"), seed=cfg.run.seed)
    assert labelled["rankme"] == metrics["rankme"] and 1.0 < metrics["rankme"] <= val.shape[1]


def _truncated(folder) -> int:
    """Cut the committed state.pt short, as a node lost while writing it leaves it; its full size."""
    size = (folder / "state.pt").stat().st_size
    with open(folder / "state.pt", "r+b") as f:
        f.truncate(1000)
    return size


def test_evaluate_and_final_refuse_a_damaged_checkpoint_in_one_line(tmp_path, demo_shards, capsys):
    from harness.final import main as final_main

    folder = tmp_path / "run" / "checkpoint_000001"
    _run_checkpoint(folder, demo_shards)
    size = _truncated(folder)
    expected = f"error: checkpoint {folder}: state.pt has 1000 bytes, {size} committed"
    for location in (folder, folder / "state.pt"):
        assert main(["--checkpoint", str(location), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.strip() == expected and "Traceback" not in err
    best = {"trial_id": "t1", "params": {}, "epoch": 1, "checkpoint_path": str(folder)}
    (tmp_path / "run" / "best.json").write_text(json.dumps(best))
    assert final_main([str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == expected
    assert not (tmp_path / "run" / "final_test.json").exists()


def test_evaluate_refuses_an_uncommitted_checkpoint(tmp_path, demo_shards, capsys):
    folder = tmp_path / "ckpt"
    _run_checkpoint(folder, demo_shards)
    (folder / "commit.json").unlink()
    assert main(["--checkpoint", str(folder), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == f"error: checkpoint {folder}: no readable commit.json: never committed"
