"""ASHA whose rung records survive a restored study.

Ray 2.60 saves no scheduler state with a Tune experiment (`TuneController.__getstate__` drops
`_scheduler_alg`), so after `Tuner.restore` ASHA would start with empty rungs and let every
resumed or new trial pass them. Here, when the first restored trial is added, the measured values
of every trial are read back from the study folder and replayed through ASHA's own
`on_trial_result` as each trial is added, which rebuilds the rungs as they were.
"""
from __future__ import annotations

from typing import Any

from ray.tune import ExperimentAnalysis
from ray.tune.schedulers import ASHAScheduler

from harness.searcher import measured_step


class ResumableASHA(ASHAScheduler):
    def __init__(self, study_uri: str, metric: str, max_t: int, **kwargs: Any) -> None:
        super().__init__(time_attr="epoch", max_t=max_t, **kwargs)  # metric/mode: from TuneConfig
        self.study_uri = study_uri
        self.max_epochs = max_t
        self.objective = metric
        self._history: dict[str, list[tuple[int, float]]] | None = None

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
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


def measured_history(study_uri: str, metric: str) -> dict[str, list[tuple[int, float]]]:
    """trial id -> [(epoch, value)] of every measured whole-epoch result in the study folder."""
    from harness.results import epoch_reports

    analysis = ExperimentAnalysis(study_uri)
    history: dict[str, list[tuple[int, float]]] = {}
    for trial in analysis.trials:
        steps = (measured_step(r, metric) for r in epoch_reports(analysis, trial.trial_id).to_dict("records"))
        history[trial.trial_id] = [s for s in steps if s is not None]
    return history
