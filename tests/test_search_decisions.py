"""What the searcher and ASHA are told in a real Tune run, and that ASHA's rungs survive a restore.

A fast function trainable stands in for a trial (its curve is a known function of the config), so
the test runs the study's own TuneConfig (BudgetAwareOptunaSearch + ResumableASHA) in seconds.
Epoch 3 carries no probe (NaN), as a train loop reports an unprobed epoch.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from optuna.trial import TrialState
from ray import tune

from harness.asha import ResumableASHA
from harness.objective import measured_step
from harness.results import epoch_reports
from harness.study_file import load_study
from harness.study_storage import load_trials_study
from harness.tuner import tune_config
from tests.tiny import write_tiny_study

MAX_T = 4  # rungs at epochs 1, 2 and 4 (grace 1, reduction factor 2)


def curve(config: dict) -> None:
    """A deterministic learning curve: some configs rise, some peak early and fall."""
    w, n = config["loss.mil_weight"], config["data.crops.local_crops"]
    for epoch in range(1, MAX_T + 1):
        value = 0.3 + 0.2 * math.sin(3 * w) * epoch / MAX_T + 0.05 * n - 0.02 * (epoch - 2) ** 2 * (w > 1)
        tune.report({"epoch": epoch, "probe_top1": value if epoch != 3 else float("nan")})


def run_study(tmp_path: Path, samples: int) -> tuple[Path, object]:
    space = write_tiny_study(tmp_path / "s.yaml", tmp_path / "no-shards", tmp_path / "runs",
                             num_samples=samples, max_t=MAX_T,
                             search={"sampler": "tpe", "num_samples": samples, "max_concurrent": 2,
                                     "seed": 3, "startup_trials": 3},
                             scheduler={"type": "asha", "max_t": MAX_T, "grace_period": 1, "reduction_factor": 2})
    study = load_study(space)
    uri = str(tmp_path / "runs" / "tiny")
    config = tune_config(study, uri)
    tuner = tune.Tuner(curve, param_space={d.key: d.tune_domain() for d in study.space}, tune_config=config,
                       run_config=tune.RunConfig(name="tiny", storage_path=str(tmp_path / "runs"), verbose=0))
    tuner.fit()
    return Path(uri), config.scheduler


def measured(uri: Path) -> dict[str, dict[int, float]]:
    analysis = tune.ExperimentAnalysis(str(uri))
    out = {}
    for trial in analysis.trials:
        steps = [measured_step(r, "probe_top1") for r in epoch_reports(analysis, trial.trial_id).to_dict("records")]
        out[trial.trial_id] = dict(s for s in steps if s is not None)
    return out


def test_optuna_is_told_every_rung_value_and_asha_rungs_rebuild(ray_head, tmp_path):
    uri, live_asha = run_study(tmp_path, samples=10)
    values = measured(uri)
    ot = load_trials_study(uri)
    by_tune_id = {t.user_attrs["tune_trial_id"]: t for t in ot.trials}

    assert set(by_tune_id) == set(values) and len(ot.trials) == len(values)  # one Optuna trial per trial
    pruned = 0
    for tid, vals in values.items():
        trial = by_tune_id[tid]
        assert 3 not in trial.intermediate_values  # the unprobed epoch never reaches Optuna
        assert trial.intermediate_values == vals  # every measured value, the stopping one included
        if max(vals) == MAX_T:
            assert trial.state == TrialState.COMPLETE and trial.value == vals[MAX_T]
        else:
            assert trial.state == TrialState.PRUNED  # Optuna keeps its last intermediate value
            assert trial.value == vals[max(vals)]
            pruned += 1
    assert pruned >= 2, "ASHA stopped too few trials for the test to mean anything"
    best = max((t for t in ot.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert ot.best_trial.number == best.number

    # A restored study: ASHA rebuilt from the folder holds the rungs the live one held.
    rebuilt = ResumableASHA(str(uri), "probe_top1", max_t=MAX_T, grace_period=1, reduction_factor=2)
    rebuilt.set_search_properties("probe_top1", "max")
    for trial in tune.ExperimentAnalysis(str(uri)).trials:
        rebuilt.on_trial_add(None, trial)
    assert rebuilt.debug_string().splitlines()[1:] == live_asha.debug_string().splitlines()[1:]
    assert "None" not in live_asha.debug_string()  # every rung had records


@pytest.mark.parametrize("every,ok", [(1, True), (2, False), (3, False)])
def test_study_refuses_rungs_without_probe(tmp_path, capsys, no_ray, every, ok):
    from harness import tune as tune_cli

    space = write_tiny_study(tmp_path / "s.yaml", tmp_path / "no-shards", tmp_path / "runs", max_t=MAX_T,
                             scheduler={"type": "asha", "max_t": MAX_T, "grace_period": 1, "reduction_factor": 2})
    if ok:
        load_study(space, {"eval.probe_every": every})
        return
    code = tune_cli.main(["--space", str(space), f"eval.probe_every={every}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "eval.probe_every" in err[0] and "[1, 2, 4]" in err[0] and str(space) in err[0]
    assert f"epoch(s) {[r for r in (1, 2) if r % every]}" in err[0]


def test_retried_errored_trial_reaches_optuna_through_tunes_limiter(tmp_path):
    """--retry-errored: a trial told FAIL runs again under the same id; Tune wraps the searcher in
    its ConcurrencyLimiter (max_concurrent_trials), which drops completions of trials it no longer
    tracks unless the searcher limits concurrency itself."""
    from ray.tune.search import ConcurrencyLimiter

    space = write_tiny_study(tmp_path / "s.yaml", tmp_path / "no-shards", tmp_path / "runs", max_t=2,
                             search={"sampler": "tpe", "num_samples": 4, "max_concurrent": 2, "seed": 0})
    searcher = ConcurrencyLimiter(tune_config(load_study(space), str(tmp_path)).search_alg, max_concurrent=2)
    first, second = searcher.suggest("a"), searcher.suggest("b")
    assert first and second and searcher.suggest("c") is None  # the limit holds
    searcher.on_trial_result("a", {"epoch": 1, "probe_top1": 0.4})
    searcher.on_trial_complete("a", error=True)
    searcher.on_trial_complete("b", {"epoch": 2, "probe_top1": 0.5})
    # the restored study runs "a" again from its checkpoint; it finishes this time
    searcher.on_trial_result("a", {"epoch": 2, "probe_top1": 0.6})
    searcher.on_trial_complete("a", {"epoch": 2, "probe_top1": 0.6})
    study = searcher.searcher.study
    states = [(t.user_attrs["tune_trial_id"], t.state, t.value, t.intermediate_values) for t in study.trials]
    assert states == [("a", TrialState.FAIL, None, {1: 0.4}),
                      ("b", TrialState.COMPLETE, 0.5, {2: 0.5}),
                      ("a", TrialState.COMPLETE, 0.6, {1: 0.4, 2: 0.6})]
    assert study.trials[2].params == study.trials[0].params == first
    assert study.best_trial.user_attrs["tune_trial_id"] == "a"


def test_restore_retires_trials_tune_was_never_given(tmp_path):
    """The storage is written at each suggestion, Tune's state every few seconds: a driver killed in
    between leaves a running Optuna trial (or confirm run) that Tune never heard of. Restored from
    Tune's saved position, the searcher tells it FAIL (marked lost) and suggests a new one."""
    space = write_tiny_study(tmp_path / "s.yaml", tmp_path / "no-shards", tmp_path / "runs", max_t=2,
                             search={"sampler": "random", "num_samples": 2, "max_concurrent": 2, "seed": 0},
                             confirm={"top_k": 1, "seeds": 1})
    study = load_study(space)
    searcher = tune_config(study, str(tmp_path / "tiny")).search_alg
    searcher.suggest("a")
    searcher.save(str(tmp_path / "saved.pkl"))  # Tune's position: it knows "a"
    searcher.suggest("b")  # in the storage, never in Tune's saved state
    restored = tune_config(study, str(tmp_path / "tiny")).search_alg
    restored.restore(str(tmp_path / "saved.pkl"))
    told = {t.user_attrs["tune_trial_id"]: t for t in restored.study.trials}
    assert told["a"].state == TrialState.RUNNING
    assert told["b"].state == TrialState.FAIL and told["b"].user_attrs["lost"]
    assert restored.suggest("c") is not None  # the lost trial does not count as searched
    restored.on_trial_complete("a", {"epoch": 2, "probe_top1": 0.5})
    restored.on_trial_complete("c", {"epoch": 2, "probe_top1": 0.4})
    confirm = restored.suggest("d")
    assert confirm["confirm_of"] == "a" and confirm["run.seed"] == 1
    restored.save(str(tmp_path / "saved2.pkl"))
    assert restored.suggest("e") == "FINISHED"  # one candidate x one seed: nothing left
    again = tune_config(study, str(tmp_path / "tiny")).search_alg
    again.restore(str(tmp_path / "saved.pkl"))  # a position from before "d": the confirm run is lost
    assert again.study.user_attrs["confirm:d"]["state"] == "LOST"
    assert again.suggest("f") == {**confirm}  # and suggested again under a new id
    assert again.study.user_attrs["confirm:f"]["state"] == "RUNNING"


