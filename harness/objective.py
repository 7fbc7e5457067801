"""The study's one objective, defined once for ASHA, Optuna, the results table and best.json.

The objective of a trial is its metric (`probe_top1`: the linear probe of the frozen teacher on
the validation split) at the trial's last measured epoch. Trials are compared at equal budgets:
ASHA compares the values at a rung epoch; the study's best trial is the best objective among the
trials that ran all `max_t` epochs (the trials Optuna holds as COMPLETE); trials stopped early rank
below them, the higher rung first, then by value. Its checkpoint is the one of that epoch.

Every rung epoch and the last epoch must carry a probe, so no decision reads an unmeasured epoch.
"""
from __future__ import annotations

import math

import pandas as pd


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
