"""One CMD pretraining run on Ray Train.

    python harness/train.py --config tune_spaces/demo.yaml [key=value ...]

The config may be a training config (e.g. a study's best_config.yaml) or a space file, whose
`base:` is used. Running the same command again resumes the run from its last checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.cli_errors import exit_on_user_error  # noqa: E402
from harness.config import TrainConfig, load_config  # noqa: E402
from harness.job_paths import keep_out_of_job_copy  # noqa: E402
from harness.preflight import check_writable, is_remote, prepare_paths  # noqa: E402
from harness.ray_session import choose_address  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="harness/train.py",
        description="Pretrain a backbone with CMD on Ray Train (DDP over the configured workers).",
    )
    parser.add_argument("--config", default="tune_spaces/demo.yaml",
                        help="training config YAML, or a space YAML whose 'base' is used "
                             "(default: %(default)s)")
    parser.add_argument("--name", help="run name under run.storage; the same name resumes "
                                       "(default: run.name from the config)")
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray's own logs (placement, each report's metrics); by default "
                             "only one line per epoch and the result")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted config overrides, e.g. optim.epochs=2 loss.mil_weight=0.5")
    return parser.parse_args(argv)


def run(cfg: TrainConfig, name: str, verbose: bool = False) -> dict:
    """Fit one TorchTrainer and return its final metrics (with `checkpoint_path`)."""
    from harness.console import quiet_train_console
    from harness.ray_session import connect
    from harness.trainer import fit

    connect(verbose=verbose)
    result = fit(cfg, name, callbacks=quiet_train_console(verbose), verbose=verbose)
    metrics = dict(result.metrics or {})
    metrics["checkpoint_path"] = result.checkpoint.path if result.checkpoint else None
    return metrics


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config, args.overrides)
    choose_address()  # a dead RAY_ADDRESS ends here, before the demo set is generated
    keep_out_of_job_copy(config, "[train]")
    cfg = prepare_paths(config, args.config)
    if not is_remote(cfg.run.storage):
        check_writable(cfg.run.storage, "'run.storage'", args.config)
    name = args.name or cfg.run.name
    print(f"[train] {cfg.loss.method} on {cfg.data.shards}: {cfg.optim.epochs} epochs, "
          f"{cfg.scaling.num_workers} worker(s); run folder {cfg.run.storage}/{name}", flush=True)
    metrics = run(cfg, name, verbose=args.verbose)
    print(f"[train] done: probe_top1 {metrics.get('probe_top1', float('nan')):.4f} "
          f"(best {metrics.get('best_probe_top1', float('nan')):.4f}), "
          f"checkpoint {metrics['checkpoint_path']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
