"""Optuna (TPE or random) as a Ray Tune searcher that hears every measured value, keeps its trials
in a durable Optuna storage, and ends the study with a confirm stage.

Ray's OptunaSearch misses what multi-fidelity search needs (Ray 2.60; docs/ray-notes.md): the
result that makes ASHA stop a trial never reaches `on_trial_result`, a stopped trial is told
COMPLETE with its short-budget score, intermediate values are keyed on `training_iteration` (which
restarts at 0 after a restore), and behind Tune's ConcurrencyLimiter a retried errored trial's
completion is dropped. Here:

- every finite objective value of an integral epoch is an Optuna intermediate value keyed on
  that epoch, including the one that triggered the stop (taken from `on_trial_complete`);
- a trial is told as harness/objective.py `outcome` says (COMPLETE, PRUNED or FAIL); TPE ranks
  pruned trials by their highest rung, then value;
- concurrency is limited here (`set_max_concurrency` returns True, so Tune's limiter passes every
  call through), and a retried trial that was told FAIL is added again with its new outcome;
- the trials live in an Optuna storage (harness/study_storage.py) that is written as they happen:
  it is the one record of what Optuna was told, read by the results, the report, optuna-dashboard
  and warm starts. Tune pickles only the sampler (its random state) and which trials Tune has
  been given, so a restored study tells no trial twice and retires trials Tune never saw;
- after `search_trials` trials the confirm stage (harness/objective.py `confirm_runs`) suggests
  the top configs again with other run seeds, once every search trial has ended. Confirm runs are
  Tune trials of the same study, kept in the storage as study attributes (`confirm:<trial id>`),
  not as Optuna trials: they are not samples, and TPE has nothing left to propose.
"""
from __future__ import annotations

import math
from typing import Any

import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from harness.objective import CONFIRM_OF, completed, confirm_runs, measured_step, outcome, rank_trials
from harness.study_file import Dist
from harness.study_storage import open_storage

TUNE_ID = "tune_trial_id"  # the Optuna trial's user attribute naming its Tune trial
CONFIRM_ATTR = "confirm:"  # study attribute prefix of a confirm run's record


def optuna_distribution(d: Dist) -> BaseDistribution:
    """The Optuna distribution of one searched key (int bounds inclusive, as in the study file)."""
    if d.type == "choice":
        return CategoricalDistribution(d.values)
    if d.type == "int":
        return IntDistribution(int(d.low), int(d.high))
    return FloatDistribution(d.low, d.high, log=d.type == "loguniform")


