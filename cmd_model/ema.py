"""EMA teacher update: the only way the teacher's parameters change."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher = m * teacher + (1 - m) * student, over all parameters (main_esvit.py
    train_one_epoch: `param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)`). Buffers (BN
    running stats) are not averaged, as in DINO. `student` must be the unwrapped module."""
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError(f"teacher has {len(t_params)} parameters, student {len(s_params)}")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
