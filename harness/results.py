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
from harness.objective import CONFIRM_OF, completed, rank_configs, rank_trials
from harness.searcher import TUNE_ID
from harness.study_file import Study
from harness.study_storage import load_trials_study

TRIALS_PARQUET, TRIALS_CSV, CURVES_PARQUET = "results.parquet", "results.csv", "curves.parquet"
BEST_CONFIG, BEST_JSON = "best_config.yaml", "best.json"


def _stop_reason(status: str, epochs: float, max_epochs: int) -> str:
    if status == "ERROR":
        return "error"
    if status == "TERMINATED":
        return "completed" if completed(epochs, max_epochs) else "early_stopped"
    return "interrupted" if epochs else "not_started"


def _gpus_per_trial(study: Study) -> float:
    s = study.base.scaling
    return s.num_workers * s.worker_gpus


def epoch_reports(analysis: ExperimentAnalysis, trial_id: str) -> pd.DataFrame:
    """A trial's per-epoch reports in order (step checkpoints report fractional epochs: dropped);
    after a resume an epoch reported twice keeps its last report."""
    frame = analysis.trial_dataframes.get(trial_id, pd.DataFrame())
    if "epoch" not in frame:
        return frame
    return frame[frame["epoch"] == frame["epoch"].round()].drop_duplicates("epoch", keep="last")


def creation_order(folder: str | Path, configured: str | None) -> dict[str, int]:
    """Tune trial id -> its Optuna trial number, from the study's storage (empty without one).

    Tune's experiment state does not promise creation order; Optuna's numbers are it, and
    Optuna's best_trial takes the lowest number on a tie."""
    try:
        trials = load_trials_study(folder, configured).get_trials(deepcopy=False)
    except FileNotFoundError:
        return {}
    return {t.user_attrs[TUNE_ID]: t.number for t in trials if TUNE_ID in t.user_attrs}


