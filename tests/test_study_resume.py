"""An interrupted study continues with the same command and does not re-run finished trials."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from optuna.trial import TrialState

from harness.searcher import load_search_state
from tests.tiny import write_tiny_study

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def result_files(folder: Path) -> dict[str, bytes]:
    """trial id -> its result.json bytes, for every trial folder under the study."""
    out = {}
    for path in folder.glob("*/result.json"):
        match = re.search(r"_([0-9a-f]{8})_\d+_", path.parent.name)
        if match:
            out[match.group(1)] = path.read_bytes()
    return out


def told(study) -> dict[int, tuple]:
    """Optuna trial number -> what it was told, for every trial with a final state."""
    return {t.number: (t.user_attrs["tune_trial_id"], t.state, t.value, t.params, t.intermediate_values)
            for t in study.trials if t.state != TrialState.RUNNING}


def test_killed_study_resumes_and_keeps_finished_trials(ray_head, demo_shards, tmp_path):
    space = write_tiny_study(tmp_path / "tiny.yaml", demo_shards, tmp_path / "runs", num_samples=3,
                             max_t=1, search={"sampler": "tpe", "num_samples": 3, "max_concurrent": 1, "seed": 0})
    cmd = [sys.executable, "harness/tune.py", "--space", str(space), "--no-baseline"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ray_head.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    finished: list[str] = []
    deadline = time.time() + 400
    for line in proc.stdout:  # wait for the first finished trial, then kill the driver
        match = re.search(r"\] (\S+) completed", line)
        if match:
            finished.append(match.group(1))
            break
        assert time.time() < deadline, "no trial finished in time"
    time.sleep(6)  # tune.py saves the study's state every 2 s
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    folder = tmp_path / "runs" / "tiny"
    before = result_files(folder)
    assert finished and finished[0] in before
    told_before = told(load_search_state(folder))
    assert told_before, "the searcher's state was not saved before the kill"

    again = subprocess.run(cmd, cwd=ROOT, env=ray_head.env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming" in again.stdout
    assert f"{finished[0]} started" not in again.stdout  # the finished trial was not run again
    after = result_files(folder)
    assert after[finished[0]] == before[finished[0]]
    optuna_after = load_search_state(folder)
    told_after = told(optuna_after)
    for number, trial in told_before.items():  # Optuna's memory of every finished trial is kept
        assert told_after[number] == trial
    frame = pd.read_parquet(folder / "results.parquet")
    assert len(frame) == 3
    tune_ids = [t.user_attrs["tune_trial_id"] for t in optuna_after.trials]
    assert sorted(tune_ids) == sorted(frame["trial_id"])  # each trial told once, none run twice
    expected = {"completed": TrialState.COMPLETE, "error": TrialState.FAIL}
    for t in optuna_after.trials:
        reason = frame.set_index("trial_id").loc[t.user_attrs["tune_trial_id"], "stop_reason"]
        assert t.state == expected[reason], (t.user_attrs, reason)
    assert frame.set_index("trial_id").loc[finished[0], "stop_reason"] == "completed"
    assert frame["probe_top1"].notna().all()
