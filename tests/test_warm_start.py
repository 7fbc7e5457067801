"""Warm starts: exactly the compatible finished trials of an earlier study reach the new study's
Optuna storage, marked inherited and never counted as run; an incompatible study is refused
before Ray."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from harness.config import ConfigError
from harness.study_file import load_study
from harness.study_storage import load_trials_study
from harness.tuner import tune_config
from harness.warm_start import INHERITED, inherit
from tests.tiny import finished_study, write_tiny_study


def new_study(tmp_path: Path, **extra):
    """mil_weight up to 1.0 only; teacher_temp not searched (the base's 0.07)."""
    settings = {"space": {"loss.mil_weight": {"type": "uniform", "low": 0.1, "high": 1.0},
                          "data.crops.local_crops": {"type": "int", "low": 1, "high": 2}},
                "max_t": 2, **extra}
    return load_study(write_tiny_study(tmp_path / "new.yaml", tmp_path / "no-shards", tmp_path / "runs",
                                       **settings))


def test_warm_start_inherits_exactly_the_compatible_trials(tmp_path):
    folder = finished_study(tmp_path)
    study = new_study(tmp_path)
    warm = inherit(str(folder), study)
    kept = sorted((t.params["loss.mil_weight"], t.state, t.value) for t in warm.trials)
    # 1.9 is outside the new space, teacher_temp 0.05 differs from the fixed 0.07, one trial errored
    assert kept == [(0.2, TrialState.COMPLETE, 0.5), (0.8, TrialState.COMPLETE, 0.6), (0.9, TrialState.PRUNED, None)]
    assert all(set(t.params) == {"loss.mil_weight", "data.crops.local_crops"} for t in warm.trials)
    assert sum(warm.dropped.values()) == 2 and "2 left out" in warm.line()
    pruned = next(t for t in warm.trials if t.state == TrialState.PRUNED)
    assert pruned.intermediate_values == {1: 0.3}

    # the new study's storage holds them, marked, and they do not count as run
    folder2 = tmp_path / "runs" / "new"
    searcher = tune_config(study, str(folder2), inherited=warm.trials).search_alg
    searcher.search_trials = 1
    assert searcher.suggest("n0") is not None
    assert searcher.suggest("n1") is None  # one search trial asked for: inherited ones are not counted
    ot = load_trials_study(folder2)
    inherited = [t for t in ot.trials if INHERITED in t.user_attrs]
    assert len(inherited) == 3 and all(str(folder) in t.user_attrs[INHERITED] for t in inherited)
    ran = [t for t in ot.trials if "tune_trial_id" in t.user_attrs]
    assert [t.user_attrs["tune_trial_id"] for t in ran] == ["n0"]


def test_a_study_with_another_budget_inherits_pruned_values(tmp_path):
    folder = finished_study(tmp_path)
    warm = inherit(str(folder), new_study(tmp_path, scheduler={"type": "asha", "max_t": 1, "grace_period": 1,
                                                               "reduction_factor": 2}))
    assert {t.state for t in warm.trials} == {TrialState.PRUNED}
    assert all(set(t.intermediate_values) == {1} for t in warm.trials)


@pytest.mark.parametrize("change,message", [
    ({"metric": "knn_top1"}, "maximize probe_top1"),
    ({"space": {"loss.region_weight": {"type": "uniform", "low": 0.0, "high": 1.0}}, "points_to_evaluate": []},
     "no key in common"),
])
def test_an_incompatible_study_is_refused_before_ray(tmp_path, capsys, no_ray, change, message):
    from harness import tune as tune_cli

    folder = finished_study(tmp_path)
    space = write_tiny_study(tmp_path / "new.yaml", tmp_path / "no-shards", tmp_path / "runs", max_t=2)
    data = yaml.safe_load(space.read_text())
    data.update(change)
    space.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        inherit(str(folder), load_study(space))
    code = tune_cli.main(["--space", str(space), "--no-baseline", "--name", "fresh", "--warm-start", str(folder)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and str(folder) in err[0]
