"""Search efficiency on recorded demo learning curves: TPE+ASHA vs random+ASHA vs random search.

    python bench/search.py                 # 10 seeds, all three arms, concurrency 2 (the demo's)
    python bench/search.py --quick         # 3 seeds
    python bench/search.py --startup-trials 4 --multivariate   # a TPE variant

The objective is not simulated: bench/data/demo_curves.parquet holds probe_top1 on the demo's
validation split measured at every epoch of real demo trials (bench/record_curves.py: the base
config, then a seeded random sample of tune_spaces/demo.yaml, one seed each). A replayed trial
snaps the sampled config to the nearest recorded one (in the unit cube of the space: log scale for
loguniform keys) and reports that config's recorded curve, one epoch at a time. So a config means
its recorded curve, and search can only find what was recorded.

Each arm runs the harness's own decisions through real Ray Tune (`harness.tuner.tune_config` on
the demo study: BudgetAwareOptunaSearch + ResumableASHA, or Tune's BasicVariantGenerator):
  random:       `--samples` trials of max_t epochs, no early stopping; its best final value is the target;
  random+ASHA:  the same random draws, stopped by the study's ASHA;
  TPE+ASHA:     the study's TPE sampler and ASHA.
The ASHA arms run until a trial finishes all max_t epochs with a value >= the target, or until
they have spent random search's whole epoch budget. Epochs are counted in the order Tune receives
results (one result = one trained epoch). Reported per seed and as the median: epochs to the
target for each arm, and the ratio to random search's epochs to reach its own best.
Goals (issue "Search decisions people can trust"): TPE+ASHA <= 1/3 of random's epochs, and
fewer than random+ASHA in the median.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from bench.record_curves import ROOT, TABLE  # noqa: E402  the table that script writes
from harness.objective import rung_epochs  # noqa: E402
from harness.study_file import Dist, Study, load_study  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/search.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", default=str(TABLE), help="recorded curves (bench/record_curves.py)")
    parser.add_argument("--space", default=str(ROOT / "tune_spaces" / "demo.yaml"), help="the study searched")
    parser.add_argument("--seeds", type=int, default=10, help="seeds per arm (default 10)")
    parser.add_argument("--quick", action="store_true", help="3 seeds")
    parser.add_argument("--samples", type=int, default=16, help="random search's trials (default 16)")
    parser.add_argument("--concurrency", type=int, default=2, help="trials at once (the demo's: 2)")
    parser.add_argument("--startup-trials", type=int, help="TPE's random start (default: the study's)")
    parser.add_argument("--multivariate", action="store_true", help="multivariate TPE")
    parser.add_argument("--arms", default="random,random+asha,tpe+asha", help="comma-separated arms")
    parser.add_argument("--grace", type=int, help="ASHA grace period in epochs (default: the study's)")
    parser.add_argument("--rf", type=int, help="ASHA reduction factor (default: the study's)")
    return parser.parse_args(argv)


class Table:
    """The recorded configs and their per-epoch objective; nearest-config lookup in the unit cube."""

    def __init__(self, path: Path, study: Study) -> None:
        frame = pd.read_parquet(path)
        self.metric = study.metric
        self.dists = study.space
        self.curves: list[dict[int, float]] = []
        self.points: list[list[float]] = []
        for _, rows in frame.groupby("trial_id", sort=True):
            self.curves.append(dict(zip(rows["epoch"].astype(int), rows[self.metric].astype(float))))
            first = rows.iloc[0]
            self.points.append([self.unit(d, first[d.key]) for d in self.dists])
        self.max_t = max(max(c) for c in self.curves)

    @staticmethod
    def unit(d: Dist, value: Any) -> float:
        if d.type == "choice":
            return float(d.values.index(value)) / max(1, len(d.values) - 1)
        if d.type == "loguniform":
            return (math.log(value) - math.log(d.low)) / (math.log(d.high) - math.log(d.low))
        return (float(value) - d.low) / (d.high - d.low)

    def nearest(self, config: dict[str, Any]) -> int:
        x = [self.unit(d, config[d.key]) for d in self.dists]
        return min(range(len(self.points)), key=lambda i: sum((a - b) ** 2 for a, b in zip(x, self.points[i])))

    def final(self, index: int) -> float:
        return self.curves[index][self.max_t]


def replay(config: dict[str, Any], table: Table) -> None:
    """A trial: the nearest recorded config's curve, one reported epoch at a time."""
    from ray import tune

    curve = table.curves[table.nearest(config)]
    for epoch in range(1, table.max_t + 1):
        tune.report({"epoch": epoch, table.metric: curve.get(epoch, float("nan"))})


def arm_study(base: Study, arm: str, seed: int, args: argparse.Namespace, num_samples: int) -> Study:
    study = copy.deepcopy(base)
    study.search.sampler = "tpe" if arm.startswith("tpe") else "random"
    study.search.seed, study.search.num_samples = seed, num_samples
    study.search.max_concurrent = args.concurrency
    if args.startup_trials is not None:
        study.search.startup_trials = args.startup_trials
    study.search.multivariate = args.multivariate or study.search.multivariate
    study.scheduler.grace_period = args.grace or study.scheduler.grace_period
    study.scheduler.reduction_factor = args.rf or study.scheduler.reduction_factor
    if arm == "random":
        study.scheduler.type = "none"
    return study


