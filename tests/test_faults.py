"""Fault tolerance on one machine: a Train worker killed mid-run, the run restarts and finishes.

A separate 2-node Ray instance (`ray.cluster_utils.Cluster`, 1 CPU per node, its own temp folder
and ports; not the session's `ray_head`) runs `harness/train.py` with 2 Train workers and
`run.max_failures=1`. Once the first epoch checkpoint is in the run folder the test SIGKILLs one
RayTrainWorker process of *this* cluster (found as a child of this cluster's raylets, so nobody
else's Ray on the machine is touched). Train V2 then restarts the worker group from the latest
checkpoint (~35 s on 2 cores), and the run must still end with every epoch done.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from tests.ray_head import BIN, RayHead, free_port
from tests.tiny import tiny_base

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

EPOCHS = 5


def cluster_train_workers(temp_dir: str) -> list[psutil.Process]:
    """RayTrainWorker actor processes whose raylet runs from `temp_dir` (this test's cluster)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if not any("RayTrainWorker" in part for part in proc.info["cmdline"] or []):
                continue
            parent = proc.parent()
            if parent is not None and any(temp_dir in part for part in parent.cmdline()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def registered_checkpoints(run_dir: Path) -> int:
    """Checkpoints Train's controller has registered (what a restart resumes from).

    A checkpoint folder appears before the controller has all ranks' reports; killing a worker
    then restarts from scratch, so the test waits for the controller's own snapshot."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return 0
    return len(snapshot.get("checkpoint_results", []))


def ray_address_file() -> Path:
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(None))


@pytest.fixture
def two_node_cluster(monkeypatch):
    """A head (1 CPU, dashboard on: Train's cleaner needs it) plus one 1-CPU worker node."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # this process may be attached to the session head: detach first
        ray.shutdown()
    address_file = ray_address_file()  # Cluster rewrites, then deletes, Ray's "current cluster" file
    saved = address_file.read_text() if address_file.is_file() else None
    # The nodes' processes inherit this environment: with RAY_ADDRESS already naming this cluster,
    # Train's placement-group cleaner (an actor) attaches to it, not to another Ray on the machine.
    gcs_port = free_port()
    address = f"{ray.util.get_node_ip_address()}:{gcs_port}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    temp_dir = tempfile.mkdtemp(prefix="rf", dir="/tmp")
    # No node_ip_address=127.0.0.1: Node then binds the GCS to loopback only, while ray.init()
    # rewrites a 127.0.0.1 address to the machine's IP and never connects (a silent retry loop).
    node = {"temp_dir": temp_dir, "num_cpus": 1,
            "dashboard_agent_listen_port": free_port(), "metrics_export_port": free_port(),
            "runtime_env_agent_port": free_port()}
    cluster = Cluster(initialize_head=True, head_node_args={
        **node, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port(),
        "ray_client_server_port": free_port(), "gcs_server_port": gcs_port})
    try:
        cluster.add_node(**{**node, "dashboard_agent_listen_port": free_port(),
                            "metrics_export_port": free_port(), "runtime_env_agent_port": free_port()})
        cluster.wait_for_nodes()
        assert cluster.address == address, (cluster.address, address)
        yield cluster, temp_dir
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        # stragglers of this cluster only (their command lines name its temp folder), then the folder
        RayHead(Path(temp_dir), address, "", {}).stop()
        if saved is not None:
            address_file.parent.mkdir(parents=True, exist_ok=True)
            address_file.write_text(saved)


def test_killed_train_worker_restarts_from_checkpoint_and_finishes(two_node_cluster, demo_shards, tmp_path):
    cluster, temp_dir = two_node_cluster
    config = tiny_base(demo_shards)
    config["scaling"] = {"num_workers": 2, "cpus_per_worker": 1}
    config["run"] = {"storage": str(tmp_path / "runs"), "max_failures": 1}
    config["optim"]["epochs"] = EPOCHS
    config_file = tmp_path / "fault.yaml"
    config_file.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "runs" / "fault"

    env = dict(os.environ, RAY_ADDRESS=cluster.address, RAY_AUTH_MODE="disabled",
               PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    log = (tmp_path / "driver.log").open("w+")
    driver = subprocess.Popen([sys.executable, "harness/train.py", "--config", str(config_file),
                               "--name", "fault"], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, text=True)
    seen: set[int] = set()
    killed: int | None = None
    start = time.time()
    try:
        while driver.poll() is None:
            assert time.time() - start < 300, "the run did not finish in 300 s"
            workers = cluster_train_workers(temp_dir)
            seen.update(p.pid for p in workers)
            if killed is None and registered_checkpoints(run_dir) and len(workers) == 2:
                victim = workers[-1]
                victim.send_signal(signal.SIGKILL)
                killed, killed_at = victim.pid, time.time() - start
            time.sleep(0.5)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.seek(0)
        output = log.read()
        log.close()

    assert driver.returncode == 0, output[-5000:]
    assert killed is not None, f"no checkpoint and 2 workers seen before the run ended:\n{output[-3000:]}"
    # A restart happened: the resumed rank 0 says so, and new worker processes replaced the old ones.
    resumed = re.search(r"\[train\] resumed at epoch (\d+), step (\d+)", output)
    assert resumed, output[-5000:]
    assert int(resumed.group(1)) >= 2, resumed.group(0)  # from a checkpoint, not from scratch
    assert len(seen) > 2, f"worker pids seen {sorted(seen)}: no new worker group after the kill"
    assert "[train] done: probe_top1" in output, output[-3000:]

    states = sorted(run_dir.glob("checkpoint_*/state.pt"), key=lambda p: p.stat().st_mtime)
    state = torch.load(states[-1], weights_only=True)
    history = state["history"]
    assert state["epoch"] == EPOCHS
    assert [int(h["epoch"]) for h in history] == list(range(1, EPOCHS + 1))
    for h in history:
        for key in ("loss", "loss_image", "loss_region", "loss_mil_student", "probe_top1"):
            assert math.isfinite(h[key]), (key, h)
    print(f"killed worker pid {killed} at {killed_at:.0f} s; run took {time.time() - start:.0f} s; "
          f"worker pids seen {sorted(seen)}")


def checkpoint_folders(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, oldest first (Train names them by date and time)."""
    return sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())


def test_truncated_latest_checkpoint_resumes_from_the_previous_one(ray_head, demo_shards, tmp_path):
    """A node lost while writing leaves a cut `state.pt`: the rerun resumes from the intact epoch 1."""
    config = tiny_base(demo_shards)
    config["run"] = {"storage": str(tmp_path / "runs")}
    config_file = tmp_path / "cut.yaml"
    config_file.write_text(yaml.safe_dump(config))
    command = [sys.executable, "harness/train.py", "--config", str(config_file), "--name", "cut"]

    def train(epochs: int) -> str:
        proc = subprocess.run([*command, f"optim.epochs={epochs}"], cwd=ROOT, env=ray_head.env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    train(2)
    run_dir = tmp_path / "runs" / "cut"
    first, latest = checkpoint_folders(run_dir)
    with open(latest / "state.pt", "r+b") as f:
        f.truncate(1000)

    out = train(3)
    lines = [line[line.index("[train] "):] for line in out.splitlines() if "is damaged" in line]  # no worker prefix
    assert lines == [f"[train] checkpoint {latest} is damaged (state.pt has 1000 bytes, "
                     f"{json.loads((latest / 'commit.json').read_text())['bytes']} committed); "
                     f"resuming from {first}, the newest intact one"], out[-3000:]
    assert "[train] resumed at epoch 2, step 0" in out, out[-3000:]
    newest = checkpoint_folders(run_dir)[-1]
    state = torch.load(newest / "state.pt", weights_only=True)
    assert state["epoch"] == 3 and [int(h["epoch"]) for h in state["history"]] == [1, 2, 3]
