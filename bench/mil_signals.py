"""What the multi-instance term does to training, epoch by epoch, read from finished runs.

    python bench/mil_signals.py 'runs/compare-*'      # the run folders of `python -m harness.compare`

Groups the runs by the loss settings saved in their checkpoints (method, MIL form, weight, KL
direction, pooling) and prints, per group and epoch, the mean over its runs (seeds) of the collapse
signals the engine logs (teacher entropy in nats, prototypes used per batch), the student's MIL
term, the image term, and the probe and kNN top-1 on val where measured. Nothing is re-run: every
number comes from the runs' own per-epoch history (`state.pt`, the newest checkpoint of each run).
"""
from __future__ import annotations

import argparse
import glob
import math
import sys
from collections import defaultdict
from pathlib import Path

from harness.checkpoint import read_state

SIGNALS = ("teacher_entropy", "prototypes_used", "loss_image", "loss_mil_student", "probe_top1", "knn_top1")


def newest_history(run: Path) -> tuple[dict, list[dict[str, float]]] | None:
    """The config and per-epoch history saved in a run's newest checkpoint."""
    checkpoints = sorted(run.glob("checkpoint_*/state.pt"))
    if not checkpoints:
        return None
    state = read_state(checkpoints[-1].parent)
    return state["config"], state["history"]


def group_key(config: dict) -> str:
    loss = config["loss"]
    if loss["method"] != "cmd":
        return loss["method"]
    return (f"cmd {loss['mil_form']} w={loss['mil_weight']:g} {loss['mil_pooling']}"
            + (f" {loss['mil_kl_direction']}" if loss["mil_form"] == "proper_kl" else ""))


def mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders or glob patterns (quoted)")
    args = parser.parse_args(argv)
    folders = sorted({Path(p) for pattern in args.runs for p in glob.glob(pattern)})
    groups: dict[str, list[list[dict[str, float]]]] = defaultdict(list)
    for folder in folders:
        found = newest_history(folder)
        if found:
            groups[group_key(found[0])].append(found[1])
    if not groups:
        print(f"no run with a checkpoint in {' '.join(args.runs)}", file=sys.stderr)
        return 2
    for key, runs in groups.items():
        print(f"\n{key} ({len(runs)} runs; means over runs)")
        print("| epoch | " + " | ".join(SIGNALS) + " |\n|---" * 1 + "|---" * len(SIGNALS) + "|")
        for epoch in range(min(len(h) for h in runs)):
            cells = [mean([h[epoch].get(s, math.nan) for h in runs]) for s in SIGNALS]
            print(f"| {epoch + 1} | " + " | ".join("-" if math.isnan(c) else f"{c:.3f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
