"""The CMD loss: image (L_I), region (L_R) and MIL inter-level (L_S, L_T) terms, two centers.

main_esvit.py DDINOLoss.forward ("ours md"). The teacher sees only the 2 global views; terms are
averaged over the pairs (teacher global view i, student view v != i).
    total = mean_pairs(image_weight * L_I + region_weight * L_R) + mil_weight * mean_pairs(L_S [+ L_T])
method "esvit" drops the MIL term; method "dino" keeps L_I only with weight 1 (pure DINO loss,
main_dino.py DINOLoss), whatever image_weight says.
"""
from __future__ import annotations

import math
import typing

import torch
import torch.distributed as dist
from torch import nn

from cmd_model.config import METHOD_TERMS, LossConfig, MILForm, method_uses
from cmd_model.loss.centers import dist_ready, ema_center
from cmd_model.loss.image import image_ce, student_log_probs, teacher_probs
from cmd_model.loss.mil import POOLINGS, bag_log_pool, legacy_kl_div, mil_kl
from cmd_model.loss.region import match_regions, region_ce
from cmd_model.network import NetOutput
from cmd_model.precision import at_least_fp32

MIL_FORMS: tuple[str, ...] = typing.get_args(MILForm)
TERM_NAMES = ("loss_image", "loss_region", "loss_mil_student", "loss_mil_teacher")


class NonFiniteLossError(FloatingPointError):
    """The loss is NaN/inf; `terms` names the non-finite term(s). The caller adds epoch and step."""

    def __init__(self, terms: list[str], values: dict[str, float]) -> None:
        self.terms = terms
        self.values = values
        shown = ", ".join(f"{k}={values[k]}" for k in terms)
        super().__init__(f"non-finite loss term(s): {shown}")


