"""Frozen-backbone evaluation on the shard splits: the probe that is the study's objective, kNN
and retrieval, each on the feature the protocol names."""
from __future__ import annotations

import time
from typing import Any

import torch

from cmd_model.config import EvalConfig
from cmd_model.features import extract_feature_sets
from cmd_model.knn import knn_top1
from cmd_model.probe import linear_probe
from cmd_model.rankme import rankme
from cmd_model.retrieval import retrieval
from shards.config import DataConfig
from shards.pipeline import eval_loader

Features = tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor], torch.Tensor]


def split_features(backbone: torch.nn.Module, data: DataConfig, ev: EvalConfig, device: torch.device | str,
                   kinds: tuple[str, ...] = ()) -> Features:
    """(train features by kind, train labels, val features by kind, val labels) for the probe
    feature, the kNN feature and any `kinds`, from deterministic eval crops (two calls on the same
    backbone give the same numbers). `eval.max_train_images` caps the train side."""
    kinds = (ev.probe_feature, ev.knn_feature, ev.rankme_feature, *kinds)
    train, train_y = extract_feature_sets(backbone, eval_loader(data, data.train_split), kinds, device)
    val, val_y = extract_feature_sets(backbone, eval_loader(data, data.val_split), kinds, device)
    if ev.max_train_images is not None:
        train = {k: v[: ev.max_train_images] for k, v in train.items()}
        train_y = train_y[: ev.max_train_images]
    return train, train_y, val, val_y


def score_features(features: Features, ev: EvalConfig, seed: int = 0) -> dict[str, float]:
    """probe_top1 (fast linear probe on `eval.probe_feature`); knn_top1 (k=20), rank1, rank5,
    map100 (standard) and map100_official on `eval.knn_feature` (official eval_knn.py and
    retrieval.py: the pooled final feature); rankme of the val `eval.rankme_feature`. The
    features used are named by two entries whose value is the feature's width:
    `probe_feature_dim.KIND` and `knn_feature_dim.KIND`."""
    train, train_y, val, val_y = features
    pf, kf = ev.probe_feature, ev.knn_feature
    top1 = linear_probe(train[pf], train_y, val[pf], val_y, epochs=ev.probe_epochs,
                        weight_decay=ev.probe_weight_decay, seed=seed)
    k = min(20, len(train_y))
    knn = knn_top1(train[kf], train_y, val[kf], val_y, ks=(k,), T=ev.knn_temperature)
    ret = retrieval(val[kf], val_y, mode=ev.retrieval_mode, train_feats=train[kf], train_labels=train_y)
    return {
        "probe_top1": float(top1),
        "knn_top1": float(knn[k]),
        **{key: float(ret[key]) for key in ("rank1", "rank5", "map100", "map100_official")},
        "rankme": rankme(val[ev.rankme_feature]),
        f"probe_feature_dim.{pf}": float(train[pf].shape[1]),
        f"knn_feature_dim.{kf}": float(train[kf].shape[1]),
    }


def evaluate_backbone(backbone: torch.nn.Module, data: DataConfig, ev: EvalConfig,
                      device: torch.device, seed: int = 0) -> dict[str, float]:
    """`score_features` on the train and val splits, plus the seconds it took; with
    `eval.label_free`, RankMe of the val features alone (no label is read)."""
    start = time.perf_counter()
    if ev.label_free:
        val, _ = extract_feature_sets(backbone, eval_loader(data, data.val_split), (ev.rankme_feature,), device)
        metrics = {"rankme": rankme(val[ev.rankme_feature])}
    else:
        metrics = score_features(split_features(backbone, data, ev, device), ev, seed)
    metrics["probe_seconds"] = time.perf_counter() - start
    return metrics


def evaluate_start(cfg: Any) -> dict[str, float]:
    """The teacher a run of `cfg` (a TrainConfig) starts from, evaluated as a trained one is: its
    random init (seeded as harness/train_loop.py seeds it before building the networks) or its
    model.init_checkpoint. What self-supervision must beat; the study's and harness.compare's
    baseline."""
    from cmd_model.loss import CMDLoss
    from cmd_model.network import build_networks
    from harness.remote_files import read_checkpoint

    torch.manual_seed(cfg.run.seed)
    student, teacher = build_networks(cfg.model, cfg.loss)
    if cfg.model.init_checkpoint:
        from cmd_model.init_checkpoint import restore_init_checkpoint

        restore_init_checkpoint(student, teacher, CMDLoss(cfg.model.out_dim, cfg.loss), cfg.model.init_checkpoint,
                                read_checkpoint)
    return evaluate_backbone(teacher.backbone, cfg.data, cfg.eval, torch.device("cpu"), seed=cfg.run.seed)
