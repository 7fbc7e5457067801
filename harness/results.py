"""A study's results as files a user can act on, rebuilt from Tune's experiment folder.

The same code serves a finished study (end of `harness/tune.py`) and an interrupted one
(`python -m harness.report RUN_DIR`), because both read what Tune wrote to disk.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from ray.tune import ExperimentAnalysis

from harness.config import to_dict
from harness.console import first_error_line
from harness.space import Study

TRIALS_PARQUET, TRIALS_CSV, CURVES_PARQUET = "results.parquet", "results.csv", "curves.parquet"
BEST_CONFIG, BEST_JSON = "best_config.yaml", "best.json"


def _stop_reason(status: str, epochs: float, max_epochs: int) -> str:
    if status == "ERROR":
        return "error"
    if status == "TERMINATED":
        return "completed" if epochs >= max_epochs else "early_stopped"
    return "interrupted" if epochs else "not_started"


def _gpus_per_trial(study: Study) -> float:
    s = study.base.scaling
    return s.num_workers * (s.gpus_per_worker or 1.0) if s.use_gpu else 0.0


def collect(study: Study, study_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per trial, one row per trial and epoch) from the experiment folder."""
    analysis = ExperimentAnalysis(str(study_dir))
    metric = study.metric
    params = [d.key for d in study.space]
    rows, curves = [], []
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id, pd.DataFrame())
        if "epoch" in frame:  # per-epoch reports only (step checkpoints report fractions)
            frame = frame[frame["epoch"] == frame["epoch"].round()]
        last = frame.iloc[-1].to_dict() if len(frame) else {}
        epochs = float(last.get("epoch", 0) or 0)
        best_idx = frame[metric].idxmax() if metric in frame and len(frame) else None
        if best_idx is not None and study.mode == "min":
            best_idx = frame[metric].idxmin()
        best = frame.loc[best_idx] if best_idx is not None else {}
        wall = float(last.get("time_total_s", 0.0) or 0.0)
        row: dict[str, Any] = {"trial_id": trial.trial_id, "status": trial.status}
        row.update({p: trial.config.get(p) for p in params})
        row.update({
            metric: last.get(metric, math.nan),
            f"best_{metric}": best.get(metric, math.nan) if len(frame) else math.nan,
            "best_epoch": best.get("epoch", math.nan) if len(frame) else math.nan,
            "knn_top1": last.get("knn_top1", math.nan),
            "rank1": last.get("rank1", math.nan),
            "loss": last.get("loss", math.nan),
            "epochs": epochs,
            "stop_reason": _stop_reason(trial.status, epochs, study.scheduler.max_t),
            "wall_s": wall,
            "gpu_hours": wall * _gpus_per_trial(study) / 3600.0,
            "checkpoint_path": best.get("checkpoint_path") if len(frame) else None,
            "error": first_error_line(trial) if trial.status == "ERROR" else "",
        })
        rows.append(row)
        for _, r in frame.iterrows():
            curves.append({"trial_id": trial.trial_id, "epoch": r.get("epoch"),
                           metric: r.get(metric), "loss": r.get("loss"),
                           "time_total_s": r.get("time_total_s"),
                           "stop_reason": row["stop_reason"]})
    return pd.DataFrame(rows), pd.DataFrame(curves)


def best_row(trials: pd.DataFrame, study: Study) -> pd.Series | None:
    col = f"best_{study.metric}"
    ok = trials[(trials["status"] != "ERROR") & trials[col].notna()] if len(trials) else trials
    if ok.empty:
        return None
    return ok.loc[ok[col].idxmin() if study.mode == "min" else ok[col].idxmax()]


def write_results(study: Study, study_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write results.parquet/.csv, curves.parquet, best_config.yaml and best.json; return best."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials, curves = collect(study, study_dir)
    trials.to_parquet(out / TRIALS_PARQUET, index=False)
    trials.to_csv(out / TRIALS_CSV, index=False)
    curves.to_parquet(out / CURVES_PARQUET, index=False)
    best = best_row(trials, study)
    if best is None:
        return {}
    params = {d.key: _plain(best[d.key]) for d in study.space}
    config = to_dict(study.trial_config(params))
    header = (f"# best trial {best['trial_id']} of study {study.name}: "
              f"best {study.metric} {best[f'best_{study.metric}']:.4f}\n"
              f"# run it in full: python harness/train.py --config {out / BEST_CONFIG}\n")
    (out / BEST_CONFIG).write_text(header + yaml.safe_dump(config, sort_keys=False))
    summary = {"trial_id": best["trial_id"], "params": params,
               study.metric: _plain(best[study.metric]),
               f"best_{study.metric}": _plain(best[f"best_{study.metric}"]),
               "checkpoint_path": best["checkpoint_path"]}
    (out / BEST_JSON).write_text(json.dumps(summary, indent=2))
    return summary


def _plain(value: Any) -> Any:
    """numpy scalars to Python ones (YAML and JSON want plain types)."""
    return value.item() if hasattr(value, "item") else value
