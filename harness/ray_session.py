"""Joining or starting Ray the way this harness needs it (dashboard on, quiet by default)."""
from __future__ import annotations

import logging
import os

import ray


def quiet_tune(verbose: bool) -> None:
    """Unless verbose: Tune's plain reporter at verbosity 0 (no tables), no slow-callback notes."""
    if not verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "10")
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)


def connect(verbose: bool = False, log_to_driver: bool = True) -> str:
    """Attach to `RAY_ADDRESS` when set, else start a local instance; returns its address.

    `log_to_driver` shows the workers' output here (train.py's per-epoch lines); a study keeps
    it off unless verbose and prints its own line per trial event. The dashboard stays on: without it Train cannot release a finished trial's resources
    and the next trial hangs (Ray 2.60). The address is exported so Train's cleaner and
    any child process find this instance, not another one on the same machine.
    """
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    level = logging.INFO if verbose else logging.WARNING
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level=level, log_to_driver=log_to_driver)
    else:
        ray.init(include_dashboard=True, logging_level=level, log_to_driver=log_to_driver)
    address = ray.get_runtime_context().gcs_address
    os.environ["RAY_ADDRESS"] = address
    return address
