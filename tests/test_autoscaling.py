"""Autoscaling on this machine with Ray's fake multi-node provider (cluster/fake-multinode.yaml).

The head has no CPUs for work and alone holds `trial_driver` (like the cloud configs' head), so
a study's Train workers make the autoscaler start "GPU-like worker nodes" (local Ray
processes). The test records which nodes are alive, once a second, and asserts on that
timeline: the head alone at the start, exactly head + one node of each worker type at the
peak (as many as the study runs at once), the head alone again after the idle timeout. It also
checks where every trial driver and Train controller ran (the node of the raylet above each
process: the head, never a worker type) and measures their peak memory against the
reservation the real studies make.

Isolation: the head runs on its own ports with its own --temp-dir, in a new session, and the
tests stop exactly the processes of that session (never `ray stop`, which would stop every Ray
process on the machine). They are still marked `isolated` (run in their own pytest invocation,
`CMD_HARNESS_ISOLATED=1`): they need both CPU cores for a few minutes, and the autoscaler's
timing assertions do not survive a machine busy with other Ray tests.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.ray_head import free_port, head_command, kill_all, private_env, processes_mentioning
from tests.tiny import tiny_base

REPO = Path(__file__).resolve().parents[1]
FAKE_CONFIG = REPO / "cluster" / "fake-multinode.yaml"

ISOLATED_MARKS = [
    pytest.mark.isolated,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("CMD_HARNESS_ISOLATED") != "1",
        reason="isolated test: run with CMD_HARNESS_ISOLATED=1 in its own pytest invocation",
    ),
]
pytestmark = ISOLATED_MARKS

# idle_timeout_minutes 0.2 = 12 s. Seen on 2 shared cores: workers gone 10-20 s after plain
# tasks, but ~160 s after a tune.py study exited: Ray Train registers each run's workers with
# `request_resources`, and those requests only expire 180 s after their last refresh.
SCALE_DOWN_TIMEOUT_S = 300


# ---------------------------------------------------------------------------------------
# A fake autoscaling cluster that this test starts and stops by itself


def _session_members(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


class FakeCluster:
    """A head started with `--autoscaling-config` pointing at the fake multi-node provider."""

    def __init__(self, root: Path, config: dict):
        self.root = root
        self.config = copy.deepcopy(config)
        self.sid: int | None = None
        self.gcs_address = ""
        self.dashboard_url = ""

    def env(self) -> dict[str, str]:
        return private_env(PYTHONPATH=str(REPO))  # a local test cluster: auth off (the cloud configs use token)

    def start(self) -> None:
        import ray._private.services
        from ray.autoscaler._private.util import validate_config

        ip = ray._private.services.get_node_ip_address()
        gcs_port, dashboard_port = free_port(), free_port()
        self.gcs_address = f"{ip}:{gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        self.config["provider"]["gcs_address"] = self.gcs_address
        validate_config(self.config)
        config_path = self.root / "autoscaling.json"
        config_path.write_text(json.dumps(self.config))

        head = self.config["available_node_types"][self.config["head_node_type"]]["resources"]
        custom = {k: v for k, v in head.items() if k not in ("CPU", "GPU", "memory")}
        memory = [f"--memory={head['memory']}"] if "memory" in head else []
        cmd = head_command(self.root / "ray", gcs_port, dashboard_port,
                           f"--num-cpus={head.get('CPU', 0)}", f"--num-gpus={head.get('GPU', 0)}",
                           f"--resources={json.dumps(custom)}", *memory, f"--autoscaling-config={config_path}")
        env = self.env()
        env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
        # A new session: every process of this cluster (GCS, raylets, autoscaler, the fake
        # worker nodes it spawns, their workers) inherits its id, and only those are stopped.
        proc = subprocess.Popen(cmd, env=env, cwd=self.root, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.sid = proc.pid
        try:
            out, _ = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"`ray start --head` failed ({proc.returncode}):\n{out[-4000:]}")

    def stop(self) -> None:
        if self.sid is not None:
            kill_all(lambda: _session_members(self.sid))
        kill_all(lambda: processes_mentioning(str(self.root)))  # belt and braces

    def leftovers(self) -> list[int]:
        members = _session_members(self.sid) if self.sid is not None else []
        return members + processes_mentioning(str(self.root))


def _node_kind(info) -> str:
    """'head', or the worker type named by the node's `node-type` label (fake-multinode.yaml)."""
    return "head" if info.is_head_node else dict(info.labels).get("node-type", "unlabelled")


