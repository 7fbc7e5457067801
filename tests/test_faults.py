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
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
import yaml

from harness.checkpoint import damage
from tests.ray_head import BIN, free_port, stop_private_ray
from tests.tiny import tiny_base, write_tiny_study

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


def run_watching(args: list[str], env: dict[str, str], log_path: Path, watch: Callable[[float], None],
                 limit_s: float) -> tuple[int, str]:
    """Run a harness command, calling `watch(seconds so far)` twice a second until it ends."""
    start = time.time()
    with log_path.open("w+") as log:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, text=True)
        try:
            while proc.poll() is None:
                assert time.time() - start < limit_s, f"{args[0]} did not finish in {limit_s:.0f} s"
                watch(time.time() - start)
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        return proc.returncode, log.read()


def ray_address_file() -> Path:
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(None))


@contextmanager
def local_cluster(monkeypatch, head: dict | None = None, worker: dict | None = None):
    """A head (1 CPU, dashboard on: Train's cleaner needs it) plus one 1-CPU worker node;
    `head` and `worker` add `ray.cluster_utils.Cluster` node arguments (e.g. resources)."""
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
        "ray_client_server_port": free_port(), "gcs_server_port": gcs_port, **(head or {})})

    def add_worker():
        return cluster.add_node(**{**node, "dashboard_agent_listen_port": free_port(),
                                   "metrics_export_port": free_port(), "runtime_env_agent_port": free_port(),
                                   **(worker or {})})

    cluster.add_worker = add_worker
    try:
        add_worker()
        cluster.wait_for_nodes()
        assert cluster.address == address, (cluster.address, address)
        yield cluster, temp_dir
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        # stragglers of this cluster only (their command lines name its temp folder), then the folder
        stop_private_ray(Path(temp_dir))
        if saved is not None:
            address_file.parent.mkdir(parents=True, exist_ok=True)
            address_file.write_text(saved)


@pytest.fixture
def two_node_cluster(monkeypatch):
    with local_cluster(monkeypatch) as found:
        yield found


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
    seen: set[int] = set()
    killed: int | None = None
    killed_at = 0.0

    def kill_a_worker_once(elapsed: float) -> None:
        nonlocal killed, killed_at
        workers = cluster_train_workers(temp_dir)
        seen.update(p.pid for p in workers)
        if killed is None and registered_checkpoints(run_dir) and len(workers) == 2:
            victim = workers[-1]
            victim.send_signal(signal.SIGKILL)
            killed, killed_at = victim.pid, elapsed

    start = time.time()
    returncode, output = run_watching(["harness/train.py", "--config", str(config_file), "--name", "fault"],
                                      env, tmp_path / "driver.log", kill_a_worker_once, limit_s=300)
    assert returncode == 0, output[-5000:]
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
    committed = json.loads((latest / "commit.json").read_text())["bytes"]  # Train may delete the folder later

    out = train(3)
    lines = [line[line.index("[train] "):] for line in out.splitlines() if "is damaged" in line]  # no worker prefix
    assert lines == [f"[train] checkpoint {latest} is damaged (state.pt has 1000 bytes, "
                     f"{committed} committed); "
                     f"resuming from {first}, the newest intact one"], out[-3000:]
    assert "[train] resumed at epoch 2, step 0" in out, out[-3000:]
    newest = checkpoint_folders(run_dir)[-1]
    state = torch.load(newest / "state.pt", weights_only=True)
    assert state["epoch"] == 3 and [int(h["epoch"]) for h in state["history"]] == [1, 2, 3]


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs (root may mount one), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"this test needs to mount a tmpfs, which was not permitted: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode:
            subprocess.run(["umount", "--lazy", str(disk)], check=True)  # a Ray process still holds a file


def test_full_disk_stops_the_run_in_one_line_and_the_rerun_resumes(ray_head, demo_shards, small_disk, tmp_path):
    """`run.storage` on a small disk that a ballast file fills once epoch 1's checkpoint is
    committed: epoch 2's checkpoint does not fit. The run ends with one line naming the folder,
    epoch 1's checkpoint stays as committed, the cut one never counts, and once the ballast is
    gone the same command resumes at epoch 2 and finishes."""
    config = tiny_base(demo_shards)
    config["data"]["samples_per_epoch"] = 320  # epochs of seconds: the ballast lands before epoch 2 ends
    config["run"] = {"storage": str(small_disk)}
    config_file = tmp_path / "full.yaml"
    config_file.write_text(yaml.safe_dump(config))
    command = ["harness/train.py", "--config", str(config_file), "--name", "full"]
    run_dir, ballast = small_disk / "full", small_disk / "ballast"
    first: list[Path] = []
    filled_at = [0.0]

    def fill_once_epoch_1_is_committed(elapsed: float) -> None:
        folders = checkpoint_folders(run_dir)
        if first or not folders or damage(folders[0]) is not None:
            return
        assert len(folders) == 1, f"epoch 2 checkpointed before the disk was filled: {folders}"
        first.append(folders[0])
        room = (folders[0] / "state.pt").stat().st_size // 2  # the small files fit, a checkpoint does not
        with open(ballast, "wb") as file:
            os.posix_fallocate(file.fileno(), 0, shutil.disk_usage(small_disk).free - room)
        filled_at[0] = elapsed

    start = time.time()
    returncode, output = run_watching(command, ray_head.env, tmp_path / "full.log",
                                      fill_once_epoch_1_is_committed, limit_s=400)
    failed_after = time.time() - start
    assert first, f"epoch 1's checkpoint was never committed:\n{output[-3000:]}"
    assert returncode == 1, output[-5000:]
    said = [line for line in output.splitlines() if "space left" in line.lower()]
    assert len(said) == 1 and re.fullmatch(
        rf"error: no space left on device writing checkpoint {re.escape(str(run_dir))}/checkpoint_\S+: "
        r"free space there and run the same command again to continue", said[0]), output[-5000:]
    assert damage(first[0]) is None  # state.pt is what commit.json's size and sha256 say
    assert torch.load(first[0] / "state.pt", weights_only=True)["epoch"] == 1
    cut = [folder for folder in checkpoint_folders(run_dir) if folder != first[0]]
    assert cut and all(damage(folder) for folder in cut), cut  # written in part, never counts

    ballast.unlink()
    start = time.time()
    returncode, output = run_watching(command, ray_head.env, tmp_path / "rerun.log", lambda _: None, limit_s=400)
    assert returncode == 0, output[-5000:]
    assert "[train] resumed at epoch 2, step 0" in output and "is damaged" not in output, output[-3000:]
    newest = checkpoint_folders(run_dir)[-1]
    assert newest not in cut and damage(newest) is None
    state = torch.load(newest / "state.pt", weights_only=True)
    assert state["epoch"] == 2 and [int(h["epoch"]) for h in state["history"]] == [1, 2]
    print(f"checkpoint {(first[0] / 'state.pt').stat().st_size} bytes; disk filled at {filled_at[0]:.0f} s, "
          f"the run ended at {failed_after:.0f} s; the rerun took {time.time() - start:.0f} s")


