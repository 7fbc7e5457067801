"""CMD beside its baselines on one budget: random init, DINO, EsViT and CMD, one table.

    python -m harness.compare --config tune_spaces/demo.yaml [key=value ...]

Each method is the same config with `loss.method` switched (DINO: image term only; EsViT:
+ region term; CMD: + the multi-instance term), trained by Ray Train for the same epochs, and
evaluated on the frozen teacher like a study trial. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import sys
import time
import typing

from cmd_model.config import Method
from harness.cli_errors import exit_on_user_error
from harness.config import load_config
from harness.data_check import prepare_paths

METHODS = typing.get_args(Method)  # baselines first
COLUMNS = ("probe_top1", "knn_top1", "rank1", "rank5", "map100")


def table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| backbone | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics.get(c, float('nan')):.3f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tune_spaces/demo.yaml", help="training config or space file")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    base = prepare_paths(load_config(args.config, args.overrides), args.config)

    import torch

    from cmd_model.backbone import build_backbone
    from harness.evaluation import evaluate_backbone
    from harness.train import run

    torch.manual_seed(base.run.seed)
    rows = {"random init": evaluate_backbone(build_backbone(base.model), base.data, base.eval,
                                             torch.device("cpu"), seed=base.run.seed)}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for method in methods:
        cfg = load_config(args.config, [*args.overrides, f"loss.method={method}"])
        cfg = prepare_paths(cfg, args.config)
        print(f"[compare] training {method} for {cfg.optim.epochs} epochs", flush=True)
        rows[method] = run(cfg, f"compare-{method}-{stamp}")
    print(f"\n{table(rows)}\n\n(config {args.config} {' '.join(args.overrides)}; "
          f"{base.optim.epochs} epochs each, teacher features '{base.eval.probe_feature}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
