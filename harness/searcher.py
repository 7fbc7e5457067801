"""Optuna TPE as a Ray Tune searcher that hears every measured value, on Optuna's public API.

Ray's OptunaSearch misses what multi-fidelity search needs (Ray 2.60, RAY_NOTES.md "Tune's
decisions"): the result that makes ASHA stop a trial never reaches `on_trial_result`, a stopped
trial is told COMPLETE with its short-budget score, intermediate values are keyed on
`training_iteration` (which restarts at 0 after a restore), and behind Tune's ConcurrencyLimiter
a retried errored trial's completion is dropped. Here:

- every finite objective value of an integral epoch is an Optuna intermediate value keyed on
  that epoch, including the one that triggered the stop (taken from `on_trial_complete`);
- a trial that ran `max_epochs` is told COMPLETE with its last value (harness/objective.py), one
  stopped earlier PRUNED (TPE ranks pruned trials by their highest rung, then value), an errored
  or NaN one FAIL;
- concurrency is limited here (`set_max_concurrency` returns True, so Tune's limiter passes every
  call through), and a retried trial that was told FAIL, or a restored trial this searcher never
  suggested, is added with its outcome;
- the whole state (the Optuna study with its sampler) is pickled by Tune with the experiment, so
  a restored study keeps its memory.
"""
from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from harness.study_file import Dist


def optuna_distribution(d: Dist) -> BaseDistribution:
    """The Optuna distribution of one searched key (int bounds inclusive, as in the study file)."""
    if d.type == "choice":
        return CategoricalDistribution(d.values)
    if d.type == "int":
        return IntDistribution(int(d.low), int(d.high))
    return FloatDistribution(d.low, d.high, log=d.type == "loguniform")


def measured_step(result: dict[str, Any], metric: str) -> tuple[int, float] | None:
    """(epoch, value) when `result` carries a measured objective at a whole epoch, else None."""
    value, epoch = result.get(metric), result.get("epoch")
    if value is None or epoch is None or not math.isfinite(value) or not float(epoch).is_integer():
        return None
    return int(epoch), float(value)


def outcome(values: dict[int, float], epochs: float, max_epochs: int,
            error: bool = False) -> tuple[TrialState, float | None]:
    """How a finished trial is told to Optuna: COMPLETE with the value at its last measured epoch
    when it ran `max_epochs` (harness/objective.py), PRUNED when stopped earlier, FAIL when it
    errored or measured nothing."""
    if error or not values:
        return TrialState.FAIL, None
    if epochs >= max_epochs:
        return TrialState.COMPLETE, values[max(values)]
    return TrialState.PRUNED, None


class BudgetAwareOptunaSearch(Searcher):
    """TPE over the study's space; see the module docstring for what it is told and when."""

    def __init__(self, space: list[Dist], metric: str, mode: str, max_epochs: int,
                 points_to_evaluate: list[dict[str, Any]] | None = None,
                 sampler: optuna.samplers.BaseSampler | None = None, max_concurrent: int = 1) -> None:
        super().__init__(metric=metric, mode=mode)
        self.max_epochs = max_epochs
        self.max_concurrent = max_concurrent
        self._distributions = {d.key: optuna_distribution(d) for d in space}
        self._study = optuna.create_study(direction="maximize" if mode == "max" else "minimize",
                                          sampler=sampler or optuna.samplers.TPESampler())
        for point in points_to_evaluate or []:
            self._study.enqueue_trial(point)
        self._live: dict[str, optuna.Trial] = {}  # Tune trial id -> its running Optuna trial
        self._params: dict[str, dict[str, Any]] = {}  # every Tune trial's sampled values
        self._values: dict[str, dict[int, float]] = {}  # every Tune trial's measured values by epoch

    @property
    def study(self) -> optuna.Study:
        """What Optuna holds: the trials, their states, values and intermediate values."""
        return self._study

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        # The space comes from the study file (the same Dists that built `config`).
        return True

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if len(self._live) >= self.max_concurrent:
            return None
        trial = self._study.ask(self._distributions)
        trial.set_user_attr("tune_trial_id", trial_id)
        self._live[trial_id] = trial
        self._params[trial_id] = dict(trial.params)
        return dict(trial.params)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._record(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        self._record(trial_id, result or {})  # Tune never passes a stopping result to on_trial_result
        if trial_id not in self._params:
            return
        values = self._values.get(trial_id, {})
        epochs = (result or {}).get("epoch", max(values) if values else 0)
        state, value = outcome(values, epochs, self.max_epochs, error)
        trial = self._live.pop(trial_id, None)
        if trial is not None:
            self._study.tell(trial, value, state=state)
        else:  # a trial told before (e.g. FAIL) and run again with --retry-errored
            self._study.add_trial(optuna.trial.create_trial(
                state=state, value=value, params=self._params[trial_id],
                distributions=self._distributions, intermediate_values=dict(values),
                user_attrs={"tune_trial_id": trial_id, "retried": True}))

    def _record(self, trial_id: str, result: dict[str, Any]) -> None:
        config = result.get("config") or {}
        if trial_id not in self._params and set(self._distributions) <= set(config):
            # A trial this searcher never suggested: Tune restored it from an experiment state
            # saved after the searcher's own state (a kill between the two saves).
            self._params[trial_id] = {key: config[key] for key in self._distributions}
        step = measured_step(result, self.metric)
        if step is None or trial_id not in self._params:
            return
        epoch, value = step
        values = self._values.setdefault(trial_id, {})
        if epoch in values:
            return
        values[epoch] = value
        if trial_id in self._live:
            self._live[trial_id].report(value, epoch)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def load_search_state(study_dir: str | Path) -> optuna.Study:
    """The Optuna study the searcher held when Tune last saved the study folder (its newest
    `searcher-state-*.pkl`): what Optuna was told, for reports and checks."""
    # Named by the session's start time; syncing gives the files equal mtimes, so sort by name.
    states = sorted(Path(study_dir).glob("searcher-state-*.pkl"))
    if not states:
        raise FileNotFoundError(f"{study_dir}: no searcher-state-*.pkl (not a TPE study folder)")
    with open(states[-1], "rb") as f:
        return pickle.load(f)["_study"]
