"""The W&B tracker: Ray's WandbLoggerCallback, one W&B run per Tune trial, offline by default.

Three things in Ray 2.60's callback lose an offline study's runs; the subclasses here change them:
- it asks for an API key at setup unless the driver's environment says WANDB_MODE=offline (or
  disabled), even when the runs it starts are offline: a study with no W&B account stopped with
  "No WandB API key found". Setup here sees the tracker's own mode (also when Tune restores the
  pickled callback of a resumed study);
- each trial's logger writes where it runs, the trial's staging folder in Ray's session
  directory, deleted with the Ray instance (the study folder got a copy taken before the run
  ended). Runs here are written straight into `<study folder>/wandb/offline-run-*-<trial id>`
  (the logger runs on the driver's node), for `wandb sync` to upload later;
- Tune kills a trial's logger actor, and with it W&B's service process, as soon as the logger
  returns from `wandb.finish()`, which does not wait for the service to write and close the run
  file: a run could keep its header only. The logger here returns after `wandb.teardown()`,
  which does.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray.air.integrations.wandb import WANDB_MODE_ENV_VAR, WandbLoggerCallback, _WandbLoggingActor

OFFLINE_MODES = ("offline", "disabled")


class _ClosingLoggingActor(_WandbLoggingActor):
    """Ray's per-trial logger, returning once W&B has closed the trial's run file."""

    def run(self) -> None:
        super().run()
        self._wandb.teardown()


class WandbTracker(WandbLoggerCallback):
    """W&B runs named by Tune trial (run id = trial id) in `project`, written under `folder`/wandb."""

    _logger_actor_cls = _ClosingLoggingActor

    def __init__(self, project: str, mode: str, folder: Path) -> None:
        super().__init__(project=project, mode=mode, dir=str(Path(folder).resolve()))

    def setup(self, *args: Any, **kwargs: Any) -> None:
        mode = self.kwargs["mode"]
        if mode not in OFFLINE_MODES:
            super().setup(*args, **kwargs)
            return
        saved = os.environ.get(WANDB_MODE_ENV_VAR)
        os.environ[WANDB_MODE_ENV_VAR] = mode  # what Ray reads to skip its API key check
        try:
            super().setup(*args, **kwargs)
        finally:
            if saved is None:
                del os.environ[WANDB_MODE_ENV_VAR]
            else:
                os.environ[WANDB_MODE_ENV_VAR] = saved
