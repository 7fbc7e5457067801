"""Which Ray a command joins: RAY_ADDRESS must answer, a recorded head only if alive, else private.

A "stale record" is what a `ray start --head` that died without `ray stop` leaves behind: its
address in `<Ray temp dir>/ray_current_cluster`. The tests write one in a private temp dir
(RAY_TMPDIR), so no other Ray on the machine is involved.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.ray_session import RayUnreachableError, choose_address
from tests.ray_head import free_port
from tests.tiny import write_tiny_study

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ray_tmpdir(monkeypatch):
    """A private Ray temp dir (short: Ray's socket paths must fit 107 bytes), no RAY_ADDRESS."""
    folder = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(folder))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield folder
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def record(tmpdir: Path, address: str) -> None:
    """What `ray start --head` writes (ray._private.utils.write_ray_address)."""
    (tmpdir / "ray").mkdir(exist_ok=True)
    (tmpdir / "ray" / "ray_current_cluster").write_text(address)


def test_dead_ray_address_is_a_one_line_error_naming_it(monkeypatch):
    dead = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", dead)
    with pytest.raises(RayUnreachableError, match=f"RAY_ADDRESS={dead}: no Ray head answers"):
        choose_address()


def test_stale_record_starts_a_private_instance_and_says_why(ray_tmpdir):
    dead = f"127.0.0.1:{free_port()}"
    record(ray_tmpdir, dead)
    address, line = choose_address()
    assert address == "local"
    assert f"head recorded at {dead}" in line and "does not answer" in line


def test_live_recorded_head_is_joined(ray_tmpdir):
    with socket.socket() as listener:  # something answering on the recorded port
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        live = f"127.0.0.1:{listener.getsockname()[1]}"
        record(ray_tmpdir, live)
        assert choose_address() == ("auto", f"[ray] attached to the Ray head started on this machine at {live}")


def test_no_record_starts_a_private_instance(ray_tmpdir):
    assert choose_address() == ("local", "[ray] started a private local Ray instance")


def test_ray_address_local_is_private_even_with_a_live_record(ray_tmpdir, monkeypatch):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        record(ray_tmpdir, f"127.0.0.1:{listener.getsockname()[1]}")
        monkeypatch.setenv("RAY_ADDRESS", "local")
        assert choose_address()[0] == "local"


def cli(args: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("script", ["harness/train.py", "harness/tune.py"])
def test_commands_end_in_one_line_when_ray_address_is_dead(script):
    dead = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, RAY_ADDRESS=dead)
    proc = cli([script], env, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: RAY_ADDRESS={dead}: no Ray head answers there within 5 s; start the head "
        "(`ray start --head`), fix the address, or unset RAY_ADDRESS to run on a private local Ray instance"]
    assert proc.stdout == ""  # it ended before the demo set, the baseline or Ray, which each say so


@pytest.mark.slow
def test_a_study_runs_privately_past_a_stale_record_beside_another_instance(ray_tmpdir, ray_head, demo_shards,
                                                                              tmp_path):
    """train.py and tune.py take the same path (harness/ray_session.py `choose_address`, then
    `connect`); the study, Tune over Train on the private instance, is the longer of the two.

    Another Ray instance runs on the machine (the session's head), and each trial's worker takes
    every CPU of the private instance: the second trial starts only if Train freed the first
    one's placement group, which it cannot do unless the instance's processes know its address."""
    dead = f"127.0.0.1:{free_port()}"
    record(ray_tmpdir, dead)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    expected = f"[ray] started a private local Ray instance (the head recorded at {dead}"

    space = write_tiny_study(tmp_path / "study.yaml", demo_shards, tmp_path / "runs", num_samples=2, max_t=1,
                             search={"sampler": "random", "num_samples": 2, "max_concurrent": 1, "seed": 0})
    study = yaml.safe_load(space.read_text())
    study["base"]["scaling"]["cpus_per_worker"] = os.cpu_count()
    space.write_text(yaml.safe_dump(study))
    tune = cli(["harness/tune.py", "--space", str(space), "--no-baseline"], env, 400)
    assert tune.returncode == 0, tune.stdout[-3000:] + tune.stderr[-3000:]
    assert expected in tune.stdout
    assert len(pd.read_parquet(tmp_path / "runs" / "tiny" / "results.parquet")) == 2
