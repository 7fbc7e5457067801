"""What a run writes beside its checkpoints for people and benchmarks: TensorBoard events of each
epoch, and (opt-in, `run.time_marks`) the wall-clock marks bench/goodput.py reads."""
from __future__ import annotations

import json
import math
import os
import time

from shards.urls import is_remote, local_path


class EpochLog:
    """Rank 0's per-epoch metrics as TensorBoard events in the run folder (local storage)."""

    def __init__(self, storage: str, run_name: str, rank: int) -> None:
        self.writer = None
        if rank == 0 and not is_remote(storage):
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(local_path(storage) / run_name / "tensorboard"))

    def write(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()


class TimeMarks:
    """Wall-clock marks of rank 0's start-up and epochs in `timing-<pid>.json` of the run folder.

    Read by bench/goodput.py to say where a trial's time goes; written only with `run.time_marks`
    (the benchmark sets it), on local storage, never read back by training.
    """

    def __init__(self, storage: str, run_name: str, rank: int, enabled: bool) -> None:
        on = enabled and rank == 0 and not is_remote(storage)
        self.path = local_path(storage) / run_name / f"timing-{os.getpid()}.json" if on else None
        self.marks: dict[str, float] = {}
        self.epochs: list[dict[str, float]] = []
        if self.path is not None:
            import psutil  # the benchmark's environment has it (the test extra)

            self.marks = {"process_start": psutil.Process().create_time(), "loop_start": time.time()}

    def mark(self, key: str) -> None:
        if self.path is not None:
            self.marks.setdefault(key, time.time())

    def epoch(self, **times: float) -> None:
        if self.path is not None:
            self.epochs.append(times)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"marks": self.marks, "epochs": self.epochs}))
