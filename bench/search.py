"""TPE+ASHA vs random search without early stopping, through real Ray Tune, on a cheap objective.

    python bench/search.py                 # 7 seeds x 40 samples + overhead (~8 min on 2 busy CPU cores)
    python bench/search.py --quick         # 3 seeds x 20 samples, smaller overhead runs (~3 min)
    python bench/search.py --record bench/search_table.json

Real demo trials cost minutes each on a 2-core CPU, so the objective is a deterministic
learning-curve surrogate over the demo study's space (tune_spaces/demo.yaml):

    probe_top1(p, e) = floor + (ceiling(p) - floor) * (1 - exp(-e / tau(p))) + noise(p, e)

with p mapped to unit coordinates (mil_weight on a log scale, local_crops as (n - 2) / 4):
    u_iw = (image_weight - 0.2) / 0.8        u_rw = region_weight
    u_mil = ln(mil_weight / 0.05) / ln(40)   u_tt = (teacher_temp - 0.02) / 0.05
    u_lc = (local_crops - 2) / 4
    d = [(u_iw - 0.45) / 0.35,
         (u_rw - (0.25 + 0.5 u_iw)) / 0.25,      # region weight's optimum follows image weight
         (u_mil - 0.62) / 0.22,
         (u_tt - (0.60 - 0.30 u_lc)) / 0.25,     # teacher temp's optimum falls as local crops rise
         (u_lc - 0.60) / 0.45]
    ceiling(p) = c_min + (c_max - c_min) * exp(-|d|^2 / 2)      (one optimum region, interactions)
    tau(p) = tau_scale * exp(0.8 (u_tt - 0.5) - 0.8 (u_mil - 0.5) + 0.3 (u_lc - 0.5))
             # a large MIL weight learns fast, a hot teacher slowly: early and final ranks differ
    noise(p, e) = uniform in [-noise, +noise] from a BLAKE2 hash of (rounded p, e): deterministic

floor, c_min, c_max and tau_scale are ASSUMED (floor 0.20, c_min 0.30, c_max 0.72, tau_scale 5
epochs) unless runs/demo/curves.parquet and runs/demo/results.parquet exist (a finished demo study),
in which case they are fitted to its curves by least squares (the shape of ceiling and tau above
is kept). The output says which.

Both searches run through Ray Tune with function trainables that report {"epoch", "probe_top1"}
each epoch, built by the harness's own `_searcher` / `_scheduler` (harness/study.py):
  random:   BasicVariantGenerator(random_state=seed) + FIFOScheduler, --samples trials of max_t epochs
  TPE+ASHA: BudgetAwareOptunaSearch(TPESampler(seed)) + ASHAScheduler(time_attr="epoch", max_t,
            grace_period, reduction_factor), run until it reaches random search's best or has spent
            random search's whole epoch budget (trial count capped by --tpe-max-samples).
Epochs spent are counted in the order Tune receives results (each result is one trained epoch,
over all trials, max_concurrent_trials=--concurrency). The target is random search's best reported
probe_top1 minus --tol; the ratio per seed is TPE+ASHA's epochs to the target over random search's
epochs to the same target. Goal: median ratio <= 0.5 over >= 5 seeds. A third arm, random+ASHA
(the same BasicVariantGenerator(random_state=seed) draws as random search, stopped by the same ASHA),
shows how much of the gain ASHA alone brings (--no-attribution skips it). Tune's own loggers are off
for the searches (they only cost wall time; the epochs come from a callback), on for the overhead.
With max_concurrent_trials > 1 the order in which Tune receives results, and so ASHA's decisions and
what TPE has seen when it samples, depends on timing: reruns can differ by a few epochs per seed
(--concurrency 1 is fully deterministic). The objective itself is deterministic.

Last, Tune's per-trial overhead: a trivial trainable (3 epochs of the surrogate, no sleep) run N
times directly in a loop vs N trials through Tune (default settings: no actor reuse, Tune's loggers).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SPACE_FILE = ROOT / "tune_spaces" / "demo.yaml"
KEYS = ("loss.image_weight", "loss.region_weight", "loss.mil_weight", "loss.teacher_temp",
        "data.crops.local_crops")
METRIC = "probe_top1"


# ---------------------------------------------------------------------------- the surrogate
@dataclass(frozen=True)
class Surrogate:
    """probe_top1(params, epoch): a saturating learning curve; see the module docstring."""

    floor: float = 0.20
    c_min: float = 0.30
    c_max: float = 0.72
    tau_scale: float = 5.0
    noise: float = 0.003
    source: str = "assumed (not measured)"

    @staticmethod
    def unit(p: dict[str, Any]) -> tuple[float, float, float, float, float]:
        return ((p["loss.image_weight"] - 0.2) / 0.8,
                float(p["loss.region_weight"]),
                math.log(p["loss.mil_weight"] / 0.05) / math.log(40.0),
                (p["loss.teacher_temp"] - 0.02) / 0.05,
                (p["data.crops.local_crops"] - 2) / 4.0)

    @classmethod
    def quality(cls, p: dict[str, Any]) -> float:
        """exp(-|d|^2 / 2) in (0, 1]: 1 at the optimum."""
        iw, rw, mil, tt, lc = cls.unit(p)
        d = ((iw - 0.45) / 0.35, (rw - (0.25 + 0.5 * iw)) / 0.25, (mil - 0.62) / 0.22,
             (tt - (0.60 - 0.30 * lc)) / 0.25, (lc - 0.60) / 0.45)
        return math.exp(-0.5 * sum(x * x for x in d))

    def ceiling(self, p: dict[str, Any]) -> float:
        return self.c_min + (self.c_max - self.c_min) * self.quality(p)

    @classmethod
    def tau_shape(cls, p: dict[str, Any]) -> float:
        _, _, mil, tt, lc = cls.unit(p)
        return math.exp(0.8 * (tt - 0.5) - 0.8 * (mil - 0.5) + 0.3 * (lc - 0.5))

    def tau(self, p: dict[str, Any]) -> float:
        return self.tau_scale * self.tau_shape(p)

    def jitter(self, p: dict[str, Any], epoch: int) -> float:
        if self.noise <= 0:
            return 0.0
        key = repr(tuple(round(float(p[k]), 6) for k in KEYS) + (int(epoch),)).encode()
        (x,) = struct.unpack("<Q", hashlib.blake2b(key, digest_size=8).digest())
        return self.noise * (2.0 * x / 2.0 ** 64 - 1.0)

    def __call__(self, p: dict[str, Any], epoch: int) -> float:
        g = 1.0 - math.exp(-epoch / self.tau(p))
        return self.floor + (self.ceiling(p) - self.floor) * g + self.jitter(p, epoch)

    def best_possible(self, max_t: int) -> float:
        """The noiseless optimum at max_t epochs (dense scan; for context in the output)."""
        rng = np.random.default_rng(0)
        best = 0.0
        for lc in range(2, 7):
            n = 40_000
            iw = rng.uniform(0.2, 1.0, n); rw = rng.uniform(0, 1, n)
            mil = np.exp(rng.uniform(math.log(0.05), math.log(2.0), n)); tt = rng.uniform(0.02, 0.07, n)
            for i in range(n):
                p = {KEYS[0]: iw[i], KEYS[1]: rw[i], KEYS[2]: mil[i], KEYS[3]: tt[i], KEYS[4]: lc}
                if self.quality(p) > 0.5:
                    v = self.floor + (self.ceiling(p) - self.floor) * (1 - math.exp(-max_t / self.tau(p)))
                    best = max(best, v)
        return best


def calibrate(runs_dir: Path, base: dict[str, Any], noise: float) -> tuple[Surrogate, str]:
    """Fit floor, c_min, c_max, tau_scale to a finished demo study's curves, if there is one."""
    curves_f, results_f = runs_dir / "curves.parquet", runs_dir / "results.parquet"
    if not (curves_f.exists() and results_f.exists()):
        return Surrogate(noise=noise), (f"no {curves_f.relative_to(ROOT) if curves_f.is_relative_to(ROOT) else curves_f}"
                                        " + results.parquet: floor/ceiling/tau constants are ASSUMED, not measured")
    import pandas as pd

    curves, results = pd.read_parquet(curves_f), pd.read_parquet(results_f)
    have = [k for k in KEYS if k in results.columns]
    df = curves[["trial_id", "epoch", METRIC]].merge(results[["trial_id", *have]], on="trial_id")
    df = df[np.isfinite(df[METRIC]) & (df["epoch"] > 0)]
    if df["trial_id"].nunique() < 3 or len(df) < 8:
        return Surrogate(noise=noise), (f"{runs_dir} has only {df['trial_id'].nunique()} trials / {len(df)} points: "
                                        "too few to fit, constants are ASSUMED, not measured")
    rows = [{**base, **{k: r[k] for k in have}} for r in df.to_dict("records")]
    q = np.array([Surrogate.quality(p) for p in rows])
    shape = np.array([Surrogate.tau_shape(p) for p in rows])
    e, y = df["epoch"].to_numpy(float), df[METRIC].to_numpy(float)
    best = None
    for tau_scale in np.geomspace(0.3, 60, 120).tolist():
        g = 1 - np.exp(-e / (tau_scale * shape))
        # y = floor (1 - g) + c_min g (1 - q) + c_max g q: linear in (floor, c_min, c_max)
        a = np.stack([1 - g, g * (1 - q), g * q], axis=1)
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        rmse = float(np.sqrt(np.mean((a @ coef - y) ** 2)))
        if best is None or rmse < best[0]:
            best = (rmse, float(tau_scale), coef)
    rmse, tau_scale, (floor, c_min, c_max) = best
    c_min, c_max = min(c_min, c_max), max(c_min, c_max)
    if not (0 <= floor < c_max <= 1) or tau_scale in (0.3, 60):
        return Surrogate(noise=noise), (f"fit to {runs_dir} is degenerate (floor {floor:.3f}, c_max {c_max:.3f}, "
                                        f"tau_scale {tau_scale:.2f}): constants are ASSUMED, not measured")
    missing = sorted(set(KEYS) - set(have))
    note = (f"CALIBRATED to {runs_dir} ({df['trial_id'].nunique()} trials, {len(df)} points up to epoch "
            f"{int(e.max())}, rmse {rmse:.4f}; c_max is extrapolated beyond that epoch)"
            + (f"; {', '.join(missing)} not in results.parquet, taken as the base config's" if missing else ""))
    return Surrogate(float(floor), float(c_min), float(c_max), tau_scale, noise, note), note


