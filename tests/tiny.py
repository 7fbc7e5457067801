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


# A finished study's trials: (mil_weight, local_crops, teacher_temp, final value or None for an errored
# trial); the last one was stopped at epoch 1 (PRUNED), the others that did not error ran both epochs.
FINISHED = [(0.2, 1, 0.07, 0.50), (0.8, 2, 0.07, 0.60), (1.9, 2, 0.07, 0.70), (0.5, 1, 0.05, 0.40),
            (0.6, 2, 0.07, None), (0.9, 1, 0.07, 0.30)]


def finished_study(tmp_path: Path, name: str = "earlier") -> Path:
    """A finished study folder without Ray: its study.yaml and the Optuna journal its searcher wrote
    when told the FINISHED trials as Tune would tell them."""
    from harness.study_file import load_study
    from harness.tuner import tune_config

    space = write_tiny_study(
        tmp_path / f"{name}.yaml", tmp_path / "no-shards", tmp_path / "runs", max_t=2,
        space={"loss.mil_weight": {"type": "uniform", "low": 0.1, "high": 2.0},
               "data.crops.local_crops": {"type": "int", "low": 1, "high": 2},
               "loss.teacher_temp": {"type": "uniform", "low": 0.04, "high": 0.08}},
        points_to_evaluate=[{"loss.mil_weight": w, "data.crops.local_crops": n, "loss.teacher_temp": t}
                            for w, n, t, _ in FINISHED],
        search={"sampler": "random", "num_samples": len(FINISHED), "max_concurrent": 10, "seed": 0})
    study = load_study(space)
    folder = tmp_path / "runs" / name
    study.save(folder)
    searcher = tune_config(study, str(folder)).search_alg
    for i in range(len(FINISHED)):
        searcher.suggest(f"e{i}")
    for i, (_, _, _, value) in enumerate(FINISHED):
        if value is None:
            searcher.on_trial_complete(f"e{i}", error=True)
        elif i == len(FINISHED) - 1:  # stopped at epoch 1 by ASHA
            searcher.on_trial_complete(f"e{i}", {"epoch": 1, "probe_top1": value})
        else:
            searcher.on_trial_result(f"e{i}", {"epoch": 1, "probe_top1": value - 0.1})
            searcher.on_trial_complete(f"e{i}", {"epoch": 2, "probe_top1": value})
    return folder
