"""What the study's own searcher and ASHA cost per trial when a study has many trials, against Tune's
random search with the same ASHA, in one run on one private Ray head.

    python bench/many_trials.py              # 200 trials per arm
    python bench/many_trials.py --quick      # 40

Both arms run the same fast function trainable (4 epochs of a known curve, reported at once, so
what is timed is Tune and the searcher, not training) over the demo study's space, 2 trials at a
time (`--concurrency`), actors reused, stopped by the study's ASHA (harness/asha.py, max_t 4,
grace 1, reduction 2):

- **harness**: `harness.tuner.build_tuner(..., trainable=...)`: `BudgetAwareOptunaSearch` (TPE,
  the demo's settings, its trials in `optuna.journal`), the study's console callback included;
- **tune**: `tune.Tuner` with Tune's default `BasicVariantGenerator` (random search).

Each arm runs in its own driver process (this script with `--arm`), so one arm's memory does not
count against the other. Per arm: wall time / trials and the ratio harness / tune; the searcher's
state (the Optuna journal, and the state files Tune saves: `searcher-state-*.pkl` and
`search_gen_state-*.json`, or `basic-variant-state-*.json`); each call for a new trial that gave
one, timed (Tune's `next_trial`, both arms; the harness searcher's own `suggest` inside it): median
of the first 50, median and max of the last 50; the driver's RSS sampled every 50 ms (before
`fit`, and its peak) and its CPU time (user + system) during `fit`, the load-robust number.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("tune", "harness")
MAX_T = 4
LATE = 50  # "late in the study": the last suggestions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/many_trials.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="trials per arm (default 200)")
    parser.add_argument("--quick", action="store_true", help="40 trials per arm")
    parser.add_argument("--concurrency", type=int, default=2, help="trials at once (default 2)")
    parser.add_argument("--space", default=str(ROOT / "tune_spaces" / "demo.yaml"), help="the study searched")
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # one arm, in its own driver process
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def many_trial_study(space: str, trials: int, concurrency: int) -> Any:
    """The study file's space and searcher settings with `trials` trials, ASHA at 1, 2, 4, no confirm stage."""
    from harness.study_file import load_study

    study = load_study(space)
    study.search.num_samples, study.search.max_concurrent = trials, concurrency
    study.scheduler.type, study.scheduler.max_t = "asha", MAX_T
    study.scheduler.grace_period, study.scheduler.reduction_factor = 1, 2
    study.confirm.top_k, study.confirm.seeds = 0, 0
    return study


def known_curve(study: Any) -> Any:
    """A trainable that reports MAX_T epochs at once: a config's quality (closeness to a fixed point
    in the unit cube of the space) times a rising curve."""
    from ray import tune

    from bench.search import Table

    def trainable(config: dict[str, Any]) -> None:
        x = [Table.unit(d, config[d.key]) for d in study.space]
        quality = 1.0 - sum((v - 0.3) ** 2 for v in x) / len(x)
        for epoch in range(1, MAX_T + 1):
            tune.report({"epoch": epoch, study.metric: quality * (1 - 0.5 ** epoch)})

    return trainable


def timed(cls: type, name: str) -> list[tuple[float, float, bool]]:
    """Time every call of the method `name` of `cls`: (wall seconds, the calling thread's CPU
    seconds, whether it gave a config or a trial: not None, Tune's 'not now', nor FINISHED)."""
    method, calls = getattr(cls, name), []

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        start, cpu = time.perf_counter(), time.thread_time()
        out = method(self, *args, **kwargs)
        calls.append((time.perf_counter() - start, time.thread_time() - cpu,
                      out is not None and not isinstance(out, str)))
        return out

    setattr(cls, name, wrapper)
    return calls


