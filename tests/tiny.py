"""A tiny training config and study file for end-to-end tests: seconds per epoch on one CPU."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def tiny_base(shards: Path) -> dict[str, Any]:
    return {
        "data": {"shards": str(shards), "batch_size": 16, "num_workers": 0, "samples_per_epoch": 64,
                 "crops": {"global_size": 32, "local_size": 16, "local_crops": 2,
                           "eval_size": 32, "eval_resize": 36}},
        "model": {"backbone": "vit_tiny_patch16_224",
                  "backbone_kwargs": {"patch_size": 8, "img_size": 32, "depth": 2},
                  "out_dim": 128, "hidden_dim": 64, "bottleneck_dim": 32},
        "optim": {"epochs": 2, "warmup_epochs": 1, "freeze_last_layer": 0},
        "eval": {"probe_epochs": 20, "probe_feature": "avgpool"},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
    }


def write_tiny_study(path: Path, shards: Path, storage: Path, num_samples: int = 2,
                     max_t: int = 1, **extra: Any) -> Path:
    study = {
        "name": "tiny",
        "base": tiny_base(shards),
        "space": {"loss.mil_weight": {"type": "uniform", "low": 0.1, "high": 2.0},
                  "data.crops.local_crops": {"type": "int", "low": 1, "high": 2}},
        "points_to_evaluate": [{"loss.mil_weight": 1.0, "data.crops.local_crops": 2}],
        "search": {"sampler": "tpe", "num_samples": num_samples, "max_concurrent": 2, "seed": 0},
        "scheduler": {"type": "asha", "max_t": max_t, "grace_period": 1, "reduction_factor": 2},
        "storage": str(storage),
        **extra,
    }
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path
