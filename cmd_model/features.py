"""Frozen-teacher evaluation: feature extraction + the probes, kNN and retrieval, and a CLI.

    python -m cmd_model.evaluate --checkpoint run/checkpoint.pt --data data/cub [--feature last4] [--paper-probe]

The checkpoint is a torch file with "engine" (CMDEngine.state_dict()) and "config" (a dict with
"model" and "loss" sub-dicts, optionally "data"); it is read with weights_only=True.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable
from typing import Any

import torch

from cmd_model.backbone import FEATURE_KINDS, Backbone
from cmd_model.config import EvalConfig, LossConfig, ModelConfig
from cmd_model.knn import knn_top1
from cmd_model.network import build_network
from cmd_model.probe import linear_probe, paper_probe
from cmd_model.retrieval import retrieval

__all__ = ["extract_features", "linear_probe", "paper_probe", "knn_top1", "retrieval", "load_teacher", "main"]


@torch.no_grad()
def extract_features(
    backbone: Backbone,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    kind: str = "cls",
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, F) float32 on CPU, labels (N,) int64) for every batch of `loader`, with the
    backbone in eval mode (restored afterwards)."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"feature kind {kind!r}; expected one of {FEATURE_KINDS}")
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    try:
        for images, y in loader:
            images = images.to(device, non_blocking=True)
            feats.append(backbone.features(images, kind).float().cpu())
            labels.append(torch.as_tensor(y).long().cpu())
    finally:
        backbone.train(was_training)
    if not feats:
        raise ValueError("extract_features: the loader yielded no batches")
    return torch.cat(feats), torch.cat(labels)


def _dataclass_from(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} for {cls.__name__}")
    return cls(**values)


def load_teacher(path: str, device: torch.device | str = "cpu") -> tuple[Backbone, dict[str, Any]]:
    """The teacher backbone of a checkpoint, plus the checkpoint's config dict."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"--checkpoint: no file at {path}") from exc
    if not isinstance(ckpt, dict) or "engine" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: expected a dict with 'engine' and 'config' (a harness checkpoint)")
    config = ckpt["config"]
    model_cfg = _dataclass_from(ModelConfig, dict(config["model"]), f"{path} config.model")
    model_cfg.init_checkpoint = None  # the engine state holds the weights
    loss_cfg = _dataclass_from(LossConfig, dict(config["loss"]), f"{path} config.loss")
    teacher = build_network(model_cfg, loss_cfg)
    try:
        teacher.load_state_dict(ckpt["engine"]["teacher"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: teacher weights do not match its own config: {exc}") from exc
    teacher.to(device).eval()
    return teacher.backbone, config


def _data_config(config: dict[str, Any], shards: str) -> Any:
    from shards.config import CropConfig, DataConfig

    data = dict(config.get("data") or {})
    crops = data.pop("crops", None)
    cfg = _dataclass_from(DataConfig, data, "checkpoint config.data") if data else DataConfig()
    if crops:
        cfg.crops = _dataclass_from(CropConfig, dict(crops), "checkpoint config.data.crops")
    cfg.shards = shards
    return cfg


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print every metric of a checkpoint's teacher on a shard set's train/val splits."""
    ev = EvalConfig()
    p = argparse.ArgumentParser(prog="python -m cmd_model.evaluate", description=main.__doc__)
    p.add_argument("--checkpoint", required=True, help="torch file with 'engine' and 'config'")
    p.add_argument("--data", required=True, help="shards folder (holding manifest.json)")
    p.add_argument("--feature", default=ev.probe_feature, choices=FEATURE_KINDS, help="fast-probe feature")
    p.add_argument("--knn-feature", default="cls", choices=FEATURE_KINDS,
                   help="kNN / retrieval feature (official: pooled final feature)")
    p.add_argument("--paper-probe", action="store_true", help="also run the official probe protocol (last4)")
    p.add_argument("--paper-probe-epochs", type=int, default=ev.paper_probe_epochs)
    p.add_argument("--retrieval-mode", default=ev.retrieval_mode, choices=("every9", "test_vs_train"))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from shards.pipeline import eval_loader  # only the CLI reads shards

    backbone, config = load_teacher(args.checkpoint, args.device)
    data = _data_config(config, args.data)
    cache: dict[str, tuple[torch.Tensor, ...]] = {}

    def feats(kind: str) -> tuple[torch.Tensor, ...]:
        if kind not in cache:
            tx, ty = extract_features(backbone, eval_loader(data, data.train_split, args.batch_size), kind, args.device)
            vx, vy = extract_features(backbone, eval_loader(data, data.val_split, args.batch_size), kind, args.device)
            cache[kind] = (tx, ty, vx, vy)
        return cache[kind]

    out: dict[str, float] = {}
    tx, ty, vx, vy = feats(args.feature)
    out[f"probe_top1[{args.feature}]"] = linear_probe(tx, ty, vx, vy, ev.probe_epochs, ev.probe_weight_decay, args.seed)
    tx, ty, vx, vy = feats(args.knn_feature)
    for k, v in knn_top1(tx, ty, vx, vy, ev.knn_k, ev.knn_temperature).items():
        out[f"knn_top1[k={k}]"] = v
    ret = retrieval(vx, vy, args.retrieval_mode, tx, ty)
    out.update({f"{k}[{args.retrieval_mode}]": v for k, v in ret.items() if k in ("rank1", "rank5", "map100")})
    if args.paper_probe:
        tx, ty, vx, vy = feats("last4")
        out["paper_probe_top1[last4]"] = paper_probe(tx, ty, vx, vy, args.paper_probe_epochs,
                                                     ev.paper_probe_batch, ev.paper_probe_lr, args.seed, args.device)
    for k, v in out.items():
        print(f"{k}: {v:.4f}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