class NodeTimeline(threading.Thread):
    """Alive nodes of the cluster by kind, sampled once a second from the GCS."""

    def __init__(self, gcs_address: str, period_s: float = 1.0):
        super().__init__(daemon=True)
        self.gcs_address = gcs_address
        self.period_s = period_s
        self.samples: list[tuple[float, int]] = []
        self.kinds: list[tuple[float, dict[str, int]]] = []
        self.head_node_id = ""
        self.errors: list[str] = []
        self.t0 = time.monotonic()
        self._stop_event = threading.Event()

    def run(self) -> None:
        from ray._raylet import GcsClient
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        client = GcsClient(address=self.gcs_address)
        while not self._stop_event.is_set():
            try:
                infos = client.get_all_node_info(timeout=5)
                alive = [info for info in infos.values() if info.state == GcsNodeInfo.ALIVE]
                t = round(time.monotonic() - self.t0, 1)
                kinds: dict[str, int] = {}
                for info in alive:
                    kinds[_node_kind(info)] = kinds.get(_node_kind(info), 0) + 1
                    if info.is_head_node:
                        self.head_node_id = info.node_id.hex()
                self.kinds.append((t, kinds))
                self.samples.append((t, len(alive)))
            except Exception as e:  # noqa: BLE001 - a missed sample is not a failure
                self.errors.append(repr(e))
            self._stop_event.wait(self.period_s)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def latest(self) -> int | None:
        return self.samples[-1][1] if self.samples else None

    def wait_for(self, count: int, timeout_s: float) -> float | None:
        """Seconds (on this timeline) when `count` nodes were first seen alive, or None."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.latest() == count:
                return self.samples[-1][0]
            time.sleep(0.5)
        return None

    def changes(self, since: float = 0.0) -> list[tuple[float, int]]:
        """The timeline reduced to the samples where the count changed."""
        out: list[tuple[float, int]] = []
        for t, n in self.samples:
            if t >= since and (not out or out[-1][1] != n):
                out.append((t, n))
        return out

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory):
    config = yaml.safe_load(FAKE_CONFIG.read_text())
    # A short root: Ray's socket paths live under it and must stay under 107 characters.
    root = Path(tempfile.mkdtemp(prefix="cmdas_", dir="/tmp"))
    cluster = FakeCluster(root, config)
    cluster.start()
    timeline = NodeTimeline(cluster.gcs_address)
    timeline.start()
    try:
        yield cluster, timeline
    finally:
        timeline.stop()
        cluster.stop()
        leftovers = cluster.leftovers()
        # Keep the autoscaler's logs (pytest keeps its last tmp folders) before removing the root.
        logs = tmp_path_factory.mktemp("autoscaler-logs")
        for log in (root / "ray" / "session_latest" / "logs").glob("monitor*"):
            shutil.copy(log, logs / log.name)
        (logs / "timeline.json").write_text(json.dumps(timeline.samples))
        shutil.rmtree(root, ignore_errors=True)
        assert not leftovers, f"processes of the test cluster still running: {leftovers}"


def _run(cmd: list[str], env: dict, timeout_s: float, cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")[-3000:] if isinstance(e.stdout, bytes) else (e.stdout or "")[-3000:]
        pytest.fail(f"{cmd[:3]} did not finish in {timeout_s} s:\n{out}")


def _report(name: str, timeline: NodeTimeline, since: float, done: float) -> str:
    """The node-count timeline relative to the start of the workload, for logs and failures."""
    changes = [(round(t - since, 1), n) for t, n in timeline.changes(since)]
    line = (f"{name}: alive nodes over time (s since start, count) = {changes}; "
            f"workload finished at {done - since:.1f} s")
    print(line)
    return line


# ---------------------------------------------------------------------------------------
# A real (tiny) study: `python harness/tune.py` against the cluster


TINY_SPACE = """\
# A two-trial study sized for the fake cluster: each trial's one Train worker needs 1 CPU, the
# head has none, so both trials wait for the autoscaler; their drivers make the same request
# as the real studies' (tune_spaces/cub.yaml), which only the head can hold.
base: {base}  # the tests' tiny training config (tests/tiny.py)
space:
  loss.mil_weight: {{type: uniform, low: 0.5, high: 1.5}}
metric: probe_top1
mode: max
search: {{sampler: tpe, num_samples: 2, max_concurrent: 2, seed: 0}}
scheduler: {{type: asha, max_t: 1, grace_period: 1, reduction_factor: 2}}
scaling: {{num_workers: 1, use_gpu: false, cpus_per_worker: 1, gpus_per_worker: 0,
          trial_driver_resources: {drivers}}}
