"""What a command prints: one line per trial or epoch event, a summary table at the end, and
Ray's own logs only when asked for (`--verbose`)."""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import pandas as pd
from ray.train.v2._internal.execution.callback import WorkerCallback
from ray.tune import Callback

from harness.objective import completed

EVENT_LOGGERS = ("harness", "shards")  # the packages whose INFO records are a command's one-line events


class _EventLines(logging.StreamHandler):
    """Each record as a plain line on the current sys.stdout (looked up per line, so a replaced
    stdout, as under pytest, gets it too)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)
        self.flush()


def show_events() -> None:
    """Print what the harness's and the shards' library modules log at INFO as plain stdout lines,
    the way the commands print their own events (each command calls this first; a module logs
    through `logging.getLogger(__name__)` and never prints)."""
    for name in EVENT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _EventLines) for h in logger.handlers):
            logger.addHandler(_EventLines())
        logger.setLevel(logging.INFO)
        logger.propagate = False


# Read by Ray Train (2.60) from the driver's environment and passed on to its controller and
# workers (ray.train.v2._internal.constants.ENV_VARS_TO_PROPAGATE), so it also reaches the
# workers of a cluster this command only attached to.
PRINT_PATCH_ENV = "RAY_TRAIN_ENABLE_PRINT_PATCH"


class QuietWorkerLogs(WorkerCallback):
    """On each Train worker: no INFO line with the whole metrics dict of every report, and no
    second copy of a worker's error.

    Ray 2.60 logs "Reporting training result ... metrics={...}" under a logger named by its
    file path (ray/train/v2/_internal/execution/context.py), which `ray.train.LoggingConfig`'s
    level does not reach (it filters `ray.train.*` names), while Train sets the worker's root
    logger to INFO with a console handler. The same file and ray/train/v2/_internal/util.py log
    the traceback of every error raised in the training function or in a checkpoint upload, and
    Train hands that error to the driver as well (`WorkerGroupError`), where the command either
    says it in one line (a full disk, harness/disk_full.py) or raises it with the traceback."""

    def after_init_train_context(self) -> None:
        from ray.train.v2._internal import util
        from ray.train.v2._internal.execution import context

        context.logger.setLevel(logging.WARNING)
        context.logger.addFilter(lambda record: record.levelno < logging.ERROR)
        util.logger.addFilter(lambda record: record.levelno < logging.ERROR)


def quiet_train_console(verbose: bool) -> list[Any]:
    """Set up a Train run whose workers' output reaches this console; returns its RunConfig
    callbacks.

    Each print on a worker arrives once: Ray 2.60's print patch would send it through the
    root logger as well as to the worker's stdout, and both streams are forwarded here. Ray's
    per-report lines arrive only when `verbose`."""
    os.environ.setdefault(PRINT_PATCH_ENV, "0")
    return [] if verbose else [QuietWorkerLogs()]


def _params(config: dict[str, Any]) -> str:
    parts = []
    for key, value in sorted(config.items()):
        short = key.split(".")[-1]
        parts.append(f"{short}={value:.3g}" if isinstance(value, float) else f"{short}={value}")
    return " ".join(parts)


class TrialProgress(Callback):
    """Prints start, each epoch's objective, and the end (completed, stopped early, errored)."""

    def __init__(self, metric: str, max_epochs: int) -> None:
        self.metric = metric
        self.max_epochs = max_epochs
        self.start = time.time()
        self.last: dict[str, dict[str, Any]] = {}

    def _say(self, text: str) -> None:
        print(f"[study {time.time() - self.start:6.0f}s] {text}", flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(f"{trial.trial_id} started: {_params(trial.config)}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.last[trial.trial_id] = result
        epoch = result.get("epoch", 0)
        if float(epoch).is_integer():
            self._say(f"{trial.trial_id} epoch {int(epoch)}/{self.max_epochs} "
                      f"{self.metric} {_fmt(result.get(self.metric))} "
                      f"loss {result.get('loss', float('nan')):.4f}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = self.last.get(trial.trial_id, {})
        epochs = result.get("epoch", 0)
        how = "completed" if completed(epochs, self.max_epochs) else f"stopped early by ASHA at epoch {epochs:g}"
        self._say(f"{trial.trial_id} {how}: {self.metric} {result.get(self.metric, float('nan')):.4f}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(f"{trial.trial_id} ERROR: {first_error_line(trial)}")


def _fmt(value: Any) -> str:
    """A metric for the console: '-' when this epoch did not measure it."""
    return "-" if value is None or value != value else f"{value:.4f}"


def first_error_line(trial: Any) -> str:
    """The meaningful line of a trial's error (Ray wraps it in several layers)."""
    error = getattr(trial, "error_msg", None) or str(getattr(trial, "error", "") or "")
    if not error and hasattr(trial, "get_error"):  # Ray 2.60 Trial: the error.txt in its folder
        try:
            error = trial.get_error() or ""
        except Exception:  # noqa: BLE001 - a missing or unreadable file leaves "unknown error"
            error = ""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return lines[-1][:300] if lines else "unknown error"


def summary_table(frame: pd.DataFrame, metric: str, params: list[str], mode: str = "max") -> str:
    """Trials in the study's ranking (harness/objective.py), best first, with their parameters; with
    a confirm stage, each run's seed and the search trial it repeats, then the configs by mean."""
    if frame.empty:
        return "(no trials)"
    confirm = "confirm_of" in frame and frame["confirm_of"].astype(bool).any()
    cols = ["trial_id", metric, "objective_epoch", "epochs", "stop_reason",
            *(["seed", "confirm_of"] if confirm else []), *params]
    shown = frame[[c for c in cols if c in frame]].rename(columns={"objective_epoch": "at_epoch"})
    table = shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    if not confirm:
        return table
    configs = frame[~frame["confirm_of"].astype(bool)].sort_values("config_mean", ascending=mode != "max",
                                                                  na_position="last")
    lines = [f"  {row['trial_id']}  {metric} mean {row['config_mean']:.4f} +- {row['config_std']:.4f} "
             f"over {int(row['config_runs'])} full-budget runs"
             for _, row in configs.iterrows() if row["config_runs"] > 1]
    return table + "\n\nconfirmed configs (mean +- std over seeds):\n" + "\n".join(lines)
