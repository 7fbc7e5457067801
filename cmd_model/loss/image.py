"""Image-level term L_I (DINO): cross-entropy from the centered, sharpened teacher."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cmd_model.precision import at_least_fp32


def teacher_probs(logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """softmax((t - c) / tau_t), detached (main_esvit.py DDINOLoss.forward: centering + sharpening)."""
    return F.softmax((at_least_fp32(logits) - center) / temp, dim=-1).detach()


def student_log_probs(logits: torch.Tensor, temp: float) -> torch.Tensor:
    """log_softmax(s / tau_s)."""
    return F.log_softmax(at_least_fp32(logits) / temp, dim=-1)


def image_ce(t_probs: torch.Tensor, s_log_probs: torch.Tensor) -> torch.Tensor:
    """mean_b -sum_k P_k q_k (DDINOLoss.forward: `torch.sum(-q * F.log_softmax(s_cls[v]), -1)`)."""
    return torch.sum(-t_probs * s_log_probs, dim=-1).mean()
