"""Token authentication the way the cluster configs set it up, on a throwaway local head.

aws-gpu.yaml / gcp-gpu.yaml start every node with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH
pointing at a file fetched from the secret store (`... --output text` leaves a trailing
newline); KubeRay passes RAY_AUTH_TOKEN from a Secret. This checks that such a head accepts a
client holding the token, and refuses a client with a wrong token and an HTTP request (job API)
without one. The head has its own ports, temp dir and session; only its processes are stopped.
Isolated like tests/test_autoscaling.py (a second Ray instance while the shared-head tests run
would only slow them down).
"""
from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.ray_head import free_port, head_command, kill_all, private_env, processes_mentioning
from tests.test_autoscaling import ISOLATED_MARKS, _session_members

pytestmark = ISOLATED_MARKS


def test_token_file_auth_accepts_the_token_and_refuses_others():
    import ray._private.services

    root = Path(tempfile.mkdtemp(prefix="cmdauth_", dir="/tmp"))
    token = secrets.token_hex(32)
    token_dir = root / "ray-auth"
    token_dir.mkdir(mode=0o700)
    (token_dir / "auth_token").write_text(token + "\n")  # as `aws ssm ... --output text` writes it
    (token_dir / "auth_token").chmod(0o400)

    gcs_port, dashboard_port = free_port(), free_port()
    cmd = head_command(root / "ray", gcs_port, dashboard_port, "--num-cpus=1")
    env = private_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_dir / "auth_token"))
    head = subprocess.Popen(cmd, env=env, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = head.communicate(timeout=180)
        assert head.returncode == 0, out[-3000:]
        address = f"{ray._private.services.get_node_ip_address()}:{gcs_port}"
        probe = f"import ray; ray.init(address='{address}'); print('cpus', ray.cluster_resources()['CPU'])"

        def client(**auth: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-c", probe], env=private_env(**auth),
                                  capture_output=True, text=True, timeout=120)

        good = client(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        assert good.returncode == 0 and "cpus 1.0" in good.stdout, good.stdout + good.stderr[-2000:]
        bad = client(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        assert bad.returncode != 0 and "cpus" not in bad.stdout, "a client with a wrong token connected"
        # refused for its token (Ray 2.60's words), not failing for any other reason
        refusal = "AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing or incorrect"
        assert refusal in bad.stderr, bad.stderr[-3000:]

        url = f"http://127.0.0.1:{dashboard_port}/api/jobs/"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=30)
        assert refused.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        assert urllib.request.urlopen(request, timeout=30).status == 200
    finally:
        kill_all(lambda: _session_members(head.pid))
        kill_all(lambda: processes_mentioning(str(root)))
        leftovers = _session_members(head.pid)
        shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"processes of the test head still running: {leftovers}"
