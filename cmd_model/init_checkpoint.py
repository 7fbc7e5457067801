"""Start a run from a checkpoint: what the official code restores.

The paper continues from an ImageNet EsViT Swin-T checkpoint. main_esvit.py (CMD and EsViT) saves
{'student', 'teacher', 'optimizer', 'epoch', 'args', 'dino_loss', 'fp16_scaler'} and restores
student, teacher, optimizer, scaler and the loss's centers from it (`utils.restart_from_checkpoint`),
then restarts every schedule at epoch 0. Here the student, the teacher (backbone, image head,
dense head) and the two centers come back; the optimizer, the scaler and the epoch do not: the
fine-grained run is a new run, and resuming one run is the harness's own checkpoint (which does
restore the optimizer). See cmd_model/README.md.

Three layouts are read:
- official: 'student' / 'teacher' state dicts of main_esvit.py (student under DDP: `module.`;
  Swin and ViT carry `head` and `head_dense` as attributes, ResNet sits in a MultiCropWrapper:
  `backbone.`), heads with `nn.utils.weight_norm` (`last_layer.weight_g` / `weight_v`),
  'dino_loss' with `center` and `center_grid` (DDINOLoss; DINOLoss has only `center`);
- harness: {'engine': CMDEngine.state_dict(), ...} (a run's `state.pt`);
- backbone: any other state dict (timm, or under 'state_dict' / 'model'): the student's backbone
  only, copied into the teacher, heads and centers left at their initialisation.
"""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cmd_model.config import method_uses

# DDP, torch.compile, and DINO / EsViT utils.MultiCropWrapper (its backbone; heads stay `head*`)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "backbone.")
_WEIGHT_NORM = {"last_layer.weight_g": "last_layer.parametrizations.weight.original0",
                "last_layer.weight_v": "last_layer.parametrizations.weight.original1"}
# Buffers the official Swin saves and timm rebuilds (not persistent in timm).
_REBUILT_BUFFERS = ("relative_position_index", "attn_mask")


def load_checkpoint(source: str | Any, location: str | None = None) -> Any:
    """torch.load a local path or an open binary file with weights_only=True; the official 'args'
    (an argparse.Namespace) is allowed as well. Bucket URIs are the caller's: harness/remote_files.py
    reads them and hands the bytes here. `location` names the checkpoint in errors."""
    where = location or str(source)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"model.init_checkpoint: no file at {where}") from exc
    except Exception as exc:  # pickle with custom classes, corrupt file
        raise ValueError(f"model.init_checkpoint {where}: cannot be read with weights_only=True: {exc}") from exc


def restore_init_checkpoint(student: nn.Module, teacher: nn.Module, loss: nn.Module, location: str,
                            read: Callable[[str], Any] = load_checkpoint) -> str:
    """Load the checkpoint at `location` (read by `read`: a local path by default, the harness
    passes its reader of bucket URIs) into the (unwrapped) student and teacher CMDNetworks and the
    CMDLoss centers; returns the layout read. One ValueError lists every missing / unexpected key."""
    ckpt = read(location)
    if not isinstance(ckpt, dict):
        raise ValueError(f"model.init_checkpoint {location}: expected a dict, got {type(ckpt).__name__}")
    problems: list[str] = []
    if "engine" in ckpt and isinstance(ckpt["engine"], dict):
        engine = ckpt["engine"]
        for name, net in (("student", student), ("teacher", teacher)):
            problems += _load(net, engine.get(name, {}), f"engine.{name}")
        problems += _load_centers(loss, engine.get("loss", {}), "engine.loss")
        layout = "harness"
    elif "student" in ckpt and "teacher" in ckpt:
        for name, net in (("student", student), ("teacher", teacher)):
            problems += _load(net, official_to_network(ckpt[name], net), name)
        centers = ckpt.get("dino_loss") or {}
        renamed = {{"center_grid": "center_region"}.get(k, k): v for k, v in centers.items()}
        problems += _load_centers(loss, renamed, "dino_loss")
        layout = "official"
    else:
        state = ckpt
        for k in ("teacher", "state_dict", "model"):  # a DINO teacher alone, timm / torchvision dicts
            if isinstance(state.get(k), dict):
                state = state[k]
                break
        mapped = _backbone_keys({k: v for k, v in _strip(state).items()
                                 if not k.split(".")[0].startswith("head")}, student.backbone.model)
        problems += _load(student.backbone.model, mapped, "backbone")
        if not problems:
            teacher.backbone.load_state_dict(student.backbone.state_dict())
        layout = "backbone"
    if problems:
        raise ValueError(f"model.init_checkpoint {location} ({layout} layout) does not fit this model: "
                         + "; ".join(problems))
    return layout


