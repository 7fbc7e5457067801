"""Which search finds a config that is really good: searchers replayed on the recorded demo curves.

    python bench/search.py                   # 200 paired seeds, every arm, the demo's concurrency (2)
    python bench/search.py --quick           # 20 seeds
    python bench/search.py --check-tune 10   # first: the replay's decisions against real Ray Tune, 10 seeds

The objective is not simulated. bench/data/demo_curves_v2.parquet (bench/record_curves.py) holds
every per-epoch metric of real demo runs: configs of tune_spaces/demo.yaml (its base point first)
x run seeds 0, 1, 2 x 9 epochs, probe_top1 on the validation split measured every epoch.

A replayed trial snaps its config to the nearest recorded one (in the unit cube of the space, log
scale for loguniform keys) and replays one recorded seed of it: (a hash of the replay seed and the
sampled values + the trial's run.seed) mod the recorded seeds, so two samples near one recorded
config get independent noise, and a confirm run's other run.seed replays another recorded seed.
The truth a searcher is scored against is each config's seed-mean final value: regret = the
best config's seed-mean minus the seed-mean of the config the arm would report as its best (the
harness's own ranking, harness/objective.py `rank_configs`), at 1/4, 1/2 and 1 x random search's
budget (32 trials x 9 epochs). "Within one SD" = regret <= the pooled seed-to-seed SD of the
final value.

The arms run the harness's own decisions: `BudgetAwareOptunaSearch` (TPE or random, the demo
study's settings) and `ResumableASHA`, driven here by a pure-Python event loop (trials started in
order as slots free up; each round, every running trial reports one epoch, in start order). With
one trial at a time that loop is Tune's own order: `--check-tune N` runs the same arms through
real Ray Tune (harness/tuner.py `build_tuner`, a replay function as the trainable) and compares
every decision (configs suggested, epochs each trial ran, the config chosen).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.record_curves import ROOT, TABLE  # noqa: E402  the table that script writes
from harness.objective import CONFIRM_OF, EPOCH_METRICS, rank_configs, rung_epochs  # noqa: E402
from harness.study_file import Dist, Study, load_study  # noqa: E402

BUDGET_FRACTIONS = (0.25, 0.5, 1.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/search.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", default=str(TABLE), help="recorded curves (bench/record_curves.py)")
    parser.add_argument("--space", default=str(ROOT / "tune_spaces" / "demo.yaml"), help="the study searched")
    parser.add_argument("--seeds", type=int, default=200, help="paired replay seeds (default 200)")
    parser.add_argument("--quick", action="store_true", help="20 seeds")
    parser.add_argument("--budget-trials", type=int, default=32, help="random search's trials: the budget")
    parser.add_argument("--concurrency", type=int, default=2, help="trials at once (the demo's: 2)")
    parser.add_argument("--arms", help="comma-separated arm names (default: all; see ARMS)")
    parser.add_argument("--check-tune", type=int, default=0, metavar="N",
                        help="compare the replay's decisions with real Ray Tune on N seeds (one trial at a time)")
    parser.add_argument("--out", help="write the per-seed results here (parquet)")
    parser.add_argument("--no-base-point", action="store_true",
                        help="arms start from their sampler alone, not from the study's base point (config 0)")
    parser.add_argument("--processes", type=int, default=2, help="seeds replayed in parallel (default 2)")
    parser.add_argument("--from-results", metavar="PARQUET",
                        help="summarise the per-seed results an earlier run wrote with --out; replay nothing")
    return parser.parse_args(argv)


@dataclass
class Arm:
    """One way to search: the sampler, ASHA or not (and on what), and a confirm stage."""

    name: str
    sampler: str
    asha: bool
    rung_metric: str | None = None
    grace: int | None = None
    confirm: tuple[int, int] = (0, 0)  # (top_k, extra seeds)
    startup: int | None = None


ARMS = {a.name: a for a in [
    Arm("random", "random", asha=False),
    Arm("random+asha", "random", asha=True),
    Arm("tpe", "tpe", asha=False),
    Arm("tpe+asha", "tpe", asha=True),
    Arm("random+confirm3x2", "random", asha=False, confirm=(3, 2)),
    Arm("tpe+confirm3x2", "tpe", asha=False, confirm=(3, 2)),
    Arm("tpe+asha+confirm2x1", "tpe", asha=True, confirm=(2, 1)),
    Arm("tpe+asha+confirm3x2", "tpe", asha=True, confirm=(3, 2)),
]}


class Table:
    """The recorded runs: curves by (config, seed), the seed-mean truth, nearest-config lookup."""

    def __init__(self, path: Path, study: Study) -> None:
        import pyarrow.parquet as pq

        frame = pd.read_parquet(path)
        self.meta = {k.decode(): v.decode() for k, v in (pq.read_schema(path).metadata or {}).items()
                     if not k.startswith(b"pandas")}
        self.metric = study.metric
        self.dists = study.space
        self.max_t = int(frame["epoch"].max())
        self.seeds = sorted(int(s) for s in frame["seed"].unique())
        self.configs = sorted(int(c) for c in frame["config_id"].unique())
        self.frame = frame
        self.curves: dict[tuple[int, int], dict[int, dict[str, float]]] = {}
        for (c, s), rows in frame.groupby(["config_id", "seed"]):
            self.curves[int(c), int(s)] = {int(r["epoch"]): r for r in rows.to_dict("records")}
        first = frame.drop_duplicates("config_id").set_index("config_id")
        self.points = {c: [self.unit(d, first.loc[c, d.key]) for d in self.dists] for c in self.configs}
        self.params = {c: {d.key: first.loc[c, d.key] for d in self.dists} for c in self.configs}
        finals = frame[frame["epoch"] == self.max_t].pivot(index="config_id", columns="seed", values=self.metric)
        self.finals = finals
        self.truth = finals.mean(axis=1)  # the seed-mean final value of each config
        self.best = float(self.truth.max())
        self.sd = float(np.sqrt(finals.var(axis=1, ddof=1).mean()))  # pooled seed-to-seed SD

    @staticmethod
    def unit(d: Dist, value: Any) -> float:
        if d.type == "choice":
            return float(d.values.index(value)) / max(1, len(d.values) - 1)
        if d.type == "loguniform":
            return (math.log(value) - math.log(d.low)) / (math.log(d.high) - math.log(d.low))
        return (float(value) - d.low) / (d.high - d.low)

    def nearest(self, config: dict[str, Any]) -> int:
        x = [self.unit(d, config[d.key]) for d in self.dists]
        return min(self.configs, key=lambda c: sum((a - b) ** 2 for a, b in zip(x, self.points[c])))

    def replay(self, config: dict[str, Any], replay_seed: int) -> tuple[int, int]:
        """(recorded config, recorded seed) a trial of `config` replays (module docstring)."""
        search = {d.key: config[d.key] for d in self.dists}
        digest = hashlib.sha256(json.dumps([replay_seed, search], sort_keys=True, default=float).encode()).digest()
        index = (int.from_bytes(digest[:8], "big") + int(config.get("run.seed", 0))) % len(self.seeds)
        return self.nearest(config), self.seeds[index]


@dataclass
class ReplayTrial:
    """What ASHA reads of a Tune trial."""

    trial_id: str
    config: dict[str, Any]
    status: str = "RUNNING"
    has_reported_at_least_once: bool = False
    next_epoch: int = 1
    epochs: int = 0
    values: dict[int, float] = field(default_factory=dict)


def arm_study(base: Study, arm: Arm, seed: int, search_trials: int, concurrency: int) -> Study:
    study = copy.deepcopy(base)
    study.search.sampler, study.search.seed = arm.sampler, seed
    study.search.num_samples, study.search.max_concurrent = search_trials, concurrency
    if arm.startup is not None:
        study.search.startup_trials = arm.startup
    study.scheduler.type = "asha" if arm.asha else "none"
    study.scheduler.rung_metric = arm.rung_metric
    study.scheduler.grace_period = arm.grace or study.scheduler.grace_period
    study.confirm.top_k, study.confirm.seeds = arm.confirm
    return study


def searcher_and_scheduler(study: Study) -> tuple[Any, Any]:
    """The study's own searcher (its trials in memory) and scheduler, as harness/tuner.py makes them."""
    from harness.tuner import tune_config

    config = tune_config(study, "replay")
    searcher, scheduler = config.search_alg, config.scheduler
    searcher.storage = None
    scheduler.set_search_properties(study.metric, study.mode)
    return searcher, scheduler


