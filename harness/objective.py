"""The study's one objective, defined once for ASHA, Optuna, the results table and best.json.

The objective of a trial is its metric (`probe_top1`: the linear probe of the frozen teacher on
the validation split) at the trial's last measured epoch. Trials are compared at equal budgets:
ASHA compares the values at a rung epoch; the study's best trial is the best objective among the
trials that ran all `max_t` epochs (the trials Optuna holds as COMPLETE); trials stopped early rank
below them, the higher rung first, then by value. Its checkpoint is the one of that epoch.

Every rung epoch and the last epoch must carry a probe, so no decision reads an unmeasured epoch.

A study with a confirm stage (`confirm: {top_k, seeds}`) trains its top-k configs again with other
seeds at the full budget; its best config is then the highest mean over each config's full-budget
runs (`rank_configs`), since one seed's value is as likely lucky as good.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd
from optuna.trial import TrialState

# A confirm run's Tune config names the search trial whose config it trains again under this key.
CONFIRM_OF = "confirm_of"
# What a run reports at every measured epoch (harness/backbone_eval.py, cmd_model/engine.py): the
# metrics a study may select on (`metric`) or compare at ASHA's rungs (`scheduler.rung_metric`).
# The first ones need labels; a study with `eval.label_free` (unlabeled shards) has only the others.
# Evaluation metrics are measured at probed epochs only and reported as NaN at the others.
LABELLED_METRICS = ("probe_top1", "knn_top1", "rank1", "rank5", "map100", "map100_official")
EVAL_METRICS = LABELLED_METRICS + ("rankme",)
EPOCH_METRICS = EVAL_METRICS + ("loss", "loss_image", "loss_region", "loss_mil_student", "loss_mil_teacher",
                                "teacher_entropy", "prototypes_used", "collapse", "grad_norm")


def rung_epochs(grace_period: int, max_t: int, reduction_factor: float) -> list[int]:
    """The epochs at which ASHA records and compares trials, ascending, max_t included.

    Ray 2.60 `_Bracket` (one bracket): int(log(max_t / grace) / log(rf) + 1) rungs at
    grace * rf**k; a trial reaching max_t is stopped there and recorded when it completes.
    """
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    rungs = {int(round(grace_period * reduction_factor ** k)) for k in range(count)}
    return sorted(r for r in rungs | {max_t} if r <= max_t)


def is_probed(epoch: int, probe_every: int, epochs: int) -> bool:
    """Whether the train loop measures the probe after `epoch` (1-based): every `probe_every`
    epochs and always at the last one."""
    return epoch % probe_every == 0 or epoch == epochs


def unprobed_rungs(grace_period: int, max_t: int, reduction_factor: float, probe_every: int) -> list[int]:
    """Rung epochs the probe schedule would leave unmeasured (a study with any is refused)."""
    return [r for r in rung_epochs(grace_period, max_t, reduction_factor)
            if not is_probed(r, probe_every, max_t)]


def rank_trials(trials: pd.DataFrame, metric: str, mode: str, max_t: int) -> pd.DataFrame:
    """Trials best first: full-budget trials by objective, then stopped ones by epochs reached,
    then objective; errored trials and trials without a measured value last."""
    frame = trials.copy()
    sign = -1.0 if mode == "max" else 1.0
    usable = frame[metric].notna() & (frame.get("status", "") != "ERROR")
    frame["_usable"] = usable
    frame["_budget"] = frame["objective_epoch"].clip(upper=max_t).fillna(-1)
    frame["_key"] = sign * frame[metric]
    ordered = frame.sort_values(["_usable", "_budget", "_key"], ascending=[False, False, True],
                                na_position="last", kind="stable")
    return ordered.drop(columns=["_usable", "_budget", "_key"])


def completed(epochs: float, max_t: int) -> bool:
    """A trial completed when it ran all `max_t` epochs; one stopped earlier was pruned."""
    return epochs >= max_t


def measured_step(result: dict[str, Any], metric: str) -> tuple[int, float] | None:
    """(epoch, value) when `result` carries a measured value of `metric` at a whole epoch, else None."""
    value, epoch = result.get(metric), result.get("epoch")
    if value is None or epoch is None or not math.isfinite(value) or not float(epoch).is_integer():
        return None
    return int(epoch), float(value)


def outcome(values: dict[int, float], epochs: float, max_t: int,
            error: bool = False) -> tuple[TrialState, float | None]:
    """How a finished trial is told to Optuna: COMPLETE with the value at its last measured epoch
    when it ran `max_t` epochs, PRUNED when stopped earlier (Optuna keeps its last intermediate
    value), FAIL when it errored or measured nothing."""
    if error or not values:
        return TrialState.FAIL, None
    if completed(epochs, max_t):
        return TrialState.COMPLETE, values[max(values)]
    return TrialState.PRUNED, None


def confirm_runs(ranked: pd.DataFrame, metric: str, top_k: int, seeds: int, base_seed: int,
                 max_t: int) -> list[tuple[str, int]]:
    """(search trial id, run.seed) of each confirm run, given the search trials in the study's
    ranking (`rank_trials`).

    The top `top_k` usable trials are each trained `seeds` more times at the full budget, with
    run.seed base_seed + 1, ..., base_seed + seeds; a candidate that ASHA stopped early is also
    trained once more with its own seed, so every candidate's mean is over 1 + seeds runs of
    max_t epochs."""
    usable = ranked[ranked["status"].ne("ERROR") & ranked[metric].notna()].head(top_k)
    runs = []
    for _, row in usable.iterrows():
        own = [] if completed(row["epochs"], max_t) else [base_seed]
        runs += [(row["trial_id"], seed) for seed in own + list(range(base_seed + 1, base_seed + seeds + 1))]
    return runs


def rank_configs(trials: pd.DataFrame, metric: str, mode: str, max_t: int) -> pd.DataFrame:
    """One row per config (a search trial and the confirm runs of its config), best first.

    Columns: `config_of` (the search trial), `confirmed`, `runs`, `seeds` and `values` of its
    full-budget runs, their `mean` and sample `std` (NaN below two runs). Confirmed configs rank
    first, by mean; the others follow in the trial ranking (`rank_trials`). `trials` needs the
    columns of `rank_trials` plus `seed` and CONFIRM_OF (empty for a search trial).
    """
    frame = rank_trials(trials, metric, mode, max_t)
    is_confirm = frame[CONFIRM_OF].fillna("").astype(str) != ""
    frame["config_of"] = frame[CONFIRM_OF].where(is_confirm, frame["trial_id"])
    full = frame[frame["status"].ne("ERROR") & frame[metric].notna() & frame["objective_epoch"].ge(max_t)]
    confirmed = set(frame.loc[is_confirm, "config_of"])
    rows = []
    for config in frame.loc[~is_confirm, "trial_id"]:
        runs = full[full["config_of"] == config].sort_values("seed")
        values = [float(v) for v in runs[metric]]
        rows.append({"config_of": config, "confirmed": config in confirmed, "runs": len(values),
                     "seeds": [int(s) for s in runs["seed"]], "values": values,
                     "mean": sum(values) / len(values) if values else math.nan,
                     "std": float(pd.Series(values).std()) if len(values) > 1 else math.nan})
    out = pd.DataFrame(rows, columns=["config_of", "confirmed", "runs", "seeds", "values", "mean", "std"])
    best_first = out[out["confirmed"]].sort_values("mean", ascending=mode != "max", kind="stable")
    return pd.concat([best_first, out[~out["confirmed"]]]).reset_index(drop=True)
