"""Per-iteration schedules, precomputed (DINO utils.cosine_scheduler, main_esvit.py train_esvit)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmd_model.config import LossConfig, OptimConfig


def cosine_scheduler(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                     warmup_epochs: int = 0, start_warmup_value: float = 0.0) -> np.ndarray:
    """DINO utils.cosine_scheduler: linear warm-up from start_warmup_value over warmup_epochs,
    then base + (final - base) * (1 - cos(pi * i / n)) / 2 over the remaining n iterations.
    A warm-up longer than the run is clipped to the run (DINO would fail its length assert)."""
    total = epochs * niter_per_ep
    warmup_iters = min(warmup_epochs * niter_per_ep, total)
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    iters = np.arange(total - warmup_iters)
    n = max(len(iters), 1)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / n))
    out = np.concatenate((warmup, schedule)).astype(np.float64)
    assert len(out) == total
    return out


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """Per epoch: linspace(warmup_temp, temp, warmup_epochs) then constant temp (DDINOLoss.__init__).
    Truncated to `epochs` when the warm-up is longer than the run."""
    warm = np.linspace(warmup_temp, temp, warmup_epochs) if warmup_epochs > 0 else np.array([])
    rest = np.ones(max(epochs - warmup_epochs, 0)) * temp
    return np.concatenate((warm, rest))[:epochs].astype(np.float64)


@dataclass
class Schedules:
    """lr, wd, teacher momentum per iteration; teacher temperature per epoch."""

    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray

    @classmethod
    def build(cls, optim: OptimConfig, loss: LossConfig, steps_per_epoch: int, global_batch: int) -> Schedules:
        """lr = optim.lr * global_batch / 256 (linear scaling rule), warm-up optim.warmup_epochs then
        cosine to min_lr; wd cosine weight_decay -> weight_decay_end; momentum cosine
        momentum_teacher -> 1 (main_esvit.py train_esvit)."""
        if steps_per_epoch < 1 or optim.epochs < 1:
            raise ValueError(f"steps_per_epoch={steps_per_epoch} and optim.epochs={optim.epochs} must be >= 1")
        base_lr = optim.lr * global_batch / 256.0
        return cls(
            lr=cosine_scheduler(base_lr, optim.min_lr, optim.epochs, steps_per_epoch, optim.warmup_epochs),
            wd=cosine_scheduler(optim.weight_decay, optim.weight_decay_end, optim.epochs, steps_per_epoch),
            momentum=cosine_scheduler(optim.momentum_teacher, 1.0, optim.epochs, steps_per_epoch),
            teacher_temp=teacher_temp_schedule(loss.warmup_teacher_temp, loss.teacher_temp,
                                               loss.warmup_teacher_temp_epochs, optim.epochs),
        )

    def at(self, it: int, epoch: int) -> dict[str, float]:
        """Values at iteration `it` / epoch `epoch` (clamped to the last entry past the end)."""
        i = min(max(it, 0), len(self.lr) - 1)
        e = min(max(epoch, 0), len(self.teacher_temp) - 1)
        return {"lr": float(self.lr[i]), "wd": float(self.wd[i]), "momentum": float(self.momentum[i]),
                "teacher_temp": float(self.teacher_temp[e])}
