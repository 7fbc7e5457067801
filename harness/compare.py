"""CMD beside its baselines on one budget: random init, DINO, EsViT and CMD, over seeds, one table.

    python -m harness.compare --config tune_spaces/demo.yaml [--seeds 3] [--methods ...] [key=value ...]

Each method is the same config with `loss.method` switched (DINO: image term only; EsViT:
+ region term; CMD: + the multi-instance term); `cmd-official` and `cmd-proper_kl` are CMD with
`loss.mil_form` set (the official MIL term's gradient balance, or a proper KL), plain `cmd` keeps
the config's form. Each is trained by Ray Train for the same epochs with run.seed = seed, seed+1,
..., and evaluated on the frozen teacher like a study trial. Prints a Markdown table of the mean
and standard deviation over the seeds.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import typing

from cmd_model.config import Method, MILForm
from harness.cli_errors import exit_on_user_error
from harness.config import ConfigError, load_config
from harness.preflight import prepare_paths

# method name -> config overrides
VARIANTS: dict[str, tuple[str, ...]] = {
    **{method: (f"loss.method={method}",) for method in typing.get_args(Method)},  # baselines first
    **{f"cmd-{form}": ("loss.method=cmd", f"loss.mil_form={form}") for form in typing.get_args(MILForm)},
}
DEFAULT_METHODS = typing.get_args(Method)
COLUMNS = ("probe_top1", "knn_top1", "rank1", "rank5", "map100", "map100_official")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for a single value; NaN values propagate)."""
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan


def table(rows: dict[str, list[dict[str, float]]]) -> str:
    """Markdown: one row per method, each cell `mean ± std` over the runs (seeds) of that method."""
    lines = ["| backbone | runs | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name, runs in rows.items():
        cells = []
        for c in COLUMNS:
            mean, std = mean_std([r.get(c, float("nan")) for r in runs])
            cells.append(f"{mean:.3f}" if std != std else f"{mean:.3f} ± {std:.3f}")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tune_spaces/demo.yaml", help="training config or space file")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="runs per method, with run.seed = seed, seed+1, ... (default: %(default)s)")
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray's own logs (placement, each report's metrics); by default "
                             "only one line per epoch and per run, then the table")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in VARIANTS] or ([] if methods else ["(none)"])
    if unknown:
        raise ConfigError(f"--methods: unknown method '{unknown[0]}' (known: {', '.join(VARIANTS)})")
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    base = prepare_paths(load_config(args.config, args.overrides), args.config)
    seeds = [base.run.seed + i for i in range(args.seeds)]
    configs = {(m, s): prepare_paths(load_config(args.config, [*args.overrides, *VARIANTS[m], f"run.seed={s}"]),
                                     args.config)
               for m in methods for s in seeds}  # every config checked before the first run

    from harness.backbone_eval import evaluate_start
    from harness.train import run

    start_name = "init checkpoint" if base.model.init_checkpoint else "random init"
    rows: dict[str, list[dict[str, float]]] = {start_name: []}
    for s in seeds:
        rows[start_name].append(evaluate_start(configs[(methods[0], s)]))  # the backbone init ignores the method
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for method in methods:
        rows[method] = []
        for s in seeds:
            cfg = configs[(method, s)]
            print(f"[compare] training {method} seed {s} for {cfg.optim.epochs} epochs", flush=True)
            metrics = run(cfg, f"compare-{method}-seed{s}-{stamp}", verbose=args.verbose)
            print(f"[compare] {method} seed {s}: " + " ".join(f"{c} {metrics.get(c, float('nan')):.3f}"
                                                              for c in COLUMNS), flush=True)
            rows[method].append(metrics)
    print(f"\n{table(rows)}\n\n(config {args.config} {' '.join(args.overrides)}; {base.optim.epochs} epochs "
          f"each; seeds {seeds}; mean ± sample std over seeds; probe feature '{base.eval.probe_feature}', "
          f"kNN/retrieval feature '{base.eval.knn_feature}'; the last epoch's teacher)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