def official_to_network(state: dict[str, Any], net: nn.Module) -> dict[str, torch.Tensor]:
    """main_esvit.py network keys -> CMDNetwork keys: DDP / MultiCropWrapper prefixes dropped,
    `head_dense` -> `dense_head`, weight_norm's g / v -> the parametrization's original0 / 1, and
    the backbone keys through timm's own filter for the family (original-Swin layout: downsample
    at the end of a stage)."""
    heads: dict[str, torch.Tensor] = {}
    backbone: dict[str, torch.Tensor] = {}
    for k, v in _strip(state).items():
        head = k.split(".")[0]
        if head in ("head", "head_dense"):
            rest = k[len(head) + 1:]
            heads[f"{'dense_head' if head == 'head_dense' else 'head'}.{_WEIGHT_NORM.get(rest, rest)}"] = v
        else:
            backbone[k] = v
    if getattr(net, "dense_head", None) is None:  # method dino: no dense head to restore
        heads = {k: v for k, v in heads.items() if not k.startswith("dense_head.")}
    out = {f"backbone.model.{k}": v for k, v in _backbone_keys(backbone, net.backbone.model).items()}
    out.update(heads)
    return out


def _strip(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        while k.startswith(_WRAPPER_PREFIXES):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def _backbone_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's checkpoint_filter_fn for the model's family (converts the original Swin / DINO ViT
    layouts, resizes position tables), without the buffers timm rebuilds."""
    if state:
        module = importlib.import_module(type(model).__module__)
        filt = getattr(module, "checkpoint_filter_fn", None)
        if filt is not None:
            state = filt(state, model)
    return {k: v for k, v in state.items() if not k.endswith(_REBUILT_BUFFERS)}


def _load(net: nn.Module, state: dict[str, torch.Tensor], where: str) -> list[str]:
    """Copy `state` into `net`; the gated-attention MIL module (not in the official code) may be
    absent. Returns the problem line, or nothing."""
    own = net.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.startswith("mil."))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in sorted(set(state) & set(own)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        return [_keys_line(where, missing, unexpected) + (f", wrong shapes {shapes[:5]}" if shapes else "")]
    net.load_state_dict(state, strict=False)
    return []


def _load_centers(loss: nn.Module, centers: dict[str, Any], where: str) -> list[str]:
    """The image center is required; the region center only where the network has a dense head
    to center (DINOLoss saves `center` alone)."""
    own = loss.state_dict()
    need = ["center"] + (["center_region"] if getattr(loss, "cfg", None) is not None
                         and method_uses(loss.cfg.method, "region") else [])
    missing = [f"{where}.{k}" for k in need if k not in centers]
    unexpected = [f"{where}.{k}" for k in centers if k not in own]
    if missing or unexpected:
        return [_keys_line("centers", missing, unexpected)]
    with torch.no_grad():
        for k, v in centers.items():
            if v.shape != own[k].shape:
                return [f"centers: {where}.{k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}"]
            getattr(loss, k).copy_(v)
    return []


def _keys_line(where: str, missing: list[str], unexpected: list[str]) -> str:
    def show(keys: list[str]) -> str:
        return f"{keys[:12]}{f' (+{len(keys) - 12} more)' if len(keys) > 12 else ''}"

    return f"{where}: missing keys {show(missing)}, unexpected keys {show(unexpected)}"