def run_arm(base: Study, table: Table, arm: str, seed: int, args: argparse.Namespace, target: float | None,
            budget: int | None, storage: str) -> list[tuple[int, str, int, float]]:
    """[(epochs spent so far, trial id, epoch, value)] in the order Tune received them."""
    from ray import tune

    from harness.tuner import tune_config

    log: list[tuple[int, str, int, float]] = []

    class Count(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            log.append((len(log) + 1, trial.trial_id, int(result["epoch"]), float(result[table.metric])))

    class Done(tune.Stopper):
        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            reached = target is not None and any(e == table.max_t and v >= target for _, _, e, v in log)
            return reached or (budget is not None and len(log) >= budget)

    samples = args.samples if arm == "random" else 4 * args.samples
    study = arm_study(base, arm, seed, args, samples)
    name = f"{arm.replace('+', '_')}-{seed}"
    config = tune_config(study, f"{storage}/{name}")
    config.reuse_actors = True  # replayed trials are instant: only Tune's per-trial actor start would cost
    tuner = tune.Tuner(tune.with_parameters(replay, table=table),
                       param_space={d.key: d.tune_domain() for d in study.space},
                       tune_config=config,
                       run_config=tune.RunConfig(name=name, storage_path=storage, callbacks=[Count()],
                                                 stop=Done(), verbose=0))
    tuner.fit()
    return log


def epochs_to(log: list[tuple[int, str, int, float]], target: float, max_t: int) -> int | None:
    """Epochs spent when a trial first finished all max_t epochs at >= target."""
    return next((n for n, _, e, v in log if e == max_t and v >= target), None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = 3 if args.quick else args.seeds
    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # epochs come from a callback
    base = load_study(args.space)
    table = Table(Path(args.table), base)
    meta = {k.decode(): v.decode() for k, v in
            (__import__("pyarrow.parquet").parquet.read_schema(args.table).metadata or {}).items()
            if not k.startswith(b"pandas")}
    finals = sorted((table.final(i) for i in range(len(table.curves))), reverse=True)
    print(f"[search] table {args.table}: {len(table.curves)} recorded configs x {table.max_t} epochs, "
          f"{base.metric} on split '{meta.get('split', '?')}', seeds per config: {meta.get('seeds', '?')}, "
          f"recorded {meta.get('date', '?')} on {meta.get('machine', '?')}; final values: best {finals[0]:.4f}, "
          f"median {statistics.median(finals):.4f}, worst {finals[-1]:.4f}")
    grace = args.grace or base.scheduler.grace_period
    rf = args.rf or base.scheduler.reduction_factor
    curves = pd.DataFrame(table.curves)
    spearman = curves.corr(method="spearman")[table.max_t]
    print(f"[search] rank correlation (Spearman) of each epoch's value with the final one, over the recorded "
          f"configs: {', '.join(f'{e}: {spearman[e]:+.2f}' for e in sorted(spearman.index))}")
    print(f"[search] ASHA: rungs at epochs {rung_epochs(grace, base.scheduler.max_t, rf)} (grace {grace}, rf {rf}); "
          f"random search {args.samples} trials; concurrency {args.concurrency}; "
          f"TPE startup {args.startup_trials if args.startup_trials is not None else base.search.startup_trials}, "
          f"multivariate {args.multivariate or base.search.multivariate}")
    arms = args.arms.split(",")
    start = time.time()
    from tests.ray_head import attached, start_head  # a private head on free ports, stopped by its own processes

    with attached(start_head(num_cpus=max(2, args.concurrency))):
        ray.init(log_to_driver=False, logging_level="ERROR")
        rows = []
        with tempfile.TemporaryDirectory(prefix="search-bench-") as storage:
            for seed in range(seeds):
                random_log = run_arm(base, table, "random", seed, args, None, None, storage)
                finals_seen = [(n, v) for n, _, e, v in random_log if e == table.max_t]
                target = max(v for _, v in finals_seen)
                random_epochs = next(n for n, v in finals_seen if v == target)
                row = {"seed": seed, "target": target, "random": random_epochs, "budget": len(random_log)}
                for arm in (a for a in arms if a != "random"):
                    log = run_arm(base, table, arm, seed, args, target, len(random_log), storage)
                    row[arm] = epochs_to(log, target, table.max_t)
                rows.append(row)
                cells = " ".join(f"{a} {row[a] if row[a] is not None else '>budget'}" for a in arms if a in row)
                print(f"[search] seed {seed}: target {target:.4f} (random's best, rank "
                      f"{finals.index(target) + 1}/{len(finals)}); epochs to it: {cells}", flush=True)
    frame = pd.DataFrame(rows)
    print()
    for arm in arms:
        if arm == "random" or arm not in frame:
            continue
        spent = frame[arm].fillna(frame["budget"])  # not reached: the whole budget, a lower bound
        ratio = spent / frame["random"]
        reached = int(frame[arm].notna().sum())
        print(f"[search] {arm}: median epochs {statistics.median(spent):.0f} "
              f"vs random {statistics.median(frame['random']):.0f}; "
              f"ratio to random per seed {[round(r, 2) for r in ratio]}, median {statistics.median(ratio):.3f}; "
              f"reached the target in {reached}/{len(frame)} seeds (the others count their whole budget)")
    if {"tpe+asha", "random+asha"} <= set(frame):
        a = frame["tpe+asha"].fillna(frame["budget"])
        b = frame["random+asha"].fillna(frame["budget"])
        print(f"[search] TPE+ASHA vs random+ASHA: median epochs {statistics.median(a):.0f} "
              f"vs {statistics.median(b):.0f}; "
              f"TPE fewer in {int((a < b).sum())}/{len(frame)} seeds, tied {int((a == b).sum())}")
    print(f"[search] {seeds} seeds, {time.time() - start:.0f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