def preempt(cluster, node) -> None:
    """A spot reclaim as Ray sees one: the node is drained for preemption (what a `ray start
    --block` node does on SIGTERM in Ray 2.60, e.g. a KubeRay pod deleted), then it dies."""
    from ray._raylet import GcsClient
    from ray.core.generated import autoscaler_pb2

    deadline_ms = int(time.time() * 1000) + 2000
    accepted, why = GcsClient(address=cluster.address).drain_node(
        node.node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
        "spot instance reclaimed", deadline_ms)
    assert accepted, why
    time.sleep(2)
    cluster.remove_node(node, allow_graceful=False)


def test_lost_spot_nodes_resume_the_trial_without_using_its_failure_budget(monkeypatch, demo_shards, tmp_path):
    """A Tune trial whose Train worker runs on a spot node. The node is reclaimed mid-trial with
    a preemption drain (what KubeRay and `ray start --block` give), a new one joins (as an
    autoscaler would add it), and once the trial has checkpointed there too, that node vanishes
    without any drain (a spot VM simply gone). With `run.max_failures: 0` (no retries for real
    errors) the trial resumes from its last checkpoint both times and finishes."""
    epochs = 5
    space = write_tiny_study(tmp_path / "spot.yaml", demo_shards, tmp_path / "runs", num_samples=1,
                             max_t=epochs)
    study = yaml.safe_load(space.read_text())
    study["base"]["scaling"].update(resources_per_worker={"spot": 1},
                                    trial_driver_resources={"CPU": 0, "trial_driver": 0.01})
    study["base"]["run"] = {"max_failures": 0}
    study["base"]["data"]["samples_per_epoch"] = 640  # epochs of seconds, so each loss lands mid-run
    space.write_text(yaml.safe_dump(study))
    log = tmp_path / "study.log"

    with local_cluster(monkeypatch, head={"resources": {"trial_driver": 1}},
                       worker={"resources": {"spot": 1}}) as (cluster, temp_dir):
        env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
        spot = [cluster.list_all_nodes()[-1]]
        losses: list[tuple[float, int]] = []  # (seconds into the study, checkpoints registered then)

        def lose_spot_nodes(elapsed: float) -> None:
            runs = list((tmp_path / "runs" / "tiny" / "train").glob("train-*"))
            registered = registered_checkpoints(runs[0]) if runs else 0
            if not losses and registered:
                preempt(cluster, spot[0])
            elif len(losses) == 1 and registered > losses[0][1]:  # the resumed run has checkpointed
                cluster.remove_node(spot[0], allow_graceful=False)  # no drain: the raylet just dies
            else:
                return
            losses.append((elapsed, registered))
            spot[0] = cluster.add_worker()  # as an autoscaler would

        start = time.time()
        returncode, output = run_watching(["harness/tune.py", "--space", str(space), "--no-baseline", "--verbose"],
                                          env, log, lose_spot_nodes, limit_s=540)

    assert len(losses) == 2, f"the study ended after {len(losses)} node losses:\n{output[-3000:]}"
    assert returncode == 0, output[-5000:]
    # The drained reclaim: Train's failure policy put it on the preemption budget (unlimited), not
    # on max_failures (without the drain: "Error count: 1 (max allowed: 0)" and the trial ERROR).
    assert "Source: preemption" in output, output[-5000:]
    # The undrained loss: Train gave up (max_failures 0), harness/node_loss.py refitted the run.
    assert re.search(r"\[train\] train-\w+: node \w+ was lost without warning; resuming from the last "
                     r"checkpoint \(1 of run.max_node_losses 3\)", output), output[-5000:]
    resumed = [int(e) for e in re.findall(r"\[train\] resumed at epoch (\d+), step \d+", output)]
    assert len(resumed) == 2 and resumed[0] >= 2 and resumed[1] > resumed[0], output[-5000:]  # from checkpoints
    frame = pd.read_parquet(tmp_path / "runs" / "tiny" / "results.parquet")
    assert frame["status"].tolist() == ["TERMINATED"], frame.T
    assert frame["epochs"].tolist() == [epochs]
    print(f"spot nodes lost at {', '.join(f'{t:.0f} s' for t, _ in losses)}; "
          f"the study took {time.time() - start:.0f} s")
