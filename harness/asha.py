"""ASHA whose rung records survive a restored study, that can compare an earlier signal than the
objective at its rungs, and that never stops a confirm run.

Ray 2.60 saves no scheduler state with a Tune experiment (`TuneController.__getstate__` drops
`_scheduler_alg`), so after `Tuner.restore` ASHA would start with empty rungs and let every
resumed or new trial pass them. Here, when the first restored trial is added, the measured values
of every trial are read back from the study folder and replayed through ASHA's own
`on_trial_result` as each trial is added, which rebuilds the rungs as they were.
"""
from __future__ import annotations

from typing import Any

from ray.tune import ExperimentAnalysis
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from harness.objective import CONFIRM_OF, measured_step


def is_confirm(trial: Any) -> bool:
    """A confirm run (harness/searcher.py): trained at the full budget, outside the rungs."""
    return bool((getattr(trial, "config", None) or {}).get(CONFIRM_OF))


class ResumableASHA(ASHAScheduler):
    def __init__(self, study_uri: str, metric: str, max_t: int, rung_metric: str | None = None,
                 rung_mode: str | None = None, **kwargs: Any) -> None:
        super().__init__(time_attr="epoch", max_t=max_t, **kwargs)  # metric/mode: from TuneConfig
        self.study_uri = study_uri
        self.max_epochs = max_t
        self.rung_metric = rung_metric
        self.rung_mode = rung_mode
        self.objective = rung_metric or metric
        self._history: dict[str, list[tuple[int, float]]] | None = None

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # TuneConfig passes the study's objective; the rungs may compare another reported signal.
        return super().set_search_properties(self.rung_metric or metric, self.rung_mode or mode, **spec)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if is_confirm(trial):
            return
        super().on_trial_add(tune_controller, trial)
        if not trial.has_reported_at_least_once:  # a new trial: nothing to replay
            return
        if self._history is None:
            self._history = measured_history(self.study_uri, self.objective)
        for epoch, value in self._history.pop(trial.trial_id, []):
            if epoch < self.max_epochs:
                self.on_trial_result(tune_controller, trial, {"epoch": epoch, self.objective: value})
            elif trial.status == "TERMINATED":  # reached max_t: recorded as when it completed
                self.on_trial_complete(tune_controller, trial, {"epoch": epoch, self.objective: value})

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if is_confirm(trial):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if not is_confirm(trial):
            super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        if not is_confirm(trial):
            super().on_trial_remove(tune_controller, trial)


def measured_history(study_uri: str, metric: str) -> dict[str, list[tuple[int, float]]]:
    """trial id -> [(epoch, value)] of every measured whole-epoch result in the study folder."""
    from harness.results import epoch_reports

    analysis = ExperimentAnalysis(study_uri)
    history: dict[str, list[tuple[int, float]]] = {}
    for trial in analysis.trials:
        steps = (measured_step(r, metric) for r in epoch_reports(analysis, trial.trial_id).to_dict("records"))
        history[trial.trial_id] = [s for s in steps if s is not None]
    return history