def reserve(arm: Arm, max_t: int) -> int:
    """Epochs kept for the confirm stage: its most runs (harness/tuner.py `confirm_trials`) x max_t."""
    top_k, seeds = arm.confirm
    return top_k * (1 + seeds) * max_t


def simulate(table: Table, base: Study, arm: Arm, seed: int, budget: int, concurrency: int,
             checkpoints: tuple[int, ...] = ()) -> dict[str, Any]:
    """One arm, one replay seed: trials start until `budget` epochs are spent (less the confirm
    stage's reserve), the ones running then finish, then the confirm stage runs.

    Returns the trials in creation order (config, epochs run), the epochs spent, the config chosen
    at the end and its regret, the regret of the choice when the epochs spent first reach each of
    `checkpoints` (anytime), and `epochs_to_sd`: the epochs spent when the choice first came within
    one SD of the best (checked as each trial ends; None if never)."""
    from ray.tune.schedulers import TrialScheduler

    study = arm_study(base, arm, seed, search_trials=10_000, concurrency=concurrency)
    searcher, scheduler = searcher_and_scheduler(study)
    search_budget = max(budget - reserve(arm, table.max_t), table.max_t)  # at least one search trial
    running: list[ReplayTrial] = []
    trials: list[ReplayTrial] = []
    spent, anytime, to_sd = 0, {}, None
    while True:
        while len(running) < concurrency:
            if spent >= search_budget:  # the search ends; the confirm stage (if any) follows
                searcher.search_trials = min(searcher.search_trials, len(trials) - _confirms(trials))
            config = searcher.suggest(f"t{len(trials):04d}")
            if config is None or config == "FINISHED":
                break
            trial = ReplayTrial(f"t{len(trials):04d}", dict(config))
            scheduler.on_trial_add(None, trial)
            running.append(trial)
            trials.append(trial)
        if not running:
            break
        for trial in list(running):
            result = replay_result(table, study, trial.config, seed, trial.next_epoch)
            trial.has_reported_at_least_once = True
            trial.values[trial.next_epoch] = result[table.metric]
            trial.epochs = trial.next_epoch
            spent += 1
            if scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP or trial.epochs >= table.max_t:
                scheduler.on_trial_complete(None, trial, result)
                searcher.on_trial_complete(trial.trial_id, result)
                trial.status = "TERMINATED"
                running.remove(trial)
                if to_sd is None and regret(table, study, trials) <= table.sd:
                    to_sd = spent
            else:
                searcher.on_trial_result(trial.trial_id, result)
                trial.next_epoch += 1
            if spent in checkpoints:
                anytime[spent] = regret(table, study, trials)
    return {"trials": decisions([(t.trial_id, t.config, t.epochs) for t in trials]), "spent": spent,
            "chosen": chosen(table, study, trials), "regret": regret(table, study, trials),
            "anytime": anytime, "epochs_to_sd": to_sd}


