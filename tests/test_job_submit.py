"""`ray job submit --working-dir . -- python harness/tune.py` against a head with token auth on.

The head runs as a user whose home is in its temp folder (its token in `home/.ray/auth_token`),
so the job's `~/cmd-harness` is inside the test's folder. The client is given what the README says
it needs: RAY_AUTH_MODE=token and the token (here through RAY_AUTH_TOKEN_PATH).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.ray_head import BIN, start_head
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


def submit(head, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), "job", "submit", "--address", head.dashboard_url,
                           "--working-dir", ".", "--", "python", "harness/tune.py", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


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


def trial_checkpoints(study: Path) -> set[str]:
    return {str(p.relative_to(study)) for p in study.glob("train/train-*/checkpoint_*") if p.is_dir()}


def test_job_writes_to_a_stable_place_and_a_second_submit_resumes(auth_head, demo_shards, tmp_path):
    # Relative storage, as in the shipped study files: inside a job it would land in Ray's copy.
    space = write_tiny_study(tmp_path / "job.yaml", demo_shards, Path("runs"), num_samples=1)
    home = Path(auth_head.env["HOME"])
    study = home / "cmd-harness" / "runs" / "tiny"

    first = submit(auth_head, auth_head.env, "--space", str(space))
    out = first.stdout + first.stderr
    assert first.returncode == 0 and "succeeded" in out.lower(), out[-4000:]
    assert "[study] running in Ray's temporary copy of the working dir" in out, out[-4000:]
    assert f"folder {study}" in out, out[-4000:]
    frame = pd.read_parquet(study / "results.parquet")
    assert len(frame) == 1 and frame["probe_top1"].notna().all()
    done = trial_checkpoints(study)
    assert done
    copies = list(auth_head.temp_dir.glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*"))
    assert copies and not [c for c in copies if (c / "runs").exists()], copies  # nothing in Ray's copy

    second = submit(auth_head, auth_head.env, "--space", str(space))
    out = second.stdout + second.stderr
    assert second.returncode == 0 and "succeeded" in out.lower(), out[-4000:]
    assert f"[study] resuming {study}" in out, out[-4000:]
    assert trial_checkpoints(study) == done  # the finished trial was not run again
    assert pd.read_parquet(study / "results.parquet")["trial_id"].tolist() == frame["trial_id"].tolist()