"""
DRIVER_TITLES = ("ray::ImplicitFunc", "ray::TrainController")  # a trial driver, its controller


def _raylet_node_id(process) -> str:
    """The node a Ray worker process belongs to: the --node_id of the raylet above it."""
    for ancestor in process.parents():
        for arg in ancestor.cmdline():
            if arg.startswith("--node_id="):
                return arg.split("=", 1)[1]
    return ""


class PeakMemory(threading.Thread):
    """Peak RSS per process title among the cluster's processes (all nodes run on this machine),
    and the nodes those processes ran on."""

    def __init__(self, sid: int, titles: tuple[str, ...]):
        super().__init__(daemon=True)
        self.sid, self.titles = sid, titles
        self.peak: dict[str, int] = {}
        self.nodes: dict[str, set[str]] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._stop_event.is_set():
            for pid in _session_members(self.sid):
                try:
                    process = psutil.Process(pid)
                    title, rss = process.cmdline()[0], process.memory_info().rss
                except (psutil.Error, IndexError):
                    continue
                for prefix in self.titles:
                    if title.startswith(prefix):
                        self.peak[prefix] = max(self.peak.get(prefix, 0), rss)
                        try:
                            self.nodes.setdefault(prefix, set()).add(_raylet_node_id(process))
                        except psutil.Error:
                            pass
            self._stop_event.wait(0.5)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


@pytest.mark.timeout(1800)
def test_study_scales_gpu_like_workers_from_zero_and_back_with_drivers_on_the_head(fake_cluster, tmp_path):
    cluster, timeline = fake_cluster
    assert timeline.wait_for(1, SCALE_DOWN_TIMEOUT_S) is not None, \
        f"head not alone at start: {timeline.changes()}"
    start = timeline.now()

    from harness.study_file import read_study_file

    cub = read_study_file(REPO / "tune_spaces" / "cub.yaml")  # with what it extends
    drivers = cub["scaling"]["trial_driver_resources"]  # CPU 0, measured memory, trial_driver
    space = tmp_path / "space.yaml"
    base = tiny_base(tmp_path / "shards")
    base["data"]["demo"] = True  # tune.py generates the demo shards before the study
    space.write_text(TINY_SPACE.format(base=json.dumps(base), drivers=json.dumps(drivers)))
    env = cluster.env()
    env["RAY_ADDRESS"] = cluster.gcs_address
    cmd = [sys.executable, "harness/tune.py", "--space", str(space),
           "--name", "autoscaling", "--storage", str(tmp_path / "runs"), "--no-baseline"]
    memory = PeakMemory(cluster.sid, DRIVER_TITLES)
    memory.start()
    try:
        result = _run(cmd, env, 1200, REPO)
    finally:
        memory.stop()
    done = timeline.now()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert list((tmp_path / "runs").rglob("results.parquet")), "no results.parquet written"

    gone = timeline.wait_for(1, SCALE_DOWN_TIMEOUT_S)
    line = _report("tune.py study", timeline, start, done)
    kinds = [k for t, k in timeline.kinds if t >= start]
    print(f"peak RSS (MiB): { {k: v // 2**20 for k, v in memory.peak.items()} }")

    # The head is there throughout; the worker types start at 0 and end at 0.
    assert all(k.get("head") == 1 for k in kinds), line
    assert kinds[0] == {"head": 1}, line
    assert gone is not None, f"workers not released {SCALE_DOWN_TIMEOUT_S} s after the study: {line}"
    assert timeline.kinds[-1][1] == {"head": 1}, line
    # Peak: both trials at once (the head holds exactly two drivers' memory), one 1-CPU Train
    # worker each, so one node of each worker type (max_workers 1 per type) and no more.
    peak = max(kinds, key=lambda k: sum(k.values()))
    assert peak == {"head": 1, "gpu_like_ondemand": 1, "gpu_like_spot": 1}, line
    assert max(sum(k.values()) for k in kinds) == 3, line

    # Every trial driver and Train controller ran on the head (their raylet is the head's).
    assert timeline.head_node_id
    for title in DRIVER_TITLES:
        assert memory.nodes.get(title) == {timeline.head_node_id}, \
            f"{title} ran on {memory.nodes.get(title)}, head is {timeline.head_node_id}"

    # The reservation covers what a driver and its controller really use.
    assert set(memory.peak) == set(DRIVER_TITLES), memory.peak
    used = sum(memory.peak.values())
    assert used <= drivers["memory"], \
        f"driver + controller peak {used / 2**20:.0f} MiB > reserved {drivers['memory'] / 2**20:.0f} MiB"