def replay_result(table: Table, study: Study, config: dict[str, Any], seed: int, epoch: int) -> dict[str, float]:
    """What a replayed trial of `config` reports at `epoch`: the objective and the rung metric."""
    cid, rec_seed = table.replay(config, seed)
    row = table.curves[cid, rec_seed][epoch]
    keys = {table.metric, study.scheduler.rung_metric or table.metric}
    return {"epoch": epoch, **{k: float(row[k]) for k in keys}}


def _confirms(trials: list[ReplayTrial]) -> int:
    return sum(bool(t.config.get(CONFIRM_OF)) for t in trials)


def decisions(trials: list[tuple[str, dict[str, Any], int]]) -> list[tuple[dict[str, Any], int]]:
    """(config, epochs run) per trial in creation order, a confirm run naming its search trial by
    position (trial ids differ between the replay and Tune)."""
    position = {tid: i for i, (tid, _, _) in enumerate(trials)}
    out = []
    for _, config, epochs in trials:
        plain = {k: round(float(v), 10) if isinstance(v, float) else v for k, v in sorted(config.items())
                 if k not in (CONFIRM_OF, "run.seed")}
        if config.get(CONFIRM_OF):
            plain.update({"run.seed": int(config["run.seed"]), CONFIRM_OF: position[config[CONFIRM_OF]]})
        out.append((plain, int(epochs)))
    return out


