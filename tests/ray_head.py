"""A real local Ray head for tests: `ray start --head` on 127.0.0.1 in its own temp folder.

Stopped by killing only the processes that run from that folder, never `ray stop`, which
would kill every Ray process on the machine.
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayHead:
    temp_dir: Path
    gcs_address: str
    dashboard_url: str
    env: dict[str, str]

    def stop(self) -> None:
        marker = str(self.temp_dir)
        procs = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(marker in part for part in proc.info["cmdline"] or []):
                    procs.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_head(num_cpus: int = 2, resources: str | None = None, token_auth: bool = False) -> RayHead:
    """Start a head with the dashboard on (Tune-over-Train needs it) and auth off for tests.

    The head runs as a user whose home is `temp_dir/home`, so what a job writes under `~`
    (e.g. ~/cmd-harness) stays in the test's folder. With `token_auth`, what a plain
    `ray start --head` does once ~/.ray/auth_token exists: token auth on, the token in
    `home/.ray/auth_token`, and `env` carries what a client needs (RAY_AUTH_MODE=token and
    RAY_AUTH_TOKEN_PATH)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    port, dash = free_port(), free_port()
    home = temp_dir / "home"
    home.mkdir()
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", HOME=str(home),
               PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    if token_auth:
        token = home / ".ray" / "auth_token"
        token.parent.mkdir()
        token.write_text(secrets.token_hex(32))
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    # The head's own processes (e.g. Train's placement-group cleaner) must find this instance
    # even when another Ray instance runs on the machine.
    env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
           f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
           f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
           f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
    if resources:
        cmd.append(f"--resources={resources}")
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=180)
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