class BudgetAwareOptunaSearch(Searcher):
    """Optuna over the study's space; see the module docstring for what it is told and when."""

    def __init__(self, space: list[Dist], metric: str, mode: str, max_epochs: int, storage: str | None,
                 study_name: str, points_to_evaluate: list[dict[str, Any]] | None = None,
                 sampler: optuna.samplers.BaseSampler | None = None, max_concurrent: int = 1,
                 search_trials: int | None = None, confirm: tuple[int, int] = (0, 0),
                 base_seed: int = 0, inherited: list[optuna.trial.FrozenTrial] | None = None) -> None:
        super().__init__(metric=metric, mode=mode)
        self.max_epochs = max_epochs
        self.max_concurrent = max_concurrent
        self.storage = storage
        self.study_name = study_name
        self.search_trials = search_trials
        self.confirm = confirm  # (top_k, extra seeds per config)
        self.base_seed = base_seed
        self._points = list(points_to_evaluate or [])
        self._inherited = list(inherited or [])  # a warm start's trials (harness/warm_start.py)
        self._sampler = sampler or optuna.samplers.TPESampler()
        self._distributions = {d.key: optuna_distribution(d) for d in space}
        self._given: set[str] = set()  # Tune trial ids suggested to Tune (pickled with Tune's state)
        self._study: optuna.Study | None = None

    # -- the storage ---------------------------------------------------------------------------

    @property
    def study(self) -> optuna.Study:
        """The Optuna study in its storage (None: in memory, for replays), opened on first use."""
        if self._study is None:
            self._study = optuna.create_study(
                storage=open_storage(self.storage, writer=True) if self.storage else None,
                study_name=self.study_name,
                direction="maximize" if self.mode == "max" else "minimize", sampler=self._sampler,
                load_if_exists=True)
            if not self._study.trials and not self._study.user_attrs:  # a new study
                for key, value in (("metric", self.metric), ("mode", self.mode), ("max_t", self.max_epochs)):
                    self._study.set_user_attr(key, value)
                self._study.add_trials(self._inherited)
                for point in self._points:
                    self._study.enqueue_trial(point)
            self._rebuild()
        return self._study

    def _rebuild(self) -> None:
        """The in-memory views of the storage, by Tune trial id: the running Optuna trials, and each
        Optuna trial's number, state, params and measured values (a retried trial has two)."""
        self._live: dict[str, optuna.Trial] = {}
        self._trials: dict[str, list[dict[str, Any]]] = {}
        self._values: dict[str, dict[int, float]] = {}
        self._params: dict[str, dict[str, Any]] = {}
        for frozen in self._study.get_trials(deepcopy=False):
            tid = frozen.user_attrs.get(TUNE_ID)
            if tid is None:  # an inherited trial (warm start): not run here
                continue
            self._note(tid, frozen.number, frozen.state, frozen.user_attrs)
            self._values[tid] = dict(frozen.intermediate_values)
            self._params[tid] = dict(frozen.params)
            if frozen.state == TrialState.RUNNING:
                self._live[tid] = optuna.Trial(self._study, frozen._trial_id)

    def _note(self, tid: str, number: int, state: TrialState, attrs: dict[str, Any]) -> None:
        self._trials.setdefault(tid, []).append({"number": number, "state": state,
                                                 "search": not attrs.get("retried") and not attrs.get("lost")})

    def _confirm_records(self) -> dict[str, dict[str, Any]]:
        return {k[len(CONFIRM_ATTR):]: v for k, v in self.study.user_attrs.items() if k.startswith(CONFIRM_ATTR)}

    def _set_confirm(self, trial_id: str, record: dict[str, Any]) -> None:
        self.study.set_user_attr(f"{CONFIRM_ATTR}{trial_id}", record)

    # -- Tune's Searcher API -------------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        # The space comes from the study file (the same Dists that built `config`).
        return True

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        study = self.study
        confirms = self._confirm_records()
        running = len(self._live) + sum(r["state"] == "RUNNING" for r in confirms.values())
        if running >= self.max_concurrent:
            return None
        searched = sum(t["search"] for trials in self._trials.values() for t in trials)
        if self.search_trials is None or searched < self.search_trials:
            trial = study.ask(self._distributions)
            trial.set_user_attr(TUNE_ID, trial_id)
            self._live[trial_id] = trial
            self._note(trial_id, trial.number, TrialState.RUNNING, {})
            self._params[trial_id] = dict(trial.params)
            self._given.add(trial_id)
            return dict(trial.params)
        return self._suggest_confirm(trial_id, confirms)

    def _suggest_confirm(self, trial_id: str, confirms: dict[str, dict[str, Any]]) -> dict[str, Any] | str | None:
        """The next confirm run, None while search trials still run, FINISHED when all were given."""
        if self._live:
            return None
        plan = self.study.user_attrs.get("confirm_plan")
        if plan is None:
            plan = [list(run) for run in confirm_runs(self._search_ranking(), self.metric, *self.confirm,
                                                      self.base_seed, self.max_epochs)]
            self.study.set_user_attr("confirm_plan", plan)
        given = {(r[CONFIRM_OF], r["seed"]) for r in confirms.values() if r["state"] != "LOST"}
        left = [(of, seed) for of, seed in plan if (of, seed) not in given]
        if not left:
            return Searcher.FINISHED
        of, seed = left[0]
        self._set_confirm(trial_id, {CONFIRM_OF: of, "seed": seed, "state": "RUNNING", "value": None})
        self._given.add(trial_id)
        return {**self._params[of], "run.seed": seed, CONFIRM_OF: of}

    def _search_ranking(self) -> pd.DataFrame:
        """The search trials as the study ranks them (harness/objective.py `rank_trials`)."""
        rows = []
        for tid, trials in self._trials.items():
            last = trials[-1]
            values = self._values.get(tid, {})
            if last["state"] == TrialState.FAIL and not last["search"]:
                continue  # lost: never run
            rows.append({"trial_id": tid, "status": "ERROR" if last["state"] == TrialState.FAIL else "TERMINATED",
                         self.metric: values[max(values)] if values else math.nan,
                         "objective_epoch": max(values) if values else math.nan,
                         "epochs": self.max_epochs if last["state"] == TrialState.COMPLETE else
                         (max(values) if values else 0), "number": last["number"]})
        columns = ["trial_id", "status", self.metric, "objective_epoch", "epochs", "number"]
        frame = pd.DataFrame(rows, columns=columns).sort_values("number", kind="stable")
        return rank_trials(frame, self.metric, self.mode, self.max_epochs)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._record(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        result = result or {}
        confirms = self._confirm_records()
        if trial_id in confirms:
            step = measured_step(result, self.metric)
            done = not error and step is not None and completed(step[0], self.max_epochs)
            self._set_confirm(trial_id, {**confirms[trial_id], "state": "COMPLETE" if done else "FAIL",
                                         "value": step[1] if done else None})
            return
        self._record(trial_id, result)  # Tune never passes a stopping result to on_trial_result
        if trial_id not in self._params:
            return
        values = self._values.get(trial_id, {})
        epochs = result.get("epoch", max(values) if values else 0)
        state, value = outcome(values, epochs, self.max_epochs, error)
        trial = self._live.pop(trial_id, None)
        if trial is not None:
            self.study.tell(trial, value, state=state)
            self._trials[trial_id][-1]["state"] = state
        elif self._trials[trial_id][-1]["state"] == TrialState.FAIL and state != TrialState.FAIL:
            # a trial told FAIL and run again with --retry-errored: a new Optuna trial with its outcome
            added = optuna.trial.create_trial(
                state=state, value=value, params=self._params[trial_id],
                distributions=self._distributions, intermediate_values=dict(values),
                user_attrs={TUNE_ID: trial_id, "retried": True})
            self.study.add_trial(added)
            self._note(trial_id, len(self.study.trials) - 1, state, added.user_attrs)
        # else: told before; a restored Tune study re-reported a trial the storage already holds

    def _record(self, trial_id: str, result: dict[str, Any]) -> None:
        self.study  # noqa: B018  (opens the storage and its views)
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

    # -- Tune's save and restore ---------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """What Tune pickles: settings, the sampler and the ids given to Tune; never the storage."""
        views = ("_study", "_live", "_trials", "_values", "_params", "_inherited")
        return {**{k: v for k, v in self.__dict__.items() if k not in views}, "_study": None}

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        """Tune's saved position, then the storage: a trial the storage holds as running but Tune was
        never given (the driver died between the two saves) is told FAIL (search) or LOST (confirm,
        suggested again)."""
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self._study = None
        study = self.study
        for tid in [t for t in self._live if t not in self._given]:
            lost = self._live.pop(tid)
            lost.set_user_attr("lost", True)
            study.tell(lost, state=TrialState.FAIL)
        for tid, record in self._confirm_records().items():
            if record["state"] == "RUNNING" and tid not in self._given:
                self._set_confirm(tid, {**record, "state": "LOST"})
        self._rebuild()
