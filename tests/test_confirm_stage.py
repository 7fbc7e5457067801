"""The confirm stage in a real Tune run: the top configs are trained again with other seeds, and the
study's best is the highest mean over seeds, so one lucky seed does not win.

A fast function trainable stands in for a trial: its final value is a known function of the config
and the run seed. Config A is lucky once (0.9 with seed 0, 0.2 with seeds 1 and 2),
config B is steady (0.6 with every seed), C is poor; the run of A with seed 2 raises, so A's mean
is over seeds 0 and 1: 0.55.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest
from optuna.trial import TrialState
from ray import tune

from harness.results import collect, write_results
from harness.study_file import load_study
from harness.study_storage import load_trials_study
from harness.tuner import build_tuner
from tests.tiny import write_tiny_study

MAX_T = 2
A, B, C = 1.0, 0.5, 1.5  # loss.mil_weight of the three configs


def value(config: dict) -> float:
    w, seed = config["loss.mil_weight"], config.get("run.seed", 0)
    if w == A:
        return 0.9 if seed == 0 else 0.2
    return 0.6 if w == B else 0.2


def trainable(config: dict) -> None:
    if config["loss.mil_weight"] == A and config.get("run.seed") == 2:
        raise RuntimeError("this confirm run fails")
    for epoch in range(1, MAX_T + 1):
        tune.report({"epoch": epoch, "probe_top1": value(config) - 0.1 * (MAX_T - epoch)})


@pytest.fixture(scope="module")
def confirmed(ray_head, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("confirm")
    points = [{"loss.mil_weight": w, "data.crops.local_crops": 2} for w in (A, B, C)]
    space = write_tiny_study(tmp / "s.yaml", tmp / "no-shards", tmp / "runs", max_t=MAX_T,
                             points_to_evaluate=points,
                             search={"sampler": "random", "num_samples": 3, "max_concurrent": 2, "seed": 0},
                             scheduler={"type": "none", "max_t": MAX_T}, confirm={"top_k": 2, "seeds": 2})
    study = load_study(space)
    folder = tmp / "runs" / "tiny"
    build_tuner(study, str(folder), folder, trainable=trainable).fit()
    trials, curves = collect(study, str(folder), folder)
    best = write_results(study, trials, curves, folder)
    return study, folder, trials, best


def test_best_is_the_highest_mean_over_seeds(confirmed):
    study, folder, trials, best = confirmed
    search = trials[trials["confirm_of"] == ""]
    by_weight = dict(zip(search["loss.mil_weight"], search["trial_id"]))
    assert search["probe_top1"].max() == pytest.approx(0.9)  # the search alone would pick A
    assert best["trial_id"] == by_weight[B]  # the confirm stage picks the steadier B
    assert best["probe_top1"] == pytest.approx(0.6) and best["std"] == pytest.approx(0.0)
    assert best["seeds"] == [0, 1, 2] and best["runs"] == 3
    assert best["checkpoint_seed"] == study.base.run.seed
    assert json.loads((folder / "best.json").read_text())["trial_id"] == by_weight[B]
    frame = pd.read_parquet(folder / "results.parquet")
    a_runs = frame[(frame["confirm_of"] == by_weight[A]) | (frame["trial_id"] == by_weight[A])]
    assert sorted(a_runs["seed"]) == [0, 1, 2]  # the third failed (next test)
    assert frame.loc[frame["trial_id"] == by_weight[A], "config_mean"].item() == pytest.approx(0.55)  # seeds 0, 1
    assert frame.loc[frame["trial_id"] == by_weight[B], "config_mean"].item() == pytest.approx(0.6)
    assert frame.loc[frame["trial_id"] == by_weight[C], "config_runs"].item() == 1  # not a candidate
    assert "(mean of 3 seeds [0, 1, 2]" in (folder / "best_config.yaml").read_text().splitlines()[0]


def test_a_failed_confirm_run_leaves_the_others(confirmed):
    study, folder, trials, best = confirmed
    confirm = trials[trials["confirm_of"] != ""]
    assert len(confirm) == 4  # 2 candidates x 2 seeds, each run once
    failed = confirm[confirm["status"] == "ERROR"]
    assert len(failed) == 1 and failed["seed"].item() == 2
    a = trials.loc[trials["probe_top1"].idxmax(), "trial_id"]
    assert failed["confirm_of"].item() == a
    ot = load_trials_study(folder)
    assert [t.state for t in ot.trials] == [TrialState.COMPLETE] * 3  # confirm runs are not samples
    records = {k: v for k, v in ot.user_attrs.items() if k.startswith("confirm:")}
    assert sorted(r["state"] for r in records.values()) == ["COMPLETE"] * 3 + ["FAIL"]
    planned = {(of, seed) for of, seed in ot.user_attrs["confirm_plan"]}
    assert {(r["confirm_of"], r["seed"]) for r in records.values()} == planned
    assert best["runner_up"]["trial_id"] == a and best["runner_up"]["mean"] == pytest.approx(0.55)
