"""What one epoch of training measured: its step metrics averaged, data wait against compute, and
the one line a run prints for it."""
from __future__ import annotations

import time
from collections import defaultdict


class EpochMeter:
    """Averages step metrics over an epoch and times data wait vs compute."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.steps = 0
        self.images = 0
        self.data_wait = 0.0
        self.step_time = 0.0
        self.skipped = 0
        self.start = time.perf_counter()

    def add(self, metrics: dict[str, float], images: int, wait: float, step: float, skipped: int) -> None:
        for key, value in metrics.items():
            self.sums[key] += float(value)
        self.steps += 1
        self.images += images
        self.data_wait += wait
        self.step_time += step
        self.skipped += skipped

    def summary(self) -> dict[str, float]:
        n = max(self.steps, 1)
        elapsed = time.perf_counter() - self.start
        out = {key: value / n for key, value in self.sums.items()}
        out.update(
            images_per_s=self.images / max(elapsed, 1e-9),
            step_time=self.step_time / n,
            data_wait=self.data_wait / n,
            skipped_samples=float(self.skipped),
            epoch_seconds=elapsed,
        )
        return out


def progress_line(epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    """The run's line for a finished epoch (printed by rank 0 after `[train] `)."""
    return (
        f"epoch {epoch}/{epochs} loss {metrics.get('loss', float('nan')):.4f} "
        f"probe_top1 {metrics.get('probe_top1', float('nan')):.3f} "
        f"knn {metrics.get('knn_top1', float('nan')):.3f} "
        f"img/s {metrics.get('images_per_s', 0.0):.1f} wait {metrics.get('data_wait', 0.0) * 1e3:.0f}ms "
        f"lr {metrics.get('lr', 0.0):.2e} t_temp {metrics.get('teacher_temp', 0.0):.3f}"
    )