def chosen(table: Table, study: Study, trials: list[ReplayTrial]) -> int | None:
    """The recorded config the harness would report as its best now (harness/objective.py
    `rank_configs`: full-budget trials by value, confirmed configs by mean)."""
    rows = [{"trial_id": t.trial_id, "status": t.status, "epochs": t.epochs,
             "seed": int(t.config.get("run.seed", 0)), CONFIRM_OF: t.config.get(CONFIRM_OF) or "",
             table.metric: t.values[max(t.values)], "objective_epoch": max(t.values)}
            for t in trials if t.values]
    if not rows:
        return None
    ranked = rank_configs(pd.DataFrame(rows), table.metric, study.mode, table.max_t)
    best = ranked.iloc[0]["config_of"]
    return table.nearest(next(t.config for t in trials if t.trial_id == best))


def regret(table: Table, study: Study, trials: list[ReplayTrial]) -> float:
    """The best config's seed-mean final value minus the chosen config's (inf: nothing chosen yet)."""
    config = chosen(table, study, trials)
    return math.inf if config is None else table.best - float(table.truth[config])


def tune_decisions(table: Table, base: Study, arm: Arm, seed: int, budget: int, storage: Path) -> dict[str, Any]:
    """The same arm through real Ray Tune, one trial at a time (`--check-tune`): the trials in
    creation order (config, epochs run) and the config the harness's results code chooses."""
    from ray import tune

    from harness.results import collect
    from harness.tuner import tune_config

    study = arm_study(base, arm, seed, search_trials=10_000, concurrency=1)
    search_budget = max(budget - reserve(arm, table.max_t), table.max_t)
    name = f"{arm.name.replace('+', '_')}-{seed}"
    config = tune_config(study, str(storage / name))
    searcher = config.search_alg
    spent = [0]

    def trainable(trial_config: dict[str, Any]) -> None:
        for epoch in range(1, table.max_t + 1):
            tune.report(replay_result(table, study, trial_config, seed, epoch))

    started: list[str] = []

    class Budget(tune.Callback):
        """Ends the search where `simulate` does: once the epochs spent reach the search budget."""

        def on_trial_start(self, iteration, trials, trial, **info):
            started.append(trial.trial_id)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            spent[0] += 1
            if spent[0] >= search_budget:
                confirms = sum(bool(t.config.get(CONFIRM_OF)) for t in trials)
                searcher.search_trials = min(searcher.search_trials, len(trials) - confirms)

    tuner = tune.Tuner(trainable, param_space={d.key: d.tune_domain() for d in study.space}, tune_config=config,
                       run_config=tune.RunConfig(name=name, storage_path=str(storage), callbacks=[Budget()],
                                                 verbose=0))
    tuner.fit()
    frame, _ = collect(study, str(storage / name), storage / name)
    frame = frame.assign(order=frame["trial_id"].map(started.index)).sort_values("order")  # creation order
    keys = [d.key for d in study.space]
    replayed = [ReplayTrial(r["trial_id"], {**{k: r[k] for k in keys}, "run.seed": int(r["seed"]),
                                            CONFIRM_OF: r[CONFIRM_OF]}, status=r["status"], epochs=int(r["epochs"]),
                            values={int(r["objective_epoch"]): r[table.metric]}) for _, r in frame.iterrows()]
    return {"trials": decisions([(t.trial_id, t.config, t.epochs) for t in replayed]), "spent": spent[0],
            "chosen": chosen(table, study, replayed)}