# ---------------------------------------------------------------------------- trainables
def run_trial(config: dict[str, Any], surrogate: Surrogate, epochs: int, report: Callable[[dict], None]) -> None:
    for epoch in range(1, epochs + 1):
        report({"epoch": epoch, METRIC: surrogate(config, epoch)})


def surrogate_trainable(config: dict[str, Any], surrogate: Surrogate, epochs: int) -> None:
    from ray import tune

    run_trial(config, surrogate, epochs, tune.report)


# ---------------------------------------------------------------------------- Tune plumbing
def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg()) + f" (1/5/15 min, {os.cpu_count()} CPUs)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ray(num_cpus: int) -> tuple[str, str, float]:
    """A fresh local instance of our own (dashboard on), exported as RAY_ADDRESS."""
    import ray

    from harness.ray_session import quiet_tune

    quiet_tune(verbose=False)
    # A trial the target stopper ends before its first report has no result files: not news here.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    os.environ.pop("RAY_ADDRESS", None)  # never attach to another instance on this machine
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    temp_dir = tempfile.mkdtemp(prefix="rsb", dir="/tmp")
    t0 = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_port=_free_port(),
             _temp_dir=temp_dir, logging_level="WARNING", log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    os.environ["RAY_ADDRESS"] = address
    return address, temp_dir, time.perf_counter() - t0


