"""Optuna TPE that knows about ASHA's budgets.

Ray's OptunaSearch tells Optuna that an ASHA-stopped trial is COMPLETE with its short-budget
score, and keys intermediate values on `training_iteration`, which restarts at 0 after a
restore (Ray 2.60). Here intermediate values are keyed on the reported `epoch`, and a trial
that ends before `max_epochs` is told as PRUNED: TPE then ranks it by its intermediate values
below trials that ran the full budget, instead of mistaking it for a final result. Errored or
NaN trials are told as FAIL, so they never look like good (or bad) configs.
"""
from __future__ import annotations

import math
from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch


class BudgetAwareOptunaSearch(OptunaSearch):
    def __init__(self, *args: Any, max_epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric)
        if trial_id in self._completed_trials or value is None or not math.isfinite(value):
            return
        step = int(math.ceil(result.get("epoch", result.get("training_iteration", 0))))
        trial = self._ot_trials[trial_id]
        if step not in trial.storage.get_trial(trial._trial_id).intermediate_values:
            trial.report(value, step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        trial = self._ot_trials[trial_id]
        value = (result or {}).get(self.metric)
        if error or value is None or not math.isfinite(value):
            self._ot_study.tell(trial, None, state=TrialState.FAIL)
        elif result.get("epoch", 0) < self.max_epochs:
            self._ot_study.tell(trial, None, state=TrialState.PRUNED)
        else:
            self._ot_study.tell(trial, value, state=TrialState.COMPLETE)
        self._completed_trials.add(trial_id)
