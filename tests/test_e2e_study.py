"""End to end on a real Ray head: train.py resume, a 2-trial study, and `ray job submit`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.config import build_config, load_config
from harness.objective import EPOCH_METRICS
from harness.study_storage import load_trials_study
from tests.test_console_output import assert_train_prints_each_epoch_once
from tests.tiny import tiny_base, write_tiny_study

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run_cli(args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def epoch_history(run_dir: Path) -> list[dict]:
    """Per-epoch metrics stored in the run's latest checkpoint."""
    states = sorted(run_dir.glob("checkpoint_*/state.pt"))
    state = torch.load(max(states, key=lambda p: p.stat().st_mtime), weights_only=True)
    return state["history"]


def test_train_resume_matches_uninterrupted_run(ray_head, demo_shards, tmp_path):
    from harness.train import run

    base = tiny_base(demo_shards)
    base["run"] = {"storage": str(tmp_path)}
    full = run(build_config(base, {"optim.epochs": 2}), "full")
    run(build_config(base, {"optim.epochs": 2, "run.stop_after_epoch": 1}), "resumed")
    resumed = run(build_config(base, {"optim.epochs": 2}), "resumed")  # continues at epoch 2

    assert full["epoch"] == resumed["epoch"] == 2
    again = run(build_config(base, {"optim.epochs": 2}), "full")  # a finished run, rerun
    assert again["epoch"] == 2 and again["probe_top1"] == full["probe_top1"]
    assert list((tmp_path / "full" / "tensorboard").glob("events.out.tfevents.*"))
    a, b = epoch_history(tmp_path / "full"), epoch_history(tmp_path / "resumed")
    assert len(a) == len(b) == 2
    for key in ("loss", "loss_image", "loss_region", "loss_mil_student", "probe_top1"):
        assert a[1][key] == pytest.approx(b[1][key], rel=1e-5, abs=1e-6), key


def test_tune_study_writes_dataframe_and_best_config(ray_head, demo_shards, tmp_path):
    mlruns = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a local MLflow store
    space = write_tiny_study(tmp_path / "tiny.yaml", demo_shards, tmp_path / "runs", num_samples=2,
                             trackers={"mlflow": {"tracking_uri": mlruns}})
    proc = run_cli(["harness/tune.py", "--space", str(space)], ray_head.env)
    assert "random-init backbone: probe_top1" in proc.stdout
    folder = tmp_path / "runs" / "tiny"
    frame = pd.read_parquet(folder / "results.parquet")
    assert len(frame) == 2
    assert frame["probe_top1"].between(0, 1).all()
    assert set(frame["stop_reason"]) <= {"completed", "early_stopped"}
    assert {"loss.mil_weight", "data.crops.local_crops", "objective_epoch", "split", "checkpoint_path"} <= set(frame)
    assert pd.read_csv(folder / "results.csv")["trial_id"].tolist() == frame["trial_id"].tolist()
    best = json.loads((folder / "best.json").read_text())
    assert best["trial_id"] == frame["trial_id"].iloc[0]  # results are ranked by the one objective
    assert best["split"] == "val" and best["probe_top1"] == frame["probe_top1"].iloc[0]
    assert load_trials_study(folder).best_trial.user_attrs["tune_trial_id"] == best["trial_id"]  # Optuna agrees
    assert Path(best["checkpoint_path"]).is_dir()
    reports = [json.loads(line) for line in next(folder.glob("trial_driver_*/result.json")).read_text().splitlines()]
    assert set(EPOCH_METRICS) <= set(reports[-1])  # every metric a study may select or rung on is reported

    assert len(list(folder.glob("trial_driver_*/events.out.tfevents.*"))) == 2  # TensorBoard, always
    import mlflow

    mlflow.set_tracking_uri(mlruns)
    runs = mlflow.search_runs(experiment_names=["tiny"])
    assert len(runs) == 2 and runs["metrics.probe_top1"].between(0, 1).all()

    for plot in ("learning_curves", "accuracy_vs_compute", "optimization_history"):
        (folder / "plots" / f"{plot}.png").unlink()
    run_cli(["-m", "harness.report", str(folder)], ray_head.env)  # rebuilds files and plots
    assert (folder / "plots" / "learning_curves.png").is_file()
    assert (folder / "plots" / "accuracy_vs_compute.html").is_file()
    assert (folder / "plots" / "optimization_history.png").is_file()

    cfg = load_config(folder / "best_config.yaml")  # a full training config, as train.py takes it
    assert cfg.loss.mil_weight == pytest.approx(best["params"]["loss.mil_weight"])
    out = run_cli(["harness/train.py", "--config", str(folder / "best_config.yaml"), "--name", "again",
                   f"run.storage={tmp_path / 'again'}"], ray_head.env)
    assert "[train] done: probe_top1" in out.stdout
    assert_train_prints_each_epoch_once(out, cfg.optim.epochs)


