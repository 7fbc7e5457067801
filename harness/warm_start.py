"""Warm starts: a new study begins with the finished trials of an earlier one, so TPE starts informed.

    python harness/tune.py --space tune_spaces/demo.yaml --name demo-2 --warm-start runs/demo

The earlier study is a study folder (its study.yaml and Optuna journal), a journal file, or a
database URL (`URL#STUDY` when it holds several studies). Its COMPLETE and PRUNED trials are
added to the new study's Optuna storage once, when that is created, marked `inherited_from`:
they inform the sampler but are not Tune trials of the new study, so they are never counted as
run, never ranked in its results, and never its best. A trial is kept only where it fits the new
study: every value of a key both studies search lies in the new space, and a key only the earlier
study searched had the value the new study holds fixed. Trials of a study with another `max_t`
keep their values up to the new `max_t` and are PRUNED. A study with another metric or mode, or
with no searched key in common, is refused before Ray starts.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.config import ConfigError, get_dotted
from harness.searcher import optuna_distribution
from harness.study_file import STUDY_FILE, Study, load_study
from harness.study_storage import JOURNAL, open_storage

INHERITED = "inherited_from"  # user attribute of an inherited trial: where it came from


@dataclass
class WarmStart:
    """What a new study inherits, and what it left out and why."""

    source: str
    trials: list[FrozenTrial] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # reason -> trials

    def line(self) -> str:
        dropped = "; ".join(f"{n} {reason}" for reason, n in self.dropped.most_common())
        return (f"warm start: {len(self.trials)} finished trials inherited from {self.source}"
                + (f" ({sum(self.dropped.values())} left out: {dropped})" if self.dropped else ""))


def _open_source(source: str) -> optuna.Study:
    """The earlier Optuna study: of a study folder (its study.yaml names a database, if any), a
    journal file, or a database URL[#STUDY]."""
    path = Path(source)
    if path.is_dir():
        configured = load_study(path / STUDY_FILE).search.storage if (path / STUDY_FILE).is_file() else None
        return _load(configured or str(path / JOURNAL), path.name)
    location, _, name = source.partition("#")
    return _load(location, name or None)


def _load(location: str, name: str | None) -> optuna.Study:
    if "://" not in location and not Path(location).is_file():
        raise ConfigError(f"--warm-start: {location} does not exist (no Optuna journal in that study folder)")
    storage = open_storage(location)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if name is None:
        if len(names) != 1:
            raise ConfigError(f"--warm-start {location}: holds studies {names}; name one as {location}#NAME")
        name = names[0]
    if name not in names:
        raise ConfigError(f"--warm-start {location}: no study named {name!r} (it holds {names})")
    return optuna.load_study(study_name=name, storage=storage)


def inherit(source: str, study: Study) -> WarmStart:
    """The trials of the study at `source` that `study` can take (module docstring); raises a
    ConfigError for a study it cannot learn from."""
    earlier = _open_source(source)
    told = earlier.user_attrs  # what the harness's searcher records of a study (harness/searcher.py)
    theirs = (told.get("metric", study.metric), earlier.direction.name.lower())
    ours = (study.metric, "maximize" if study.mode == "max" else "minimize")
    if theirs != ours:
        raise ConfigError(f"--warm-start {source}: it searched for {theirs[1]} {theirs[0]}, this study "
                          f"for {ours[1]} {ours[0]}: its values are not this study's objective")
    space = {d.key: d for d in study.space}
    earlier_keys = {k for t in earlier.trials for k in t.params}
    if not earlier_keys & set(space):
        raise ConfigError(f"--warm-start {source}: it searched {sorted(earlier_keys)}, this study "
                          f"{sorted(space)}: no key in common")
    max_t = study.scheduler.max_t
    same_budget = told.get("max_t", max_t) == max_t
    out = WarmStart(source)
    for trial in earlier.trials:
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED) or INHERITED in trial.user_attrs:
            continue
        if trial.user_attrs.get("lost"):
            continue
        reason = _misfit(trial.params, space, study)
        if reason:
            out.dropped[reason] += 1
            continue
        values = {e: v for e, v in trial.intermediate_values.items() if e <= max_t}
        if not values and trial.state == TrialState.PRUNED:
            out.dropped[f"no value at epochs <= {max_t}"] += 1
            continue
        keep = same_budget and trial.state == TrialState.COMPLETE
        params = {k: v for k, v in trial.params.items() if k in space}
        out.trials.append(optuna.trial.create_trial(
            state=TrialState.COMPLETE if keep else TrialState.PRUNED, value=trial.value if keep else None,
            params=params, distributions={k: optuna_distribution(space[k]) for k in params},
            intermediate_values=values,
            user_attrs={INHERITED: f"{source} trial {trial.number}"}))
    return out


def _misfit(params: dict[str, Any], space: dict, study: Study) -> str | None:
    """Why a trial does not fit the new study, or None."""
    for key, value in params.items():
        if key in space and not space[key].contains(value):
            return f"with {key} outside this space"
        if key not in space and get_dotted(study.base, key) != value:
            return f"with {key} != this study's fixed {get_dotted(study.base, key)!r}"
    return None