def collect(study: Study, study_dir: str | Path, folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per trial, one row per trial and epoch) from the experiment folder `study_dir`
    (local or a bucket URI) and the study's Optuna storage (`folder`: the local study folder).

    A trial's `metric` column is the objective (harness/objective.py): the value at its last
    measured epoch (`objective_epoch`), with the knn/rank1 and the checkpoint of that same epoch.
    Epochs without a probe keep NaN in the curves: only measured values are values.
    """
    analysis = ExperimentAnalysis(str(study_dir))
    metric = study.metric
    params = [d.key for d in study.space]
    rows, curves = [], []
    numbers = creation_order(folder, study.search.storage)
    unnumbered = len(numbers) + len(analysis.trials)  # confirm runs are not Optuna trials: after them
    ordered = sorted(enumerate(analysis.trials), key=lambda it: numbers.get(it[1].trial_id, unnumbered + it[0]))
    for _, trial in ordered:
        frame = epoch_reports(analysis, trial.trial_id)
        last = frame.iloc[-1].to_dict() if len(frame) else {}
        measured = frame[frame[metric].notna()] if metric in frame else frame.iloc[0:0]
        at = measured.iloc[-1].to_dict() if len(measured) else {}
        epochs = float(last.get("epoch", 0) or 0)
        wall = float(last.get("time_total_s", 0.0) or 0.0)
        row: dict[str, Any] = {"trial_id": trial.trial_id, "status": trial.status}
        row.update({p: trial.config.get(p) for p in params})
        row.update({"seed": int(trial.config.get("run.seed", study.base.run.seed)),
                    CONFIRM_OF: trial.config.get(CONFIRM_OF) or ""})
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
    if len(trials):  # rows in creation order: on a tie the earlier trial ranks first, as Optuna's best_trial
        trials = rank_trials(trials, metric, study.mode, study.scheduler.max_t).reset_index(drop=True)
        configs = rank_configs(trials, metric, study.mode, study.scheduler.max_t).set_index("config_of")
        of = trials[CONFIRM_OF].where(trials[CONFIRM_OF] != "", trials["trial_id"])
        for column in ("mean", "std", "runs"):
            trials[f"config_{column}"] = of.map(configs[column])
    return trials, pd.DataFrame(curves, columns=["trial_id", "epoch", metric, "loss", "time_total_s", "stop_reason"])


def write_results(study: Study, trials: pd.DataFrame, curves: pd.DataFrame, out_dir: str | Path,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `collect`'s frames as results.parquet/.csv and curves.parquet, and best_config.yaml and
    best.json (with `extra` entries: the study's baseline, what it inherited); return best."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials.to_parquet(out / TRIALS_PARQUET, index=False)
    trials.to_csv(out / TRIALS_CSV, index=False)
    curves.to_parquet(out / CURVES_PARQUET, index=False)
    summary = best_summary(study, trials)
    if not summary:
        return {}
    summary.update(extra or {})
    config = to_dict(study.trial_config(summary["params"]))
    header = (f"# best config (trial {summary['trial_id']}) of study {study.name}: {describe_value(summary)}\n"
              f"# run it in full: python harness/train.py --config {out / BEST_CONFIG}\n")
    (out / BEST_CONFIG).write_text(header + yaml.safe_dump(config, sort_keys=False))
    (out / BEST_JSON).write_text(json.dumps(summary, indent=2))
    return summary


def best_summary(study: Study, trials: pd.DataFrame) -> dict[str, Any]:
    """The study's best config (harness/objective.py `rank_configs`), as best.json holds it: its
    value is the mean over its full-budget runs (one run without a confirm stage), with their seeds,
    values and std; the checkpoint is its run with the study's own seed at the epoch measured."""
    if trials.empty:
        return {}
    configs = rank_configs(trials, study.metric, study.mode, study.scheduler.max_t)
    usable = configs[configs["runs"] > 0]
    if usable.empty:  # no config ran the full budget: the trial ranking's first measured trial
        ranked = trials[(trials["status"] != "ERROR") & trials[study.metric].notna()]
        if ranked.empty:
            return {}
        best = ranked.iloc[0]
        runs = trials.iloc[0:0]
        top = {"runs": 0, "seeds": [int(best["seed"])], "values": [plain(best[study.metric])], "std": math.nan,
               "mean": plain(best[study.metric])}
    else:
        top = usable.iloc[0].to_dict()
        best = trials[trials["trial_id"] == top["config_of"]].iloc[0]
        of = trials[CONFIRM_OF].where(trials[CONFIRM_OF] != "", trials["trial_id"])
        runs = trials[(of == top["config_of"]) & trials["objective_epoch"].ge(study.scheduler.max_t)
                      & trials[study.metric].notna() & (trials["status"] != "ERROR")]
    own = runs[runs["seed"] == study.base.run.seed]
    chosen = own.iloc[0] if len(own) else (runs.iloc[0] if len(runs) else best)
    split = study.base.data.val_split
    summary = {"trial_id": best["trial_id"], "params": {d.key: plain(best[d.key]) for d in study.space},
               "objective": f"{study.metric} on '{split}' at the trial's last measured epoch, "
                            "mean over the config's full-budget runs",
               "metric": study.metric, study.metric: plain(top["mean"]), "split": split,
               "runs": int(top["runs"]), "seeds": list(top["seeds"]), "values": list(top["values"]),
               "std": None if pd.isna(top["std"]) else float(top["std"]),
               "epoch": int(chosen["objective_epoch"]), "epochs": plain(best["epochs"]),
               "stop_reason": best["stop_reason"], "checkpoint_trial": chosen["trial_id"],
               "checkpoint_seed": int(chosen["seed"]), "checkpoint_path": chosen["checkpoint_path"]}
    if len(usable) > 1 and bool(usable.iloc[1]["confirmed"]):
        summary["runner_up"] = {"trial_id": usable.iloc[1]["config_of"], "mean": float(usable.iloc[1]["mean"]),
                                "std": None if pd.isna(usable.iloc[1]["std"]) else float(usable.iloc[1]["std"])}
    return summary


def describe_value(best: dict[str, Any]) -> str:
    """'probe_top1 0.3359 ± 0.0120 (mean of 2 seeds: 0.3250, 0.3469) on split 'val' at epoch 9'."""
    metric, runs = best["metric"], best.get("runs", 1)
    if runs > 1:
        values = ", ".join(f"{v:.4f}" for v in best["values"])
        value = f"{best[metric]:.4f} ± {best['std']:.4f} (mean of {runs} seeds {best['seeds']}: {values})"
    else:
        value = f"{best[metric]:.4f} (1 seed)"
    return f"{metric} {value} on split '{best['split']}' at epoch {best['epoch']}"


def close_call(best: dict[str, Any]) -> str | None:
    """One line when the best config and the runner-up are within one std of each other."""
    other = best.get("runner_up")
    if not other or best.get("std") is None:
        return None
    spread = max(best["std"], other["std"] or 0.0)
    if abs(best[best["metric"]] - other["mean"]) >= spread:
        return None
    return (f"the top configs are within one std of each other: {best['trial_id']} {best[best['metric']]:.4f} "
            f"vs {other['trial_id']} {other['mean']:.4f} (std {spread:.4f}); their order is not a finding")


def describe_best(best: dict[str, Any]) -> str:
    """The best config in one line, saying what its number is: metric, seeds, split, epoch."""
    return f"best config (trial {best['trial_id']}): {describe_value(best)}, the study's objective"


def plain(value: Any) -> Any:
    """numpy scalars to Python ones (YAML and JSON want plain types)."""
    return value.item() if hasattr(value, "item") else value