def test_best_json_names_the_kept_checkpoint_of_the_measured_epoch(ray_head, demo_shards, tmp_path):
    """A trial whose last measured epoch (3) is not its last epoch (5): unprobed epochs report no
    value, the objective is epoch 3's, and its checkpoint survives Train's num_to_keep."""
    space = write_tiny_study(tmp_path / "tiny.yaml", demo_shards, tmp_path / "runs", num_samples=1, max_t=6,
                             scheduler={"type": "asha", "max_t": 6, "grace_period": 3, "reduction_factor": 2})
    run_cli(["harness/tune.py", "--space", str(space), "--no-baseline", "eval.probe_every=3",
             "run.stop_after_epoch=5"], ray_head.env)
    folder = tmp_path / "runs" / "tiny"
    curves = pd.read_parquet(folder / "curves.parquet").set_index("epoch")
    assert list(curves.index) == [1, 2, 3, 4, 5]
    assert curves["probe_top1"].notna().tolist() == [False, False, True, False, False]  # measured only
    best = json.loads((folder / "best.json").read_text())
    assert best["epoch"] == 3 and best["probe_top1"] == curves.loc[3, "probe_top1"]
    state = torch.load(Path(best["checkpoint_path"]) / "state.pt", weights_only=True)
    assert state["epoch"] == 3 and state["history"][-1]["probe_top1"] == best["probe_top1"]

    from harness import final  # the one explicit step on test data

    assert final.main([str(folder)]) == 0
    result = json.loads((folder / "final_test.json").read_text())
    assert result["split"] == "test" and result["selected_on"] == "val" and result["epoch"] == 3
    assert result["checkpoint"] == str(Path(best["checkpoint_path"]) / "state.pt")
    assert 0.0 <= result["metrics"]["probe_top1"] <= 1.0
    assert final.main([str(folder), "--split", "val"]) == 2  # the selection split is refused


def test_ray_job_submit_runs_a_study(ray_head, demo_shards, tmp_path):
    """The path users take: `ray job submit --working-dir . -- python harness/tune.py`."""
    # Storage as a file:// URL: the local folder it names (shards/urls.py `is_remote`)
    bucket = f"file://{tmp_path / 'bucket'}"
    space = write_tiny_study(tmp_path / "job.yaml", demo_shards, tmp_path / "runs", num_samples=1)
    ray_bin = Path(sys.executable).parent / "ray"
    proc = subprocess.run(
        [str(ray_bin), "job", "submit", "--address", ray_head.dashboard_url, "--working-dir", ".",
         "--", "python", "harness/tune.py", "--space", str(space), "--no-baseline", "--storage", bucket],
        cwd=ROOT, env=ray_head.env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "succeeded" in out.lower(), out[-4000:]
    frame = pd.read_parquet(tmp_path / "bucket" / "tiny" / "results.parquet")
    assert len(frame) == 1 and frame["probe_top1"].notna().all()
    assert list((tmp_path / "bucket" / "tiny" / "train").glob("train-*/checkpoint_*/state.pt"))