def _log_callback():
    from ray.tune import Callback

    class ResultLog(Callback):
        """Every result in the order the Tune controller receives it."""

        def __init__(self) -> None:
            self.rows: list[tuple[str, int, float]] = []
            self.started: list[str] = []

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started.append(trial.trial_id)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.rows.append((trial.trial_id, int(result["epoch"]), float(result[METRIC])))

    return ResultLog()


def _target_stopper(target: float, epoch_budget: int):
    from ray.tune.stopper import Stopper

    class ReachOrBudget(Stopper):
        """End the whole experiment once the target is reached or the epoch budget is spent."""

        def __init__(self) -> None:
            self.epochs, self.done = 0, False

        def __call__(self, trial_id, result):
            self.epochs += 1
            if result[METRIC] >= target or self.epochs >= epoch_budget:
                self.done = True
            return False

        def stop_all(self):
            return self.done

    return ReachOrBudget()


ARMS = {  # name: (sampler, scheduler)
    "random": ("random", "none"),        # the baseline: random search, every trial runs max_t epochs
    "random_asha": ("random", "asha"),   # attribution only: how much of the gain is ASHA alone
    "tpe_asha": ("tpe", "asha"),         # the harness's study: TPE (BudgetAwareOptunaSearch) + ASHA
}


def run_search(arm: str, seed: int, surrogate: Surrogate, args: argparse.Namespace, storage: str,
               target: float | None = None, epoch_budget: int | None = None) -> dict[str, Any]:
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from harness.space import SchedulerSettings, SearchSettings, load_study
    from harness.study import _scheduler, _searcher

    sampler, scheduler = ARMS[arm]
    space = load_study(SPACE_FILE).space
    study = SimpleNamespace(
        metric=METRIC, mode="max", points=[],  # no points_to_evaluate in any arm
        search=SearchSettings(sampler=sampler, seed=seed),
        scheduler=SchedulerSettings(type=scheduler, max_t=args.max_t, grace_period=args.grace,
                                    reduction_factor=args.rf))
    if sampler == "random":
        # _searcher's BasicVariantGenerator is a SearchGenerator: Tune ignores max_concurrent_trials
        # for it (it warns), so the limit goes to the generator itself here.
        search_alg = BasicVariantGenerator(random_state=seed, max_concurrent=args.concurrency)
    else:
        search_alg = _searcher(study)
    log = _log_callback()
    stopper = _target_stopper(target, epoch_budget) if target is not None else None
    num_samples = args.samples if arm == "random" else args.tpe_max_samples
    # Tune's result.json/progress.csv/TensorBoard loggers only cost wall time here (epochs are
    # counted from the callback): off for the searches, on for the overhead measurement.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    tuner = tune.Tuner(
        tune.with_parameters(surrogate_trainable, surrogate=surrogate, epochs=args.max_t),
        param_space={d.key: d.tune_domain() for d in space},
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=search_alg,
                                    scheduler=_scheduler(study), num_samples=num_samples, reuse_actors=True,
                                    max_concurrent_trials=None if sampler == "random" else args.concurrency),
        run_config=tune.RunConfig(name=f"{arm}-s{seed}", storage_path=storage, callbacks=[log],
                                  stop=stopper, verbose=0),
    )
    t0 = time.perf_counter()
    try:
        tuner.fit()
    finally:
        os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)
    return {"rows": log.rows, "started": log.started, "wall_s": time.perf_counter() - t0}


