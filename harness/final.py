"""The one step that reads test data: the chosen checkpoint measured on the test split.

    python -m harness.final runs/cub                       # best.json's checkpoint, split 'test'
    python -m harness.final runs/cub --checkpoint PATH     # e.g. best_config.yaml trained in full

A study selects on the validation split only (harness/objective.py); its numbers are val numbers.
This command is the explicit final measurement: the same evaluation as the study's objective
(the run's own `eval` settings, probe trained on the train split), on the test split, written to
RUN_DIR/final_test.json with the split, the checkpoint and the seed count in it.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from harness.cli_errors import exit_on_user_error
from harness.config import ConfigError
from harness.results import BEST_JSON

FINAL_JSON = "final_test.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m harness.final",
                                     description="Measure a study's chosen checkpoint on the test split, once.")
    parser.add_argument("run_dir", help="the study folder (holding best.json), e.g. runs/cub")
    parser.add_argument("--checkpoint", help="checkpoint folder or state.pt (default: best.json's)")
    parser.add_argument("--split", default="test", help="the held-out split (default: test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def measure(checkpoint: Path, split: str, device: str) -> dict[str, Any]:
    """The study's evaluation of `checkpoint`'s teacher, with `split` in place of the val split."""
    from harness.backbone_eval import evaluate_backbone
    from harness.evaluate import load_teacher_backbone, read_run_state
    from harness.preflight import prepare_paths

    state, cfg, state_file = read_run_state(str(checkpoint))
    if split in (cfg.data.train_split, cfg.data.val_split):
        role = "train" if split == cfg.data.train_split else "validation"
        raise ConfigError(f"--split {split!r} is the run's {role} "
                          "split: the final measurement needs a held-out split")
    cfg = prepare_paths(cfg, state_file)
    backbone = load_teacher_backbone(state, cfg, device)
    metrics = evaluate_backbone(backbone, replace(cfg.data, val_split=split), cfg.eval, torch.device(device),
                                seed=cfg.run.seed)
    return {"split": split, "selected_on": cfg.data.val_split, "probe_trained_on": cfg.data.train_split,
            "seeds": 1, "checkpoint": state_file, "metrics": metrics}


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = Path(args.run_dir).resolve()
    best_file = folder / BEST_JSON
    if not best_file.is_file():
        raise FileNotFoundError(f"{folder}: no {BEST_JSON} (run the study first: python harness/tune.py)")
    best = json.loads(best_file.read_text())
    checkpoint = Path(args.checkpoint or best["checkpoint_path"] or "")
    result = {"trial_id": best["trial_id"], "params": best["params"], "epoch": best.get("epoch"),
              **measure(checkpoint, args.split, args.device)}
    (folder / FINAL_JSON).write_text(json.dumps(result, indent=2))
    m = result["metrics"]
    print(f"[final] TEST split '{args.split}' (1 seed), trial {best['trial_id']} epoch {best.get('epoch')}: "
          f"probe_top1 {m['probe_top1']:.4f} knn_top1 {m['knn_top1']:.4f} rank1 {m['rank1']:.4f}; "
          f"selected on '{result['selected_on']}' with {best.get('metric', 'probe_top1')} "
          f"{best.get(best.get('metric', 'probe_top1'), float('nan')):.4f} -> {folder / FINAL_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
