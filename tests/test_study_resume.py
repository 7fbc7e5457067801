"""An interrupted study continues with the same command and does not re-run finished trials."""
from __future__ import annotations

import json
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

from harness.study_storage import load_trials_study
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


def saved_by_tune(folder: Path, trial_id: str) -> bool:
    """Whether Tune's saved experiment state names `trial_id` (it saves every 2 s in tune.py)."""
    return any(trial_id in p.read_text() for p in folder.glob("experiment_state-*.json"))


def test_killed_study_resumes_and_keeps_finished_trials(ray_head, demo_shards, tmp_path):
    """Killed while its confirm run trains: the same command continues that run, re-runs no
    finished trial, and the Optuna storage holds each trial and each confirm run once."""
    space = write_tiny_study(tmp_path / "tiny.yaml", demo_shards, tmp_path / "runs", num_samples=2,
                             max_t=1, search={"sampler": "tpe", "num_samples": 2, "max_concurrent": 1, "seed": 0},
                             confirm={"top_k": 1, "seeds": 1})
    cmd = [sys.executable, "harness/tune.py", "--space", str(space), "--no-baseline"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ray_head.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    finished: list[str] = []
    confirm_run = None
    deadline = time.time() + 500
    for line in proc.stdout:  # wait for the confirm run to start, then kill the driver
        match = re.search(r"\] (\S+) completed", line)
        if match:
            finished.append(match.group(1))
        match = re.search(r"\] (\S+) started: .*confirm_of=", line)
        if match:
            confirm_run = match.group(1)
            break
        assert time.time() < deadline, "the confirm stage did not start in time"
    folder = tmp_path / "runs" / "tiny"
    while not saved_by_tune(folder, confirm_run):
        assert time.time() < deadline, "Tune never saved the confirm run in its state"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    before = result_files(folder)
    assert len(finished) == 2 and set(finished) <= set(before)
    told_before = told(load_trials_study(folder))
    assert len(told_before) == 2, "the searcher did not tell both search trials before the kill"

    again = subprocess.run(cmd, cwd=ROOT, env=ray_head.env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming" in again.stdout
    for trial_id in finished:  # finished trials were not run again
        assert f"{trial_id} started" not in again.stdout
        assert result_files(folder)[trial_id] == before[trial_id]
    optuna_after = load_trials_study(folder)
    assert told(optuna_after) == told_before  # Optuna's memory of every finished trial is kept, once
    records = {k.split(":", 1)[1]: v for k, v in optuna_after.user_attrs.items() if k.startswith("confirm:")}
    assert list(records) == [confirm_run] and records[confirm_run]["state"] == "COMPLETE"
    frame = pd.read_parquet(folder / "results.parquet")
    assert sorted(frame["trial_id"]) == sorted([*finished, confirm_run])  # none run twice
    assert frame["probe_top1"].notna().all()
    tune_ids = [t.user_attrs["tune_trial_id"] for t in optuna_after.trials]
    assert sorted(tune_ids) == sorted(finished)
    best = json.loads((folder / "best.json").read_text())
    assert best["runs"] == 2 and best["seeds"] == [0, 1]
    assert best["trial_id"] == records[confirm_run]["confirm_of"]