def epochs_to(rows: list[tuple[str, int, float]], threshold: float) -> tuple[int | None, str | None]:
    """1-based count of results (= epochs trained, all trials) until one reaches the threshold."""
    for i, (trial_id, _, value) in enumerate(rows):
        if value >= threshold:
            return i + 1, trial_id
    return None, None


def compare_seed(seed: int, surrogate: Surrogate, args: argparse.Namespace, storage: str) -> dict[str, Any]:
    rnd = run_search("random", seed, surrogate, args, storage)
    best = max(v for _, _, v in rnd["rows"])
    threshold = best - args.tol
    r_epochs, _ = epochs_to(rnd["rows"], threshold)
    budget = len(rnd["rows"])  # random search's whole spend
    out = {"seed": seed, "random_best": best, "target": threshold, "random_epochs_to_target": r_epochs,
           "random_epochs_total": budget, "random_trials": len(rnd["started"]), "random_wall_s": rnd["wall_s"]}
    for arm in ("tpe_asha", "random_asha") if args.attribution else ("tpe_asha",):
        run = run_search(arm, seed, surrogate, args, storage, target=threshold, epoch_budget=budget)
        epochs, trial = epochs_to(run["rows"], threshold)
        spent = len(run["rows"])
        out.update({
            f"{arm}_epochs_to_target": epochs,
            f"{arm}_trials_started_at_target": run["started"].index(trial) + 1 if trial else None,
            f"{arm}_epochs_spent": spent, f"{arm}_trials": len(run["started"]),
            f"{arm}_best": max(v for _, _, v in run["rows"]), f"{arm}_wall_s": run["wall_s"],
            f"{arm}_reached": epochs is not None,
            # not reached: a lower bound (everything it spent, up to random search's whole budget)
            f"{arm}_ratio": (epochs if epochs is not None else spent) / r_epochs,
        })
    return out