def rank_correlation(table: Table, signal: str, epoch: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Spearman rho, over configs, of one run's `signal` at `epoch` with the mean final objective of
    the config's other seeds (so the two share no seed noise), averaged over the seeds; and a 90%
    bootstrap interval over configs."""
    from scipy.stats import spearmanr

    at = table.frame[table.frame["epoch"] == epoch].pivot(index="config_id", columns="seed", values=signal)
    pairs = [(at[s], table.finals.drop(columns=s).mean(axis=1)) for s in table.seeds]

    def rho(pick: Any) -> float:
        return float(np.nanmean([spearmanr(a.iloc[pick], b.iloc[pick], nan_policy="omit").statistic
                                 for a, b in pairs]))

    n = len(table.configs)
    boot = [rho(rng.choice(n, n)) for _ in range(500)]
    lo, hi = np.nanpercentile(boot, [5, 95])
    return rho(np.arange(n)), float(lo), float(hi)


def report_signals(table: Table) -> pd.DataFrame:
    """Every recorded signal a study can rung on (harness/objective.py EPOCH_METRICS) at epochs 1-5
    against the final objective, and the objective's own later epochs as the ceiling."""
    import warnings

    warnings.filterwarnings("ignore", category=RuntimeWarning)  # a signal constant at an epoch: NaN, said so
    warnings.filterwarnings("ignore", module="scipy")
    rng = np.random.default_rng(0)
    signals = [c for c in EPOCH_METRICS if c in table.frame and table.frame[c].nunique() > 1]
    rows = [{"signal": signal, "epoch": epoch,
             **dict(zip(("rho", "lo", "hi"), rank_correlation(table, signal, epoch, rng)))}
            for signal in signals for epoch in range(1, 6)]
    frame = pd.DataFrame(rows)
    cells = frame.assign(cell=[f"{r.rho:+.2f} [{r.lo:+.2f}, {r.hi:+.2f}]" for r in frame.itertuples()])
    print("[search] Spearman rho of each signal at epochs 1-5 (one run) with the mean final "
          f"{table.metric} of the config's other seeds; mean over seeds, 90% bootstrap interval over configs:")
    print(cells.pivot(index="signal", columns="epoch", values="cell").to_string())
    early = frame[frame["epoch"] <= 3].assign(strength=frame["rho"].abs()).sort_values("strength", ascending=False)
    print("[search] strongest |rho| by epoch 3: " + "; ".join(f"{r.signal} at epoch {r.epoch}: {r.rho:+.2f}"
                                                               for r in early.head(4).itertuples()))
    later = [(e, *rank_correlation(table, table.metric, e, rng)) for e in range(6, table.max_t + 1)]
    print(f"[search] the ceiling: {table.metric} of one run at epochs 6-{table.max_t} against the other seeds' "
          "mean final: " + ", ".join(f"{e}: {r:+.2f} [{lo:+.2f}, {hi:+.2f}]" for e, r, lo, hi in later))
    return frame


def run_arm(table: Table, base: Study, arm: Arm, seed: int, budget: int, concurrency: int) -> dict[str, Any]:
    """Regret at each budget fraction and the epochs until the choice is within one SD.

    An arm without a confirm stage is one run of the whole budget read at 1/4 and 1/2 as it goes
    (anytime); an arm with one is run once per budget, since its confirm stage comes at the end
    (its epochs to within one SD are then those of the smallest budget that got there)."""
    marks = [int(budget * f) for f in BUDGET_FRACTIONS]
    row: dict[str, Any] = {"seed": seed, "arm": arm.name}
    if arm.confirm == (0, 0):
        out = simulate(table, base, arm, seed, budget, concurrency, checkpoints=tuple(marks[:-1]))
        regrets = [out["anytime"].get(m, math.inf) for m in marks[:-1]] + [out["regret"]]
        to_sd = out["epochs_to_sd"]
    else:
        outs = [simulate(table, base, arm, seed, m, concurrency) for m in marks]
        regrets = [o["regret"] for o in outs]
        to_sd = next((o["spent"] for o in outs if o["regret"] <= table.sd), None)
    row.update({f"regret@{f}": r for f, r in zip(BUDGET_FRACTIONS, regrets)})
    row["epochs_to_sd"] = to_sd
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no Tune tables in --check-tune
    seeds = 20 if args.quick else args.seeds
    base = load_study(args.space)
    table = Table(Path(args.table), base)
    pinned = json.loads(table.meta.get("base_point", "{}"))
    base.points = [] if args.no_base_point else [pinned]  # the base point the table was recorded with
    budget = args.budget_trials * table.max_t
    finals = table.truth.sort_values(ascending=False)
    near = int((table.truth >= table.best - table.sd).sum())
    rungs = rung_epochs(base.scheduler.grace_period, base.scheduler.max_t, base.scheduler.reduction_factor)
    print(f"[search] table {args.table}: {len(table.configs)} configs x {len(table.seeds)} seeds x {table.max_t} "
          f"epochs, {base.metric} on split '{table.meta.get('split', '?')}', recorded {table.meta.get('date', '?')} "
          f"on {table.meta.get('machine', '?')}; base point (config 0) {pinned}")
    print(f"[search] seed-mean finals: best {finals.iloc[0]:.4f} (config {finals.index[0]}), median "
          f"{finals.median():.4f}, worst {finals.iloc[-1]:.4f}; across-config SD {table.truth.std():.4f}; "
          f"pooled seed-to-seed SD {table.sd:.4f}; {near} of {len(table.configs)} configs within one SD of the best")
    print(f"[search] ASHA rungs (demo study) {rungs}; budget {args.budget_trials} trials x {table.max_t} epochs "
          f"= {budget}; concurrency {args.concurrency}")
    report_signals(table)

    if args.from_results:
        summarize(pd.read_parquet(args.from_results), table, budget)
        return 0
    arms = [ARMS[a] for a in args.arms.split(",")] if args.arms else list(ARMS.values())
    if args.check_tune:
        check_against_tune(table, base, arms, args.check_tune, budget // 4)
        if not seeds:  # --seeds 0: the check alone
            return 0
    start = time.time()
    print(f"[search] arms start from {'their sampler alone' if args.no_base_point else 'the base point (config 0)'}",
          flush=True)
    rows = []
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(args.processes) as pool:
        jobs = [pool.submit(run_arm, table, base, arm, seed, budget, args.concurrency)
                for seed in range(seeds) for arm in arms]
        for done, job in enumerate(jobs, 1):
            rows.append(job.result())
            if done % (10 * len(arms)) == 0:
                print(f"[search] {done // len(arms)}/{seeds} seeds, {time.time() - start:.0f} s", flush=True)
    frame = pd.DataFrame(rows)
    if args.out:
        frame.to_parquet(args.out, index=False)
    summarize(frame, table, budget)
    return 0


def summarize(frame: pd.DataFrame, table: Table, budget: int) -> None:
    """Per arm: median (and 90% range of) regret at each budget, share within one SD, epochs to it,
    and the paired goal against random search."""
    print(f"\n[search] regret = best seed-mean {table.best:.4f} - seed-mean of the chosen config "
          f"(pooled seed SD {table.sd:.4f}); {frame['seed'].nunique()} paired seeds")
    random_epochs = frame[frame["arm"] == "random"].set_index("seed")["epochs_to_sd"].astype(float)
    for arm, rows in frame.groupby("arm", sort=False):
        cells = []
        for fraction in BUDGET_FRACTIONS:
            r = rows[f"regret@{fraction}"]
            cells.append(f"@{fraction}: median {r.median():.4f}, mean {r.mean():.4f} [90%: {r.quantile(0.05):.4f}, "
                         f"{r.quantile(0.95):.4f}], within SD {100 * (r <= table.sd).mean():.0f}%")
        to_sd = rows.set_index("seed")["epochs_to_sd"].astype(float)
        goal = ""
        if arm != "random" and len(random_epochs):
            never = budget + table.max_t  # not reached within the budget: counted as more than all of it
            a, r = to_sd.fillna(never), random_epochs.reindex(to_sd.index).fillna(never)
            goal = (f"; <= half of random's epochs in {100 * (a <= 0.5 * r).mean():.0f}% of seeds, "
                    f"fewer in {100 * (a < r).mean():.0f}%, more in {100 * (a > r).mean():.0f}%")
        print(f"[search] {arm}: " + " | ".join(cells) + f"; epochs to within SD: median {to_sd.median():.0f} "
              f"(not reached {100 * to_sd.isna().mean():.0f}%){goal}")
    arms = list(dict.fromkeys(frame["arm"]))
    for reference in ("random", "tpe+asha"):
        if reference in arms:
            print(f"[search] paired against {reference} at the full budget (90% bootstrap over seeds): "
                  + "; ".join(paired(frame, arm, reference, table.sd) for arm in arms if arm != reference))


def paired(frame: pd.DataFrame, arm: str, reference: str, sd: float, draws: int = 2000) -> str:
    """`arm` minus `reference` on the same replay seeds: mean regret and the share within one SD."""
    final = frame.pivot(index="seed", columns="arm", values="regret@1.0")[[arm, reference]].dropna()
    diff = (final[arm] - final[reference]).to_numpy()
    within = ((final[arm] <= sd).astype(float) - (final[reference] <= sd).astype(float)).to_numpy()
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(diff), size=(draws, len(diff)))
    d_lo, d_hi = np.quantile(diff[picks].mean(axis=1), [0.05, 0.95])
    w_lo, w_hi = 100 * np.quantile(within[picks].mean(axis=1), [0.05, 0.95])
    return (f"{arm} regret {diff.mean():+.4f} [{d_lo:+.4f}, {d_hi:+.4f}], "
            f"within SD {100 * within.mean():+.0f} pts [{w_lo:+.0f}, {w_hi:+.0f}]")


def check_against_tune(table: Table, base: Study, arms: list[Arm], seeds: int, budget: int) -> None:
    """Every decision of the replay equals real Tune's, one trial at a time (module docstring)."""
    import ray

    from tests.ray_head import attached, start_head

    with attached(start_head(num_cpus=2)), tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
        ray.init(log_to_driver=False, logging_level="ERROR")
        same = total = 0
        for seed in range(seeds):
            for arm in arms:
                ours = simulate(table, base, arm, seed, budget, concurrency=1)
                theirs = tune_decisions(table, base, arm, seed, budget, Path(tmp))
                equal = ours["trials"] == theirs["trials"] and ours["chosen"] == theirs["chosen"]
                same, total = same + equal, total + 1
                print(f"[search] check seed {seed} {arm.name}: {len(ours['trials'])} trials, "
                      f"{'same decisions' if equal else 'DIFFERENT: ' + str((ours, theirs))[:2000]}", flush=True)
        print(f"[search] the replay made Tune's decisions in {same} of {total} (arm, seed) runs "
              f"(budget {budget} epochs, one trial at a time)")


if __name__ == "__main__":
    sys.exit(main())
