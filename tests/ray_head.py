"""A real local Ray head for tests and benchmarks: `ray start --head` on 127.0.0.1 in its own
temp folder, on free ports.

Stopped by killing only the processes that run from that folder, never `ray stop`, which
would kill every Ray process on the machine. The pieces (`private_env`, `head_command`,
`kill_all`, `processes_mentioning`) also serve the tests that start a head of another shape
(tests/test_autoscaling.py: a fake autoscaling cluster; tests/test_faults.py: a head and a
worker node).
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A port free on every interface (a head may listen on the machine's IP, not only loopback)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# What would point a private Ray at another instance, or at its credentials.
_OTHER_RAY = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def private_env(**extra: str) -> dict[str, str]:
    """This process's environment for a private Ray: nothing naming another instance, auth and
    usage stats off, the venv's `ray` first on PATH; `extra` on top."""
    env = {k: v for k, v in os.environ.items() if k not in _OTHER_RAY}
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra})
    return env


def head_command(temp_dir: Path, port: int, dashboard_port: int, *options: str) -> list[str]:
    """`ray start --head` in its own temp folder with every port it opens a free one, none of
    Ray's defaults, so it never meets another Ray instance on the machine."""
    return [str(BIN / "ray"), "start", "--head", f"--port={port}", f"--dashboard-port={dashboard_port}",
            f"--temp-dir={temp_dir}", "--disable-usage-stats",
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", *options]


def processes_mentioning(marker: str) -> list[int]:
    """Pids of the processes (other than this one) whose command line contains `marker`."""
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid != os.getpid() and any(marker in part for part in proc.info["cmdline"] or []):
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def kill_all(find: Callable[[], list[int]], grace_s: float = 10.0) -> None:
    """SIGTERM the pids `find` returns, SIGKILL those still there after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in find():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        while find() and time.monotonic() < deadline:
            time.sleep(0.3)


def stop_private_ray(temp_dir: Path) -> None:
    """Stop the processes of the Ray instance in `temp_dir` (their command lines name it), then
    remove the folder."""
    kill_all(lambda: processes_mentioning(str(temp_dir)))
    shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass
class RayHead:
    temp_dir: Path
    gcs_address: str
    dashboard_url: str
    env: dict[str, str]

    def stop(self) -> None:
        stop_private_ray(self.temp_dir)


def start_head(num_cpus: int = 2, resources: str | None = None, token_auth: bool = False) -> RayHead:
    """Start a head with the dashboard on (Tune-over-Train needs it) and auth off for tests.

    The head runs as a user whose home is `temp_dir/home`, so what a job writes under `~`
    (e.g. ~/cmd-harness) stays in the test's folder. With `token_auth`, what a plain
    `ray start --head` does once ~/.ray/auth_token exists: token auth on, the token in
    `home/.ray/auth_token`, and `env` carries what a client needs (RAY_AUTH_MODE=token and
    RAY_AUTH_TOKEN_PATH)."""
    for _ in range(2):
        try:
            return _start_head(num_cpus, resources, token_auth)
        except subprocess.CalledProcessError:  # a port free when picked was taken since (tests run in parallel)
            continue
    return _start_head(num_cpus, resources, token_auth)


def _start_head(num_cpus: int, resources: str | None, token_auth: bool) -> RayHead:
    temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    port, dash = free_port(), free_port()
    home = temp_dir / "home"
    home.mkdir()
    env = private_env(HOME=str(home))
    if token_auth:
        token = home / ".ray" / "auth_token"
        token.parent.mkdir()
        token.write_text(secrets.token_hex(32))
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    # The head's own processes (e.g. Train's placement-group cleaner) must find this instance
    # even when another Ray instance runs on the machine.
    env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    cmd = head_command(temp_dir, port, dash, "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                       "--include-dashboard=true", f"--num-cpus={num_cpus}")
    if resources:
        cmd.append(f"--resources={resources}")
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=180)
    except subprocess.CalledProcessError:
        stop_private_ray(temp_dir)  # whatever of it did start
        raise
    head = RayHead(temp_dir, f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", env)
    _wait_dashboard(head)
    return head


def _wait_dashboard(head: RayHead, timeout: float = 60.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{head.dashboard_url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:  # it answers, asking for the token (auth on)
            return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"Ray dashboard at {head.dashboard_url} did not come up")


@contextmanager
def attached(head: RayHead) -> Iterator[RayHead]:
    """This process (and its children) use `head` while inside; afterwards Ray is shut down,
    the environment restored and the head stopped."""
    old = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    os.environ.update(RAY_ADDRESS=head.gcs_address, RAY_AUTH_MODE="disabled")
    try:
        yield head
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        head.stop()