# ---------------------------------------------------------------------------- per-trial overhead
def overhead(surrogate: Surrogate, n: int, concurrency: int, storage: str, epochs: int = 3) -> dict[str, Any]:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from harness.space import load_study

    space = load_study(SPACE_FILE).space
    rng = np.random.default_rng(0)
    configs = [{KEYS[0]: rng.uniform(0.2, 1.0), KEYS[1]: rng.uniform(0, 1),
                KEYS[2]: math.exp(rng.uniform(math.log(0.05), math.log(2.0))),
                KEYS[3]: rng.uniform(0.02, 0.07), KEYS[4]: int(rng.integers(2, 7))} for _ in range(n)]
    sink: list[dict] = []
    t0 = time.perf_counter()
    for c in configs:
        run_trial(c, surrogate, epochs, sink.append)
    direct = (time.perf_counter() - t0) / n
    out = {"n": n, "concurrency": concurrency, "epochs": epochs, "direct_s_per_trial": direct}
    for reuse in (False, True):
        tuner = tune.Tuner(
            tune.with_parameters(surrogate_trainable, surrogate=surrogate, epochs=epochs),
            param_space={d.key: d.tune_domain() for d in space},
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=n,
                                        search_alg=BasicVariantGenerator(random_state=0, max_concurrent=concurrency),
                                        scheduler=FIFOScheduler(), reuse_actors=reuse),
            run_config=tune.RunConfig(name=f"overhead-c{concurrency}-r{int(reuse)}", storage_path=storage,
                                      verbose=0),
        )
        t0 = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - t0
        assert len(grid) == n and not grid.errors, grid.errors
        out[f"tune_s_per_trial_reuse_{str(reuse).lower()}"] = wall / n
    return out


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 seeds x 20 samples, smaller overhead runs")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds 0..N-1 (default 7, --quick 3)")
    p.add_argument("--samples", type=int, default=None, help="random search trials (default 40, --quick 20)")
    p.add_argument("--tpe-max-samples", type=int, default=None,
                   help="cap on TPE+ASHA trials (default 4 x samples); it also stops at the target "
                        "or at random search's epoch budget")
    p.add_argument("--max-t", type=int, default=27, help="epochs per full trial (default 27)")
    p.add_argument("--grace", type=int, default=1, help="ASHA grace period in epochs (default 1)")
    p.add_argument("--rf", type=int, default=3, help="ASHA reduction factor (default 3)")
    p.add_argument("--concurrency", type=int, default=2, help="max_concurrent_trials (default 2)")
    p.add_argument("--tol", type=float, default=0.002, help="reached = within this of random's best")
    p.add_argument("--noise", type=float, default=0.003, help="hash noise amplitude (default 0.003)")
    p.add_argument("--no-attribution", dest="attribution", action="store_false",
                   help="skip the random+ASHA arm (which shows how much of the gain is ASHA alone)")
    p.add_argument("--overhead-trials", type=int, default=None, help="trials per overhead run (default 10, --quick 6)")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "demo", help="demo study folder to calibrate to")
    p.add_argument("--record", type=Path, default=None, help="write the numbers to this JSON file")
    a = p.parse_args(argv)
    a.seeds = a.seeds or (3 if a.quick else 7)
    a.samples = a.samples or (20 if a.quick else 40)
    a.tpe_max_samples = a.tpe_max_samples or 4 * a.samples
    a.overhead_trials = a.overhead_trials or (6 if a.quick else 10)

    import optuna
    import ray

    from harness.space import load_study

    study = load_study(SPACE_FILE)
    base = {k: v for k, v in study.points[0].items()} if study.points else {}
    surrogate, note = calibrate(a.runs, base, a.noise)
    print(f"search bench: {platform.machine()}, {os.cpu_count()} CPUs, ray {ray.__version__}, "
          f"optuna {optuna.__version__}, python {platform.python_version()}, load average {_load()}")
    print(f"objective: learning-curve surrogate over {SPACE_FILE.relative_to(ROOT)} (formula in the docstring); {note}")
    print(f"  floor {surrogate.floor:.3f}, c_min {surrogate.c_min:.3f}, c_max {surrogate.c_max:.3f}, "
          f"tau_scale {surrogate.tau_scale:.2f} epochs, noise +-{surrogate.noise}; base config at "
          f"{a.max_t} epochs: {surrogate(base, a.max_t):.4f}; best possible (noiseless): "
          f"{surrogate.best_possible(a.max_t):.4f}")
    print(f"search: {a.seeds} seeds, random {a.samples} trials x {a.max_t} epochs (FIFO) vs TPE+ASHA "
          f"(grace {a.grace}, rf {a.rf}, max_t {a.max_t}; <= {a.tpe_max_samples} trials)"
          + (", and random+ASHA for attribution" if a.attribution else "") + ", "
          f"max_concurrent_trials {a.concurrency}, tol {a.tol}", flush=True)

    address, temp_dir, init_s = start_ray(num_cpus=2)
    storage = tempfile.mkdtemp(prefix="search-bench-")
    print(f"ray: local instance {address} (dashboard on), ray.init {init_s:.1f} s", flush=True)
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    record: dict[str, Any] = {}
    try:
        arms = ("tpe_asha", "random_asha") if a.attribution else ("tpe_asha",)
        print(f"\n{'seed':>4} {'rand best':>9} {'rand ep':>7} {'/total':>6} | TPE+ASHA {'ep':>5} {'trials':>6} "
              f"{'ratio':>7}" + (f" | rand+ASHA {'ep':>5} {'trials':>6} {'ratio':>7}" if a.attribution else "")
              + f" | {'wall s':>8}", flush=True)

        def cell(r: dict[str, Any], arm: str, width: int) -> str:
            done = r[f"{arm}_reached"]
            ep = r[f"{arm}_epochs_to_target"] if done else f">{r[f'{arm}_epochs_spent']}"
            tr = r[f"{arm}_trials_started_at_target"] if done else f">{r[f'{arm}_trials']}"
            ratio = ("" if done else ">=") + format(r[f"{arm}_ratio"], ".3f")
            return f"{' ' * width}{ep!s:>5} {tr!s:>6} {ratio:>7}"

        for seed in range(a.seeds):
            r = compare_seed(seed, surrogate, a, storage)
            rows.append(r)
            print(f"{seed:4d} {r['random_best']:9.4f} {r['random_epochs_to_target']:7d} {r['random_epochs_total']:6d} | "
                  + cell(r, "tpe_asha", 9) + (" | " + cell(r, "random_asha", 10) if a.attribution else "")
                  + " | " + "+".join(f"{r[k + '_wall_s']:.0f}" for k in ("random", *arms)), flush=True)
        summary = {}
        for arm in arms:
            ratios = [r[f"{arm}_ratio"] for r in rows]
            reached = sum(r[f"{arm}_reached"] for r in rows)
            med = statistics.median(ratios)
            summary[arm] = {"median_ratio": med, "reached": reached, "ratios": ratios}
            name = {"tpe_asha": "TPE+ASHA", "random_asha": "random+ASHA (attribution)"}[arm]
            print(f"\n{name}: median ratio of epochs to random search's best (- {a.tol}) = {med:.3f} over {len(rows)} "
                  f"seeds, {reached}/{len(rows)} reached; per seed {', '.join(f'{x:.3f}' for x in ratios)}"
                  + (f"\n  goal (median <= 0.5): {'MET' if med <= 0.5 else 'NOT met'}" if arm == "tpe_asha" else ""),
                  flush=True)
        med = summary["tpe_asha"]["median_ratio"]

        print(f"\nper-trial overhead ({a.overhead_trials} trials of 3 epochs, no sleep):", flush=True)
        ov = [overhead(surrogate, a.overhead_trials, c, storage) for c in (1, a.concurrency)]
        print(f"{'concurrency':>11} {'direct s/trial':>14} | Tune s/trial {'overhead':>8} {'ratio':>8} | "
              f"reuse_actors=True s/trial")
        for o in ov:
            t = o["tune_s_per_trial_reuse_false"]
            o["overhead_s_per_trial"] = t - o["direct_s_per_trial"]
            o["ratio"] = t / o["direct_s_per_trial"]
            print(f"{o['concurrency']:11d} {o['direct_s_per_trial']:14.1e} | {t:12.2f} {o['overhead_s_per_trial']:8.2f} "
                  f"{o['ratio']:8.1e} | {o['tune_s_per_trial_reuse_true']:.2f}")
        print("  (Tune wall per trial = whole Tuner.fit() / trials, default settings except as noted: "
              "actor per trial, Tune's loggers on)")
        total = time.perf_counter() - t_start
        print(f"\ntotal {total:.0f} s (plus ray.init {init_s:.1f} s); load average now {_load()}")
        record = {"command": "python bench/search.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "ray": ray.__version__,
                  "optuna": optuna.__version__, "surrogate": asdict(surrogate), "calibration": note,
                  "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                  "seeds": rows, "median_ratio": med, "summary": summary, "overhead": ov, "ray_init_s": init_s, "total_s": total}
    finally:
        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
        shutil.rmtree(temp_dir, ignore_errors=True)
    if a.record and record:
        a.record.write_text(json.dumps(record, indent=1) + "\n")
        print(f"recorded {a.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