class CMDLoss(nn.Module):
    """Holds the two centers (image, region) as buffers, so they are saved with the engine."""

    def __init__(self, out_dim: int, cfg: LossConfig) -> None:
        super().__init__()
        # Values and combinations are checked with the config (harness.config), before any worker.
        assert cfg.method in METHOD_TERMS and cfg.mil_pooling in POOLINGS and cfg.mil_form in MIL_FORMS, cfg
        assert not (cfg.mil_form == "official" and cfg.mil_pooling == "attention"), cfg
        self.cfg = cfg
        self.out_dim = out_dim
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center_region", torch.zeros(1, out_dim))

    def forward(self, student: NetOutput, teacher: NetOutput, teacher_temp: float
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """Return (total loss, detached terms). Updates the centers after a finite loss."""
        cfg = self.cfg
        n_t = len(teacher.image_logits)
        n_s = len(student.image_logits)
        dense = method_uses(cfg.method, "region")
        use_mil = method_uses(cfg.method, "mil")
        if dense and (student.token_logits is None or teacher.token_logits is None):
            raise ValueError(f"loss.method={cfg.method!r} needs the dense head outputs")

        t_img = [teacher_probs(t, self.center, teacher_temp) for t in teacher.image_logits]
        s_img = [student_log_probs(s, cfg.student_temp) for s in student.image_logits]
        if dense:
            t_tok = [teacher_probs(t, self.center_region, teacher_temp) for t in teacher.token_logits]
            s_tok = [student_log_probs(s, cfg.student_temp) for s in student.token_logits]

        pairs = [(i, v) for i in range(n_t) for v in range(n_s) if v != i]
        if not pairs:
            raise ValueError(f"need at least 2 views: teacher {n_t}, student {n_s}")
        zero = t_img[0].new_zeros(())
        l_img = zero.clone()
        l_reg = zero.clone()
        for i, v in pairs:
            l_img = l_img + image_ce(t_img[i], s_img[v])
            if dense:
                idx = match_regions(student.tokens[v], teacher.tokens[i])
                l_reg = l_reg + region_ce(t_tok[i], s_tok[v], idx)
        l_img = l_img / len(pairs)
        l_reg = l_reg / len(pairs)

        l_ms = zero.clone()
        l_mt = zero.clone()
        if use_mil:
            # L_S depends on the student view only, L_T on the teacher view only: compute once per
            # view, then weight by how often each appears among the pairs (official loops pairs).
            per_s = [self._mil_student(student, v) for v in range(n_s)]
            with torch.no_grad():
                per_t = [self._mil_teacher(teacher, t_img, t_tok, i, teacher_temp) for i in range(n_t)]
            l_ms = sum(per_s[v] for _, v in pairs) / len(pairs)
            l_mt = sum(per_t[i] for i, _ in pairs) / len(pairs)

        if cfg.method == "dino":
            total = l_img
        else:
            total = cfg.image_weight * l_img + cfg.region_weight * l_reg
            if use_mil:
                mil = l_ms + l_mt if cfg.teacher_mil_in_loss else l_ms
                total = total + cfg.mil_weight * mil

        terms = {
            "loss_image": l_img.detach(),
            "loss_region": l_reg.detach(),
            "loss_mil_student": l_ms.detach(),
            "loss_mil_teacher": l_mt.detach(),
        }
        values = {k: float(v) for k, v in terms.items()}
        values["loss"] = float(total.detach())
        bad = [k for k in TERM_NAMES if not math.isfinite(values[k])]
        if not math.isfinite(values["loss"]):
            raise NonFiniteLossError(bad or ["loss"], values)

        values.update(self._collapse_signals(t_img))
        with torch.no_grad():
            self.center.copy_(ema_center(self.center, torch.cat(teacher.image_logits), cfg.center_momentum))
            if dense:
                self.center_region.copy_(ema_center(
                    self.center_region,
                    torch.cat([t.reshape(-1, t.shape[-1]) for t in teacher.token_logits]),
                    cfg.center_momentum,
                ))
        return total, values

    def _mil_student(self, out: NetOutput, v: int) -> torch.Tensor:
        """L_S for student view v: image softmax(h(s)/tau_s) vs bag of softmax(h_d(s_j)/tau_s)."""
        cfg = self.cfg
        tau = cfg.student_temp
        img_logits = at_least_fp32(out.image_logits[v]) / tau
        tok_logits = at_least_fp32(out.token_logits[v]) / tau
        if cfg.mil_form == "official":
            # Verbatim official: F.kl_div(s_cls[v], torch.sum(s_region, 1)) on raw logits / tau_s.
            target = tok_logits.sum(1) if cfg.mil_pooling == "sum" else tok_logits.mean(1)
            return legacy_kl_div(img_logits, target)
        weights = out.mil_weights[v] if out.mil_weights is not None else None
        log_bag = bag_log_pool(torch.log_softmax(tok_logits, -1), cfg.mil_pooling, weights)
        return mil_kl(torch.log_softmax(img_logits, -1), log_bag, cfg.mil_kl_direction, cfg.mil_kl_reduction)

    def _mil_teacher(self, out: NetOutput, t_img: list[torch.Tensor], t_tok: list[torch.Tensor],
                     i: int, temp: float) -> torch.Tensor:
        """L_T for teacher view i on the centered, sharpened teacher distributions (no gradient)."""
        cfg = self.cfg
        if cfg.mil_form == "official":
            # Verbatim official: F.kl_div(t_cls[iq], torch.sum(t_region, 1)), probabilities as input.
            target = t_tok[i].sum(1) if cfg.mil_pooling == "sum" else t_tok[i].mean(1)
            return legacy_kl_div(t_img[i], target)
        weights = out.mil_weights[i] if out.mil_weights is not None else None
        log_img = torch.log_softmax((at_least_fp32(out.image_logits[i]) - self.center) / temp, -1)
        log_tok = torch.log_softmax((at_least_fp32(out.token_logits[i]) - self.center_region) / temp, -1)
        log_bag = bag_log_pool(log_tok, cfg.mil_pooling, weights)
        return mil_kl(log_img, log_bag, cfg.mil_kl_direction, cfg.mil_kl_reduction)

    @torch.no_grad()
    def _collapse_signals(self, t_img: list[torch.Tensor]) -> dict[str, float]:
        """Teacher entropy (mean per image), prototypes used (distinct argmax over the global batch)
        and a collapse flag (uniform: entropy > frac * ln K; dominant: one prototype for all)."""
        probs = torch.cat(t_img)
        entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1)
        ent_sum = entropy.sum().reshape(1)
        count = torch.tensor([float(probs.shape[0])], device=probs.device)
        hist = torch.bincount(probs.argmax(-1), minlength=self.out_dim).float()
        if dist_ready():
            packed = torch.cat([ent_sum, count, hist])
            dist.all_reduce(packed)
            ent_sum, count, hist = packed[:1], packed[1:2], packed[2:]
        ent = float(ent_sum / count)
        used = int((hist > 0).sum())
        uniform = ent > self.cfg.collapse_entropy_frac * math.log(self.out_dim)
        dominant = used <= 1 and float(count) > 1
        return {"teacher_entropy": ent, "prototypes_used": float(used),
                "collapse": float(uniform or dominant)}
