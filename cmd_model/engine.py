"""CMDEngine: the whole plain-PyTorch CMD training step, so the Ray harness stays thin.

One step (main_esvit.py train_one_epoch): set lr/wd from the schedules, teacher forward on the 2
global views (no grad), student forward on all views, loss, backward, per-parameter gradient clip,
last-layer freeze, optimizer step, EMA teacher update.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cmd_model.backbone import Backbone
from cmd_model.config import LossConfig, ModelConfig, OptimConfig
from cmd_model.ema import ema_update
from cmd_model.heads import cancel_last_layer_grads
from cmd_model.init_checkpoint import load_checkpoint, restore_init_checkpoint
from cmd_model.loss import TERM_NAMES, CMDLoss
from cmd_model.loss.centers import dist_ready
from cmd_model.network import CMDNetwork, build_networks
from cmd_model.schedules import Schedules


def get_params_groups(model: nn.Module) -> list[dict[str, Any]]:
    """DINO utils.get_params_groups: no weight decay on biases and 1-D parameters (norms)."""
    regularized, not_regularized = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith(".bias") or p.ndim <= 1:
            not_regularized.append(p)
        else:
            regularized.append(p)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


@torch.no_grad()
def clip_gradients(model: nn.Module, clip: float) -> float:
    """DINO utils.clip_gradients: each parameter's gradient clipped to norm `clip` on its own.
    Returns the global gradient norm before clipping (for logging)."""
    sq = 0.0
    for p in model.parameters():
        if p.grad is None:
            continue
        norm = p.grad.detach().norm(2)
        sq += float(norm) ** 2
        coef = clip / (norm + 1e-6)
        if coef < 1:
            p.grad.mul_(coef)
    return math.sqrt(sq)


class CMDEngine:
    """Student, teacher, loss (with its centers), AdamW, scaler and schedules for one run.

    `global_batch` is the number of images per optimizer step across all workers (per-worker
    batch * world size * optim.accumulate): the lr scales with it. `steps_per_epoch` and `it` count
    `train_step` calls (micro-steps) from 0: it = epoch * steps_per_epoch + step in the epoch.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        loss_cfg: LossConfig,
        optim_cfg: OptimConfig,
        steps_per_epoch: int,
        global_batch: int,
        device: torch.device | str = "cpu",
        wrap_student: Callable[[nn.Module], nn.Module] | None = None,
        amp_dtype: torch.dtype | None = None,
        read_checkpoint: Callable[[str], Any] = load_checkpoint,
    ) -> None:
        assert optim_cfg.accumulate >= 1, optim_cfg  # checked with the config (harness.config)
        if amp_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"amp_dtype={amp_dtype}; expected None, torch.bfloat16 or torch.float16")
        self.model_cfg, self.loss_cfg, self.optim_cfg = model_cfg, loss_cfg, optim_cfg
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype
        student, teacher = build_networks(model_cfg, loss_cfg)
        if model_cfg.use_bn_in_head and self.device.type == "cuda" and dist_ready() and dist.get_world_size() > 1:
            # main_esvit.py / main_dino.py: BatchNorm synchronised across ranks. Not on CPU, where
            # SyncBatchNorm has no kernel: there each rank normalises over its own batch.
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
        self.loss = CMDLoss(model_cfg.out_dim, loss_cfg)
        if model_cfg.init_checkpoint:  # before DDP wraps the student (it broadcasts rank 0's weights)
            restore_init_checkpoint(student, teacher, self.loss, model_cfg.init_checkpoint, read_checkpoint)
        self.loss.to(self.device)
        self._student: CMDNetwork = student.to(self.device)
        self.teacher: CMDNetwork = teacher.to(self.device)
        self.student: nn.Module = wrap_student(self._student) if wrap_student else self._student
        self.optimizer = torch.optim.AdamW(get_params_groups(self._student))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp_dtype == torch.float16)
        self.schedules = Schedules.build(optim_cfg, loss_cfg, steps_per_epoch, global_batch)
        self.steps_per_epoch = steps_per_epoch
        self.micro_step = 0  # train_step calls so far (accumulation phase)

    @property
    def student_module(self) -> CMDNetwork:
        """The unwrapped student (what EMA and checkpoints use)."""
        return self._student

    @property
    def teacher_backbone(self) -> Backbone:
        """The frozen teacher backbone: what every evaluation uses (official: always the teacher)."""
        return self.teacher.backbone

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def train_step(self, views: list[torch.Tensor], it: int, epoch: int) -> dict[str, float]:
        """One micro-step on `views` (2 global views first, then the local ones).

        Raises cmd_model.loss.NonFiniteLossError (naming the term) before touching any state.
        """
        acc = self.optim_cfg.accumulate
        first = self.micro_step % acc == 0
        last = (self.micro_step + 1) % acc == 0
        sched = self.schedules.at(it, epoch)
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = sched["lr"]
            if i == 0:  # only the first group is regularised (main_esvit.py train_one_epoch)
                group["weight_decay"] = sched["wd"]
        if first:
            self.optimizer.zero_grad(set_to_none=True)
        views = [v.to(self.device, non_blocking=True) for v in views]
        self._student.train()
        self.teacher.train()
        sync = nullcontext() if last or not hasattr(self.student, "no_sync") else self.student.no_sync()
        with sync:
            with self._autocast():
                with torch.no_grad():
                    t_out = self.teacher(views[:2])  # the teacher sees only the 2 global views
                s_out = self.student(views)
            loss, terms = self.loss(s_out, t_out, sched["teacher_temp"])
            self.scaler.scale(loss / acc).backward()
        self.micro_step += 1
        metrics: dict[str, float] = dict(terms)
        metrics.update(sched)
        metrics["optimizer_step"] = float(last)
        if last:
            if self.scaler.is_enabled():
                self.scaler.unscale_(self.optimizer)
            if self.optim_cfg.clip_grad > 0:
                metrics["grad_norm"] = clip_gradients(self._student, self.optim_cfg.clip_grad)
            cancel_last_layer_grads(self._student, epoch, self.optim_cfg.freeze_last_layer)
            self.scaler.step(self.optimizer)  # skipped by the scaler when fp16 grads overflowed
            if self.scaler.is_enabled():
                metrics["loss_scale"] = float(self.scaler.get_scale())
            self.scaler.update()
            ema_update(self.teacher, self._student, sched["momentum"])
        return _average_over_workers(metrics, ("loss",) + TERM_NAMES + ("grad_norm",))

    def state_dict(self) -> dict[str, Any]:
        """Everything a bitwise-exact resume needs (tensors and plain values only)."""
        return {
            "student": self._student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loss": self.loss.state_dict(),
            "micro_step": self.micro_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; a state from a different model config fails naming the keys."""
        missing = [k for k in ("student", "teacher", "optimizer", "loss") if k not in state]
        if missing:
            raise ValueError(f"engine state lacks {missing}: not a CMDEngine.state_dict()")
        for name, module in (("student", self._student), ("teacher", self.teacher), ("loss", self.loss)):
            try:
                module.load_state_dict(state[name])
            except RuntimeError as exc:
                raise ValueError(f"engine state {name!r} does not match this config: {exc}") from exc
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            raise ValueError(f"engine state 'optimizer' does not match this config: {exc}") from exc
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.micro_step = int(state.get("micro_step", 0))


def _average_over_workers(metrics: dict[str, float], keys: tuple[str, ...]) -> dict[str, float]:
    """Average the per-worker loss terms over the world (logging only; equal local batches give
    the global-batch value). Collapse signals are already global."""
    if not dist_ready():
        return metrics
    names = [k for k in keys if k in metrics]
    t = torch.tensor([metrics[k] for k in names], dtype=torch.float64)
    backend = dist.get_backend()
    if backend == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    t = (t / dist.get_world_size()).cpu()
    out = dict(metrics)
    out.update({k: float(v) for k, v in zip(names, t)})
    return out
