"""Joining or starting Ray the way this harness needs it: explicitly, quiet by default.

Which Ray a command uses is never left to `ray.init()`'s own search: that search attaches to
the address the last `ray start` recorded on this machine, and when that head has died it
retries for minutes with no line saying why. Here `RAY_ADDRESS` must answer within seconds,
a recorded head is used only if it answers, and otherwise a private instance is started.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import ray

from harness.config import ConfigError

log = logging.getLogger(__name__)

PROBE_SECONDS = 5.0


class RayUnreachableError(ConfigError):
    """`RAY_ADDRESS` names a Ray head that does not answer, or refuses this client."""


def quiet_tune(verbose: bool) -> None:
    """Unless verbose: Tune's plain reporter at verbosity 0 (no tables), no slow-callback notes."""
    if not verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "10")
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of `ip:port`, `ray://ip:port` or similar; None when there is no port."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        return (parts.hostname, parts.port) if parts.hostname and parts.port else None
    except ValueError:  # a port that is not a number
        return None


def dialled(address: str) -> str:
    """The address `ray.init` connects to for `address`: Ray 2.60 replaces 127.0.0.1 and
    localhost by this node's IP (services.canonicalize_bootstrap_address)."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        return canonicalize_bootstrap_address(address) or address
    except Exception:  # not a host:port Ray parses (e.g. ray://): probed as written
        return address


def answers(address: str, seconds: float = PROBE_SECONDS) -> bool:
    """Whether something accepts TCP connections at `address` within `seconds`.

    Tried a few times, so a head that is just starting still counts; a dead port is
    refused at once and a firewalled one times out."""
    target = host_port(address)
    if target is None:
        return False
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection(target, timeout=max(0.5, min(2.0, deadline - time.monotonic()))):
                return True
        except OSError:
            if time.monotonic() + 1.0 >= deadline:
                return False
            time.sleep(1.0)


def recorded_head() -> str | None:
    """The address the last `ray start --head` on this machine recorded (its GCS), if any.

    Ray 2.60 keeps it in `<Ray temp dir>/ray_current_cluster` (ray._private.utils.
    write_ray_address, called by `ray start`; removed by `ray stop`), where the temp dir is
    `$RAY_TMPDIR/ray`, else `$TMPDIR/ray`, else /tmp/ray."""
    from ray._private.utils import read_ray_address

    return read_ray_address() or None


def choose_address() -> tuple[str, str]:
    """(what to pass to `ray.init(address=...)`, the line saying which Ray that is).

    Raises RayUnreachableError when `RAY_ADDRESS` is set and nothing answers there."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env == "local":
        return "local", "[ray] started a private local Ray instance (RAY_ADDRESS=local)"
    if env and env != "auto":
        if not answers(dialled(env)):
            raise RayUnreachableError(
                f"RAY_ADDRESS={env}: no Ray head answers there within {PROBE_SECONDS:.0f} s; "
                "start the head (`ray start --head`), fix the address, or unset RAY_ADDRESS "
                "to run on a private local Ray instance")
        return env, f"[ray] attached to the Ray cluster at {env} (RAY_ADDRESS)"
    recorded = recorded_head()
    if recorded and answers(recorded, seconds=2.0):
        # "auto" (not the address itself) lets Ray pick up the token a local head uses.
        return "auto", f"[ray] attached to the Ray head started on this machine at {recorded}"
    if recorded:
        return "local", (f"[ray] started a private local Ray instance (the head recorded at "
                         f"{recorded} by `ray start` does not answer)")
    return "local", "[ray] started a private local Ray instance"


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Drop what C++ code writes to fd 2 meanwhile (Ray's GCS client logs each refusal there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def require_token_if_needed(address: str) -> None:
    """One GCS request before `ray.init`: a head with token auth refuses a client without its
    token, and `ray.init` would retry that for ~30 s and end in a chained traceback."""
    from ray._raylet import GcsClient

    try:
        with _stderr_silenced():
            GcsClient(address=dialled(address))
    except ray.exceptions.AuthenticationError:
        raise RayUnreachableError(
            f"the Ray cluster at {address} uses token auth and refused this client: set "
            "RAY_AUTH_MODE=token and give it the head's token (copy the head's ~/.ray/auth_token "
            "here, or set RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)") from None
    except Exception:  # anything else: ray.init reports it in its own words
        return


@contextmanager
def private_instance_env() -> Iterator[None]:
    """Start a private instance on a GCS port chosen here, with `RAY_ADDRESS` naming it in the
    environment its raylet, and so every worker, inherits.

    Ray 2.60's Train frees a finished run's placement group from a cleaner actor that finds the
    cluster through `RAY_ADDRESS`, else by looking for Ray instances on the machine; with another
    instance up it finds two, fails, and the freed trial's CPUs stay reserved: the next trial
    waits for them forever."""
    from ray._private.ray_constants import GCS_PORT_ENVIRONMENT_VARIABLE
    from ray._private.services import get_node_ip_address

    with socket.socket() as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    saved = {key: os.environ.get(key) for key in ("RAY_ADDRESS", GCS_PORT_ENVIRONMENT_VARIABLE)}
    os.environ.update({"RAY_ADDRESS": f"{get_node_ip_address()}:{port}", GCS_PORT_ENVIRONMENT_VARIABLE: str(port)})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def connect(verbose: bool = False, log_to_driver: bool = True) -> str:
    """Attach to `RAY_ADDRESS`, else to a live head started on this machine, else start a
    private instance; print which in one line and return its GCS address.

    `log_to_driver` shows the workers' output here (train.py's per-epoch lines); a study keeps
    it off unless verbose and prints its own line per trial event. The dashboard stays on:
    without it Train cannot release a finished trial's resources and the next trial hangs
    (Ray 2.60). The address is exported so Train's cleaner and any child process find this
    instance, not another one on the same machine; a private instance's own processes get it
    from its start (`private_instance_env`).
    """
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    address, line = choose_address()
    level = logging.INFO if verbose else logging.WARNING
    kwargs = {"include_dashboard": True} if address == "local" else {}
    if address not in ("auto", "local"):
        require_token_if_needed(address)
    if address == "local":
        with private_instance_env():
            ray.init(address=address, logging_level=level, log_to_driver=log_to_driver, **kwargs)
    else:
        ray.init(address=address, logging_level=level, log_to_driver=log_to_driver, **kwargs)
    log.info(line)
    gcs = ray.get_runtime_context().gcs_address
    os.environ["RAY_ADDRESS"] = gcs
    return gcs
