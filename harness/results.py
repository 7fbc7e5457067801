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
from harness.objective import rank_trials
from harness.study_file import Study

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


def epoch_reports(analysis: ExperimentAnalysis, trial_id: str) -> pd.DataFrame:
    """A trial's per-epoch reports in order (step checkpoints report fractional epochs: dropped);
    after a resume an epoch reported twice keeps its last report."""
    frame = analysis.trial_dataframes.get(trial_id, pd.DataFrame())
    if "epoch" not in frame:
        return frame
    return frame[frame["epoch"] == frame["epoch"].round()].drop_duplicates("epoch", keep="last")


def collect(study: Study, study_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per trial, one row per trial and epoch) from the experiment folder.

    A trial's `metric` column is the objective (harness/objective.py): the value at its last
    measured epoch (`objective_epoch`), with the knn/rank1 and the checkpoint of that same epoch.
    Epochs without a probe keep NaN in the curves: only measured values are values.
    """
    analysis = ExperimentAnalysis(str(study_dir))
    metric = study.metric
    params = [d.key for d in study.space]
    rows, curves = [], []
    for trial in analysis.trials:
        frame = epoch_reports(analysis, trial.trial_id)
        last = frame.iloc[-1].to_dict() if len(frame) else {}
        measured = frame[frame[metric].notna()] if metric in frame else frame.iloc[0:0]
        at = measured.iloc[-1].to_dict() if len(measured) else {}
        epochs = float(last.get("epoch", 0) or 0)
        wall = float(last.get("time_total_s", 0.0) or 0.0)
        row: dict[str, Any] = {"trial_id": trial.trial_id, "status": trial.status}
        row.update({p: trial.config.get(p) for p in params})
        row.update({
            metric: at.get(metric, math.nan),
            "objective_epoch": at.get("epoch", math.nan),
            "knn_top1": at.get("knn_top1", math.nan),
            "rank1": at.get("rank1", math.nan),
            "loss": last.get("loss", math.nan),
            "epochs": epochs,
            "stop_reason": _stop_reason(trial.status, epochs, study.scheduler.max_t),
            "wall_s": wall,
            "finished_at": last.get("timestamp", math.nan),  # unix time of the trial's last report
            "gpu_hours": wall * _gpus_per_trial(study) / 3600.0,
            "checkpoint_path": at.get("checkpoint_path"),
            "split": study.base.data.val_split,
            "error": first_error_line(trial) if trial.status == "ERROR" else "",
        })
        rows.append(row)
        for _, r in frame.iterrows():
            curves.append({"trial_id": trial.trial_id, "epoch": r.get("epoch"),
                           metric: r.get(metric, math.nan), "loss": r.get("loss"),
                           "time_total_s": r.get("time_total_s"),
                           "stop_reason": row["stop_reason"]})
    trials = pd.DataFrame(rows)
    if len(trials):  # on a tie the trial that finished first ranks first, as in Optuna's best_trial
        trials = trials.sort_values("finished_at", kind="stable")
        trials = rank_trials(trials, metric, study.mode, study.scheduler.max_t).reset_index(drop=True)
    return trials, pd.DataFrame(curves, columns=["trial_id", "epoch", metric, "loss", "time_total_s", "stop_reason"])


def best_row(trials: pd.DataFrame, study: Study) -> pd.Series | None:
    """The study's best trial by the objective (the first row of `collect`'s ranking)."""
    ok = trials[(trials["status"] != "ERROR") & trials[study.metric].notna()] if len(trials) else trials
    return None if ok.empty else ok.iloc[0]


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
    params = {d.key: plain(best[d.key]) for d in study.space}
    config = to_dict(study.trial_config(params))
    split = study.base.data.val_split
    header = (f"# best trial {best['trial_id']} of study {study.name}: {study.metric} "
              f"{best[study.metric]:.4f} on split '{split}' at epoch {int(best['objective_epoch'])}\n"
              f"# run it in full: python harness/train.py --config {out / BEST_CONFIG}\n")
    (out / BEST_CONFIG).write_text(header + yaml.safe_dump(config, sort_keys=False))
    summary = {"trial_id": best["trial_id"], "params": params,
               "objective": f"{study.metric} on '{split}' at the trial's last measured epoch",
               "metric": study.metric, study.metric: plain(best[study.metric]), "split": split,
               "epoch": int(best["objective_epoch"]), "epochs": plain(best["epochs"]),
               "stop_reason": best["stop_reason"], "checkpoint_path": best["checkpoint_path"]}
    (out / BEST_JSON).write_text(json.dumps(summary, indent=2))
    return summary


def describe_best(best: dict[str, Any]) -> str:
    """The best trial in one line, saying what its number is: metric, split, epoch, budget."""
    return (f"best trial {best['trial_id']}: {best['metric']} {best[best['metric']]:.4f} on split "
            f"'{best['split']}' at epoch {best['epoch']} ({best['stop_reason']}, the study's objective)")


def plain(value: Any) -> Any:
    """numpy scalars to Python ones (YAML and JSON want plain types)."""
    return value.item() if hasattr(value, "item") else value