class PeakRSS:
    """The driver's resident memory, sampled on a thread."""

    def __init__(self, every_s: float = 0.05) -> None:
        import psutil

        self.process, self.every_s = psutil.Process(), every_s
        self.start = self.peak = self.process.memory_info().rss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(self.every_s):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def run_arm(arm: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One arm in this process, attached to the head RAY_ADDRESS names."""
    import ray
    from ray import tune
    from ray.tune.search import BasicVariantGenerator, SearchGenerator

    from harness.ray_session import quiet_tune
    from harness.searcher import BudgetAwareOptunaSearch
    from harness.study_storage import JOURNAL
    from harness.tuner import build_tuner, tune_config

    quiet_tune(verbose=False)
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, logging_level="ERROR")
    study = many_trial_study(args.space, args.trials, args.concurrency)
    trainable, uri = known_curve(study), str(folder / arm)
    searcher: dict[str, list[tuple[float, float, bool]]] = {}  # the harness searcher's own methods
    if arm == "harness":
        searcher = {name: timed(BudgetAwareOptunaSearch, name)
                    for name in ("suggest", "on_trial_result", "on_trial_complete")}
        next_trials = timed(SearchGenerator, "next_trial")  # Tune's call: the searcher's suggest, a Trial made
        tuner = build_tuner(study, uri, folder / arm, trainable=trainable, reuse_actors=True)
    else:
        next_trials = timed(BasicVariantGenerator, "next_trial")
        # the study's own ASHA (its searcher, also built here, is not used)
        tuner = tune.Tuner(trainable, param_space={d.key: d.tune_domain() for d in study.space},
                           tune_config=tune.TuneConfig(
                               metric=study.metric, mode=study.mode, scheduler=tune_config(study, uri).scheduler,
                               num_samples=args.trials, max_concurrent_trials=args.concurrency, reuse_actors=True),
                           run_config=tune.RunConfig(name=arm, storage_path=str(folder), verbose=0))
    memory = PeakRSS()
    cpu, start = memory.process.cpu_times(), time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    cpu_s = sum(memory.process.cpu_times()[:2]) - sum(cpu[:2])  # user + system, this driver process only
    memory.stop()
    epochs = [int(r.metrics.get("epoch", 0)) for r in grid]
    state = [p for pattern in ("searcher-state-*.pkl", "search_gen_state-*.json", "basic-variant-state-*.json")
             for p in (folder / arm).glob(pattern)]
    journal = folder / arm / JOURNAL
    return {"arm": arm, "trials": len(grid), "errors": sum(r.error is not None for r in grid),
            "stopped_early": sum(e < MAX_T for e in epochs), "epochs": sum(epochs), "wall_s": wall, "cpu_s": cpu_s,
            "actors": len({r.metrics.get("pid") for r in grid}),  # trainable processes: reused or started
            "suggest": spread(searcher.get("suggest", [])), "next_trial": spread(next_trials),
            "search_alg_s": sum(t for calls in [next_trials, *searcher.values()] for t, _, _ in calls)
            - sum(t for t, _, _ in searcher.get("suggest", [])),  # suggest runs inside next_trial
            "journal_bytes": journal.stat().st_size if journal.is_file() else 0,
            "tune_state_bytes": sum(p.stat().st_size for p in state), "tune_state_files": [p.name for p in state],
            "rss_start": memory.start, "rss_peak": memory.peak}


def spread(calls: list[tuple[float, float, bool]]) -> dict[str, float] | None:
    """Of the calls that gave a config or trial: median wall time of the first LATE; median and max
    wall time and median CPU time of the last LATE (None: not timed)."""
    times = [(t, cpu) for t, cpu, gave in calls if gave]
    if not times:
        return None
    first, late = [t for t, _ in times[:LATE]], [t for t, _ in times[-LATE:]]
    return {"calls": len(times), "first_median": statistics.median(first), "late_median": statistics.median(late),
            "late_max": max(late), "late_cpu_median": statistics.median(cpu for _, cpu in times[-LATE:])}


def ms(timing: dict[str, float] | None) -> str:
    if timing is None:
        return "-"
    return (f"median {timing['first_median'] * 1e3:.2f} ms over the first {LATE}, over the last {LATE} median "
            f"{timing['late_median'] * 1e3:.2f} ms (CPU {timing['late_cpu_median'] * 1e3:.2f} ms), "
            f"max {timing['late_max'] * 1e3:.2f} ms")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.trials = 40
    if args.arm:
        result = run_arm(args.arm, args, Path(args.folder))
        (Path(args.folder) / f"{args.arm}.json").write_text(json.dumps(result))
        return 0

    import psutil

    from tests.ray_head import attached, start_head

    with attached(start_head(num_cpus=args.concurrency)) as head, \
            tempfile.TemporaryDirectory(prefix="many-trials-") as tmp:
        results, loads = {}, {}
        for arm in ARMS:
            load = [os.getloadavg()[0]]
            command = [sys.executable, __file__, "--arm", arm, "--folder", tmp, "--trials", str(args.trials),
                       "--concurrency", str(args.concurrency), "--space", args.space]
            with open(Path(tmp) / f"{arm}.log", "w") as log:
                proc = subprocess.Popen(command, cwd=ROOT, env=head.env, stdout=log, stderr=subprocess.STDOUT)
                while proc.poll() is None:
                    load.append(os.getloadavg()[0])
                    time.sleep(5)
            if proc.returncode:
                print((Path(tmp) / f"{arm}.log").read_text()[-4000:])
                return proc.returncode
            results[arm] = json.loads((Path(tmp) / f"{arm}.json").read_text())
            loads[arm] = (min(load), max(load))
    print(f"[many_trials] {args.trials} trials per arm x {MAX_T} epochs of a known curve, {args.concurrency} at "
          f"a time, actors reused, ASHA grace 1 reduction 2; {psutil.cpu_count()} CPUs")
    for arm in ARMS:
        r = results[arm]
        print(f"[many_trials] {arm} (load average {loads[arm][0]:.1f}-{loads[arm][1]:.1f}): {r['trials']} trials "
              f"({r['stopped_early']} stopped by ASHA, {r['errors']} "
              f"errors, {r['epochs']} epochs reported, {r['actors']} actor processes) in {r['wall_s']:.1f} s = "
              f"{r['wall_s'] / r['trials']:.3f} s per trial, {r['wall_s'] / r['epochs'] * 1e3:.0f} ms per epoch; "
              f"driver CPU {r['cpu_s']:.1f} s = {r['cpu_s'] / r['trials']:.3f} s per trial; "
              f"{r['search_alg_s']:.1f} s in the search algorithm's calls; next_trial: {ms(r['next_trial'])}; "
              f"searcher suggest: {ms(r['suggest'])}; "
              f"Optuna journal {r['journal_bytes'] / 1024:.1f} KiB, Tune's saved searcher state "
              f"{r['tune_state_bytes'] / 1024:.1f} KiB ({', '.join(r['tune_state_files'])}); driver RSS "
              f"{r['rss_start'] / 2**20:.0f} MiB before fit, peak {r['rss_peak'] / 2**20:.0f} MiB")
    h, t = results["harness"], results["tune"]
    per_trial = (h["wall_s"] / h["trials"]) / (t["wall_s"] / t["trials"])
    per_epoch = (h["wall_s"] / h["epochs"]) / (t["wall_s"] / t["epochs"])
    per_trial_cpu = (h["cpu_s"] / h["trials"]) / (t["cpu_s"] / t["trials"])
    print(f"[many_trials] harness / tune: per-trial wall {per_trial:.2f}, per epoch {per_epoch:.2f}, "
          f"per-trial driver CPU {per_trial_cpu:.2f}, "
          f"late next_trial median {h['next_trial']['late_median'] / t['next_trial']['late_median']:.1f}, "
          f"driver peak RSS {h['rss_peak'] / t['rss_peak']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