def test_asha_compares_the_rung_metric_and_never_stops_a_confirm_run():
    """At its rung, ASHA ranks by `scheduler.rung_metric` (here knn_top1, which disagrees with the
    objective), and a confirm run passes every rung."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    asha = ResumableASHA("unused", "probe_top1", max_t=4, rung_metric="knn_top1", grace_period=1,
                         reduction_factor=2)
    asha.set_search_properties("probe_top1", "max")  # what TuneConfig passes
    trials = [SimpleNamespace(trial_id=t, config={}, has_reported_at_least_once=False) for t in "abc"]
    confirm = SimpleNamespace(trial_id="d", config={"confirm_of": "a"}, has_reported_at_least_once=False)
    for trial in [*trials, confirm]:
        asha.on_trial_add(None, trial)
    # probe says a > b; knn says b > a: at rung 1 (keep the top half) ASHA follows knn
    assert asha.on_trial_result(None, trials[0], {"epoch": 1, "probe_top1": 0.9, "knn_top1": 0.5}) == "CONTINUE"
    assert asha.on_trial_result(None, trials[1], {"epoch": 1, "probe_top1": 0.1, "knn_top1": 0.8}) == "CONTINUE"
    assert asha.on_trial_result(None, trials[2], {"epoch": 1, "probe_top1": 0.95, "knn_top1": 0.2}) == \
        TrialScheduler.STOP
    assert asha.on_trial_result(None, confirm, {"epoch": 1, "probe_top1": 0.0, "knn_top1": 0.0}) == "CONTINUE"
    assert asha.on_trial_result(None, confirm, {"epoch": 4, "probe_top1": 0.0, "knn_top1": 0.0}) == "CONTINUE"
