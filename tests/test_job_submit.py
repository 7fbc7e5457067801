"""`ray job submit --working-dir . -- python harness/tune.py` against a head with token auth on.

The head runs as a user whose home is in its temp folder (its token in `home/.ray/auth_token`),
so the job's `~/cmd-harness` is inside the test's folder. The client is given what the README says
it needs: RAY_AUTH_MODE=token and the token (here through RAY_AUTH_TOKEN_PATH).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from optuna.trial import TrialState

from harness.study_storage import load_trials_study
from tests.ray_head import BIN, processes_mentioning, start_head
from tests.test_study_resume import result_files, told
from tests.tiny import write_tiny_study

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def auth_head():
    head = start_head(num_cpus=2, token_auth=True)
    try:
        yield head
    finally:
        head.stop()


def without_token(env: dict[str, str], home: Path) -> dict[str, str]:
    """A client on another account: no RAY_AUTH_MODE, no token."""
    clean = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")}
    home.mkdir(exist_ok=True)
    return {**clean, "HOME": str(home)}


def submit_command(head, *args: str) -> list[str]:
    """`ray job submit` of `python harness/tune.py ARGS`, waiting for the job and following its logs."""
    return [str(BIN / "ray"), "job", "submit", "--address", head.dashboard_url,
            "--working-dir", ".", "--", "python", "harness/tune.py", *args]


def submit(head, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(submit_command(head, *args), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


def test_a_client_without_the_token_is_refused(auth_head, demo_shards, tmp_path):
    env = without_token(auth_head.env, tmp_path / "other-home")
    # Ray's own CLI: a traceback ending in this message (documented in the README).
    proc = submit(auth_head, env, "--no-baseline")
    assert proc.returncode != 0
    assert "AuthenticationError: Authentication required: Unauthorized: Missing authentication token" \
        in proc.stderr, proc.stderr[-2000:]

    # tune.py itself, pointed at the head: one line saying what to set.
    space = write_tiny_study(tmp_path / "s.yaml", demo_shards, tmp_path / "runs", num_samples=1)
    proc = subprocess.run([sys.executable, "harness/tune.py", "--space", str(space), "--no-baseline"],
                          cwd=ROOT, env={**env, "RAY_ADDRESS": auth_head.gcs_address},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: the Ray cluster at {auth_head.gcs_address} uses token auth and refused this client: "
        "set RAY_AUTH_MODE=token and give it the head's token (copy the head's ~/.ray/auth_token here, "
        "or set RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)"]
    assert not (tmp_path / "runs").exists()


def ray_job(head, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), "job", *args, "--address", head.dashboard_url], cwd=ROOT,
                          env=head.env, capture_output=True, text=True, timeout=300)


TRIAL_ACTORS = ("ImplicitFunc", "TrainController", "RayTrainWorker")  # a trial's driver, its Train run


def trial_processes(head) -> list[str]:
    """Titles of the trial actors' processes (`ray::ImplicitFunc...` and so on) under the head's raylet."""
    names = []
    for pid in processes_mentioning(str(head.temp_dir)):
        try:
            raylet = psutil.Process(pid)
            if "raylet" not in raylet.name():
                continue
            for child in raylet.children(recursive=True):
                title = " ".join(child.cmdline())
                if title.startswith("ray::") and any(actor in title for actor in TRIAL_ACTORS):
                    names.append(title.split()[0])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return sorted(names)


def wait_for(condition, what: str, timeout_s: float = 300.0) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, f"{what} did not happen within {timeout_s:.0f} s"
        time.sleep(0.5)


def test_stopped_job_submitted_again_keeps_finished_trials(auth_head, demo_shards, tmp_path):
    """`ray job stop` once a trial has finished and the next one trains, then the same `ray job
    submit`: the trial actors are gone, and the study resumes in the same stable folder (not in
    Ray's copy of the working dir), keeps what finished, and runs no trial twice (in Tune,
    results or Optuna)."""
    # Relative storage, as in the shipped study files: inside a job it would land in Ray's copy.
    space = write_tiny_study(tmp_path / "stop.yaml", demo_shards, Path("runs"), num_samples=2, max_t=2,
                             name="stopped", search={"sampler": "tpe", "num_samples": 2, "max_concurrent": 1,
                                                     "seed": 0})
    study = Path(auth_head.env["HOME"]) / "cmd-harness" / "runs" / "stopped"
    args = ("--space", str(space), "--no-baseline")
    first = subprocess.Popen(submit_command(auth_head, *args), cwd=ROOT, env=auth_head.env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    job, finished, seen = None, [], []
    deadline = time.time() + 600
    for line in first.stdout:  # the job's id, then its log until a trial has finished
        seen.append(line)
        job = job or next(iter(re.findall(r"Job '(raysubmit_\w+)' submitted successfully", line)), None)
        finished += re.findall(r"\] (\w+) (?:completed|stopped early)", line)
        if finished or time.time() > deadline:
            break
    assert job and finished, "".join(seen)[-4000:]
    assert "[study] running in Ray's temporary copy of the working dir" in "".join(seen), "".join(seen)[-4000:]
    assert f"folder {study}" in "".join(seen), "".join(seen)[-4000:]
    wait_for(lambda: "RayTrainWorker" in " ".join(trial_processes(auth_head)), "the next trial's Train run")
    before = result_files(study)
    told_before = told(load_trials_study(study))
    running = trial_processes(auth_head)

    start = time.time()
    stopped = ray_job(auth_head, "stop", job)
    stop_s = time.time() - start
    assert stopped.returncode == 0, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    status = ray_job(auth_head, "status", job)
    assert f"Job '{job}' was stopped" in status.stdout + status.stderr, status.stdout + status.stderr  # STOPPED
    left = trial_processes(auth_head)
    first.stdout.close()
    first.wait(timeout=60)
    # Ray ends a stopped job's actors with its driver; none may race the resumed study.
    wait_for(lambda: not trial_processes(auth_head), "the end of the stopped job's trial actors", 60)
    gone_s = time.time() - start

    second = submit(auth_head, auth_head.env, *args)
    out = second.stdout + second.stderr
    assert second.returncode == 0 and "succeeded" in out.lower(), out[-4000:]
    assert f"[study] resuming {study}" in out, out[-4000:]
    copies = list(auth_head.temp_dir.glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*"))
    inside = [str(p) for c in copies for p in (c / "runs").rglob("*")]
    assert copies and not inside, inside[:20]  # nothing in Ray's copy
    for trial_id in finished:  # kept as they were, not started again
        assert f"{trial_id} started" not in out, out[-4000:]
        assert result_files(study)[trial_id] == before[trial_id]
    frame = pd.read_parquet(study / "results.parquet")
    assert len(frame) == 2 and frame["trial_id"].is_unique, frame.T
    assert set(frame["stop_reason"]) <= {"completed", "early_stopped"}, frame.T
    optuna_study = load_trials_study(study)
    tune_ids = [t.user_attrs["tune_trial_id"] for t in optuna_study.trials]
    assert len(tune_ids) == len(set(tune_ids)), tune_ids  # each Tune trial once
    states = {t.user_attrs["tune_trial_id"]: t.state for t in optuna_study.trials
              if not t.user_attrs.get("lost")}  # lost: suggested as the job stopped, never given to Tune
    assert sorted(states) == sorted(frame["trial_id"]), (states, frame["trial_id"].tolist())
    assert set(states.values()) <= {TrialState.COMPLETE, TrialState.PRUNED}, states
    after = told(optuna_study)
    assert all(after[number] == record for number, record in told_before.items())  # what Optuna was told stays
    assert Path(json.loads((study / "best.json").read_text())["checkpoint_path"]).is_dir()
    print(f"ray job stop took {stop_s:.1f} s; trial processes before it: {running}, as it returned: "
          f"{left or 'none'}, none after {gone_s:.1f} s")
