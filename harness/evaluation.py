"""Frozen-backbone evaluation on the shard splits: the probe that is the study's objective."""
from __future__ import annotations

import time

import torch

from cmd_model.config import EvalConfig
from cmd_model.evaluate import extract_features, knn_top1, linear_probe, retrieval
from shards.config import DataConfig
from shards.pipeline import eval_loader


def evaluate_backbone(backbone: torch.nn.Module, data: DataConfig, ev: EvalConfig,
                      device: torch.device, seed: int = 0) -> dict[str, float]:
    """probe_top1 (fast linear probe), knn_top1 (k=20) and retrieval (Rank-1/5, mAP@100) on val.

    Features come from deterministic eval crops of the train and val splits, so two calls on
    the same backbone give the same numbers.
    """
    start = time.perf_counter()
    was_training = backbone.training
    backbone.eval()
    train_x, train_y = extract_features(backbone, eval_loader(data, data.train_split),
                                        ev.probe_feature, device)
    val_x, val_y = extract_features(backbone, eval_loader(data, data.val_split),
                                    ev.probe_feature, device)
    backbone.train(was_training)
    if ev.max_train_images is not None:
        train_x, train_y = train_x[: ev.max_train_images], train_y[: ev.max_train_images]
    top1 = linear_probe(train_x, train_y, val_x, val_y, epochs=ev.probe_epochs,
                        weight_decay=ev.probe_weight_decay, seed=seed)
    k = min(20, len(train_y))
    knn = knn_top1(train_x, train_y, val_x, val_y, ks=(k,), T=ev.knn_temperature)
    ret = retrieval(val_x, val_y, mode=ev.retrieval_mode, train_feats=train_x, train_labels=train_y)
    return {
        "probe_top1": float(top1),
        "knn_top1": float(knn[k]),
        "rank1": float(ret["rank1"]),
        "rank5": float(ret["rank5"]),
        "map100": float(ret["map100"]),
        "probe_seconds": time.perf_counter() - start,
    }
