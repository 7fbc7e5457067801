"""Evaluate a run's checkpoint the way its study did, plus the paper's protocol.

    python -m harness.evaluate --checkpoint RUN_CHECKPOINT [--data SHARDS] [--paper-probe] [key=value ...]

RUN_CHECKPOINT is a checkpoint folder (what a study prints as "best checkpoint" and writes in
best.json) or its `state.pt`. The run's own config (saved in the checkpoint) gives the data split,
the eval settings and the seed, so the printed probe_top1 is the study's number for the same split;
`eval.*` / `data.*` overrides change them (e.g. eval.knn_feature=avgpool).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from harness.checkpoint import STATE_FILE, read_state
from harness.cli_errors import exit_on_user_error
from harness.config import ConfigError, TrainConfig, build_config, parse_overrides, to_dict

# Keys older checkpoints carry that the config no longer has (their value changes nothing here).
_RETIRED_KEYS = {"model": ("init_checkpoint_key",)}


def read_run_state(location: str) -> tuple[dict[str, Any], TrainConfig, str]:
    """(state, the run's config, the state file) from a checkpoint folder or its state file,
    read by the one checkpoint reader (its commit record checked)."""
    path = Path(location).expanduser()
    if path.is_file() and path.name == STATE_FILE:
        path = path.parent
    if not path.is_dir():
        raise ConfigError(f"--checkpoint {location}: no such checkpoint folder or {STATE_FILE} in one")
    state = read_state(path)
    if "engine" not in state:
        raise ConfigError(f"--checkpoint {path}: expected a run checkpoint with 'engine' and 'config'")
    config = {section: dict(values) if isinstance(values, dict) else values
              for section, values in state["config"].items()}
    for section, keys in _RETIRED_KEYS.items():
        for key in keys:
            config.get(section, {}).pop(key, None)
    state_file = path / STATE_FILE
    return state, build_config(config, source=f"{state_file} (saved config)"), str(state_file)


def load_teacher_backbone(state: dict[str, Any], cfg: TrainConfig, device: str) -> torch.nn.Module:
    """The checkpoint's teacher backbone (every evaluation uses the teacher, as the official code)."""
    from dataclasses import replace

    from cmd_model.network import build_network

    teacher = build_network(replace(cfg.model, init_checkpoint=None), cfg.loss)
    try:
        teacher.load_state_dict(state["engine"]["teacher"])
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint teacher weights do not match its own config: {exc}".splitlines()[0]) from None
    return teacher.to(device).eval().backbone


def evaluate_checkpoint(checkpoint: str, overrides: list[str] | None = None, data: str | None = None,
                        paper: bool = False, device: str = "cpu") -> dict[str, float]:
    """The study's metrics of a checkpoint's teacher (same split, eval settings and seed unless
    overridden), kNN for every eval.knn_k and, with `paper`, the official linear-probe protocol."""
    from cmd_model.knn import knn_top1
    from cmd_model.probe import paper_probe
    from harness.backbone_eval import score_features, split_features
    from harness.preflight import check_shards

    state, cfg, path = read_run_state(checkpoint)
    changes = parse_overrides(overrides or [])
    bad = [k for k in changes if not k.startswith(("eval.", "data."))]
    if bad:
        raise ConfigError(f"override '{bad[0]}': only eval.* and data.* change an evaluation")
    if data:
        changes["data.shards"] = data
    cfg = build_config(to_dict(cfg), changes, source=f"{path} (saved config + overrides)")
    check_shards(cfg.data, f"{path} (saved config + overrides)")
    ev = cfg.eval
    features = split_features(load_teacher_backbone(state, cfg, device), cfg.data, ev, device)
    out = score_features(features, ev, seed=cfg.run.seed)
    train, train_y, val, val_y = features
    kf, pf = ev.knn_feature, ev.probe_feature
    for k, v in knn_top1(train[kf], train_y, val[kf], val_y, ev.knn_k, ev.knn_temperature).items():
        out[f"knn_top1[k={k}]"] = v
    if paper:
        result = paper_probe(train[pf], train_y, val[pf], val_y, ev.paper_probe_epochs, ev.paper_probe_batch,
                             ev.paper_probe_lr, cfg.run.seed, device)
        out["paper_probe_top1"] = result.final  # the last epoch
        out["paper_probe_best_top1"] = result.best  # official eval_linear.py: best over epochs, on the test split
    print(f"[evaluate] {path}: split '{cfg.data.val_split}' of {cfg.data.shards}; probe feature '{pf}', "
          f"kNN/retrieval feature '{kf}' ({ev.retrieval_mode}), seed {cfg.run.seed}")
    return out


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (as in best.json) or its state.pt")
    p.add_argument("--data", help="shards folder or URL (default: the run's data.shards)")
    p.add_argument("--paper-probe", action="store_true",
                   help="also the official protocol (SGD, eval.paper_probe_*) on eval.probe_feature")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="eval.* / data.* overrides")
    args = p.parse_args(argv)
    out = evaluate_checkpoint(args.checkpoint, args.overrides, args.data, args.paper_probe, args.device)
    for k, v in out.items():
        print(f"{k}: {v:.4f}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
