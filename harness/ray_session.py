"""Joining or starting Ray the way this harness needs it (dashboard on, quiet by default)."""
from __future__ import annotations

import logging
import os

import ray


def connect(verbose: bool = False, num_cpus: int | None = None) -> str:
    """Attach to `RAY_ADDRESS` when set, else start a local instance; returns its address.

    The dashboard stays on: without it Train cannot release a finished trial's resources
    and the next trial hangs (RAY_NOTES.md). The address is exported so Train's cleaner and
    any child process find this instance, not another one on the same machine.
    """
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    level = logging.INFO if verbose else logging.WARNING
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level=level, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=True, logging_level=level, log_to_driver=True,
                 configure_logging=True)
    address = ray.get_runtime_context().gcs_address
    os.environ["RAY_ADDRESS"] = address
    return address
