"""Goodput of a study: how much of a trial's wall time is train steps, against Ray's own floor.

    python bench/goodput.py --quick     # 2 demo trials x 2 epochs + 2 floor trials, 2 at a time
    python bench/goodput.py             # 4 demo trials x 3 epochs + 4 floor trials, 2 at a time
    python bench/goodput.py --from-record FILE   # the breakdown of an earlier `--record FILE` run

(harness) the demo study (`tune_spaces/demo.yaml`: its model, data, search space, Optuna TPE and
          ASHA, `max_t` = the epochs asked for) built by the harness's own `harness.tuner.build_tuner`
          on a private Ray head (`ray start --head`, 2 CPUs as `make demo` gets here, dashboard on).
(floor)   Ray's floor, same run, same head: a Tune trial whose driver builds a TorchTrainer with the
          harness's settings (made by `harness.trainer.build_trainer`: resources, run config,
          checkpoint config; `TuneReportCallback`) and a trivial loop of the same shape: one report
          with a small checkpoint per epoch and nothing else. That driver imports only Ray.
          `--tuned-floor` measures it again with documented Ray settings that start or wait less
          per run (TUNED_ENV below, Tune's reuse_actors).

Where the time goes comes from measured timestamps only: Tune callback times (trial start, each
result, complete), Ray's task table (when each actor was submitted, started and ready: the trial
actor, the Train controller, the Train worker, tied together by which created which) and the worker's
own marks (`timing-<pid>.json`, written by `harness.run_logs.TimeMarks`: process start, loop start,
model built, first step, per epoch loader start, train-step and data-wait seconds, probe,
checkpoint + report). Worker import time is measured in a fresh process with `python -X importtime`.

goodput = seconds in train steps / trial-slot seconds (max_concurrent x the study's `fit()` wall).
Results are recorded in bench/README.md ("## goodput").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the repo root importable
    sys.path.insert(0, str(ROOT))

from ray import tune  # noqa: E402

SPACE = ROOT / "tune_spaces" / "demo.yaml"


# ------------------------------------------------------------------------------------- measuring

class Stamps(tune.Callback):
    """Wall-clock times of each trial's Tune events, the pid of its trial actor, what it reported."""

    def __init__(self) -> None:
        self.trials: dict[str, dict[str, Any]] = {}

    def _t(self, trial: Any) -> dict[str, Any]:
        return self.trials.setdefault(trial.trial_id, {"results": []})

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._t(trial)["start"] = time.time()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        t = self._t(trial)
        t["results"].append({"time": time.time(), **{k: result.get(k) for k in ("epoch", "loss", "probe_top1")}})
        t["pid"] = result.get("pid")
        t["config"] = trial.config

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._t(trial)["end"] = time.time()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._t(trial).update(end=time.time(), error=True)


def trivial_loop(config: dict[str, Any]) -> None:
    """Ray's floor: the harness loop's shape (a report with a checkpoint per epoch), no work.

    Writes the same `timing-<pid>.json` marks as harness.run_logs.TimeMarks, from stdlib + psutil
    only, so the floor's worker imports nothing of the harness.
    """
    import psutil
    import ray.train

    marks = {"process_start": psutil.Process().create_time(), "loop_start": time.time()}
    marks["engine_ready"] = marks["first_step_start"] = marks["loop_start"]
    context = ray.train.get_context()
    folder = Path(config["run"]["storage"]) / context.get_experiment_name()
    epochs = []
    for epoch in range(1, config["optim"]["epochs"] + 1):
        start = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "state.json").write_text(json.dumps({"epoch": epoch}))
            ray.train.report({"epoch": epoch, "probe_top1": 0.0},
                             checkpoint=ray.train.Checkpoint.from_directory(tmp))
        epochs.append({"epoch": epoch, "start": start, "loader_ready": start, "steps_end": start, "step_s": 0.0,
                       "wait_s": 0.0, "probe_s": 0.0, "report_start": start, "report_end": time.time()})
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"timing-{os.getpid()}.json").write_text(json.dumps({"marks": marks, "epochs": epochs}))


# Documented Ray settings that cut what Train V2 starts or waits for per run, propagated from the
# driver to the controller and workers (ray/train/v2/_internal/constants.py): no PreemptionWatcher
# actor per run, and the controller polls its workers every 0.5 s instead of 2 s (reports, finish).
TUNED_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def floor_driver(params: dict[str, Any], prototype: dict[str, Any], env: dict[str, str]) -> None:
    """A trial like harness.tuner.trial_driver: a TorchTrainer with the harness's settings (scaling,
    run and checkpoint config, made by `harness.trainer.build_trainer` in the bench process and
    passed in) and the trivial loop. It imports only Ray, so its start-up is Ray's own."""
    import dataclasses

    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    os.environ.update(env)
    context = tune.get_context()
    # each floor study's own folder: <storage>/<study>/train/train-<trial id>
    storage = str(Path(prototype["run_config"].storage_path).parent.parent / context.get_experiment_name() / "train")
    config = {**prototype["train_loop_config"], "run": {**prototype["train_loop_config"]["run"], "storage": storage}}
    run_config = dataclasses.replace(prototype["run_config"], storage_path=storage,
                                     name=f"train-{context.get_trial_id()}", callbacks=[TuneReportCallback()])
    TorchTrainer(trivial_loop, train_loop_config=config, torch_config=prototype["backend_config"],
                 scaling_config=prototype["scaling_config"], run_config=run_config).fit()


def ray_record(train_dir: Path) -> dict[str, Any]:
    """Ray's own record of a finished study (its actors: who created which, when they were
    submitted, started and ready) and the workers' marks."""
    from ray.util.state import list_tasks

    tasks = list_tasks(detail=True, limit=10_000, raise_on_missing_output=False)
    pid_of_task = {t.task_id: t.worker_pid for t in tasks}
    actors = [{"name": t.func_or_class_name.split(".")[0], "pid": t.worker_pid,
               "parent_pid": pid_of_task.get(t.parent_task_id),
               "submitted": (t.creation_time_ms or 0) / 1e3, "running": (t.start_time_ms or 0) / 1e3,
               "ready": (t.end_time_ms or 0) / 1e3} for t in tasks if t.type == "ACTOR_CREATION_TASK"]
    timing = {}
    for folder in train_dir.glob("train-*"):
        for file in sorted(folder.glob("timing-*.json"))[:1]:
            timing[folder.name.removeprefix("train-")] = {**json.loads(file.read_text()),
                                                          "pid": int(file.stem.split("-")[1])}
    return {"actors": actors, "timing": timing}


def run_study(label: str, tuner: tune.Tuner, stamps: Stamps, train_dir: Path) -> dict[str, Any]:
    """Fit `tuner` (built with `stamps` among its callbacks) and collect what it measured."""
    print(f"[{label}] running ...", flush=True)
    t0 = time.time()
    tuner.fit()
    t1 = time.time()
    print(f"[{label}] fit() took {t1 - t0:.0f} s", flush=True)
    return {"fit_start": t0, "fit_end": t1, "stamps": stamps.trials, **ray_record(train_dir)}


def timeline(trial_id: str, stamp: dict[str, Any], rec: dict[str, Any]) -> dict[str, float]:
    """One trial's wall time cut into consecutive, measured pieces (seconds).

    Actors are tied to a trial by who created them: the trial actor (Tune's result pid) creates
    the Train controller, which creates the worker (the pid in the worker's marks). The trial
    begins when Tune submits its actor (or at Tune's trial-start callback, if earlier).
    """
    w = rec["timing"].get(trial_id)
    if not w or "end" not in stamp:
        return {}
    m, ep = w["marks"], w["epochs"]

    def actor(name: str, **match: Any) -> dict[str, Any] | None:
        found = [a for a in rec["actors"] if a["name"] == name and all(a[k] == v for k, v in match.items())]
        return min(found, key=lambda a: a["submitted"], default=None)

    trial = actor("ImplicitFunc", pid=stamp.get("pid"))
    worker = actor("RayTrainWorker", pid=w["pid"])
    ctrl = actor("TrainController", pid=worker["parent_pid"]) if worker else None
    t0 = min(stamp["start"], trial["submitted"]) if trial else stamp["start"]
    t_trial = trial["ready"] if trial else t0
    t_ctrl_asked = ctrl["submitted"] if ctrl else t_trial
    t_ctrl = ctrl["ready"] if ctrl else t_ctrl_asked
    t_worker_asked = worker["submitted"] if worker else t_ctrl
    loader0 = ep[0]["loader_ready"] - ep[0]["start"] if ep else 0.0
    first_batch = m["first_step_start"] - ep[0]["loader_ready"] if ep else 0.0
    steps = sum(e["step_s"] for e in ep)
    wait = sum(e["wait_s"] for e in ep) - first_batch
    probe = sum(e["probe_s"] for e in ep)
    report = sum(e["report_end"] - e["report_start"] for e in ep)
    restarts = sum(e["loader_ready"] - e["start"] for e in ep) - loader0
    in_loop = (ep[-1]["report_end"] - m["first_step_start"]) if ep else 0.0
    out = {
        "Tune: trial actor submitted -> up": t_trial - t0,
        "driver: imports, builds the TorchTrainer": t_ctrl_asked - t_trial,
        "Train controller actor submitted -> up": t_ctrl - t_ctrl_asked,
        "controller: run set-up, placement group, helpers": t_worker_asked - t_ctrl,
        "worker actor submitted -> process started": m["process_start"] - t_worker_asked,
        "worker: Ray set-up, process group, imports": m["loop_start"] - m["process_start"],
        "model build + manifest": m["engine_ready"] - m["loop_start"],
        "data set-up: loader, checksums, first batch": m["first_step_start"] - m["engine_ready"] + first_batch,
        "train steps": steps,
        "data wait": wait,
        "loader restarts (epochs 2..)": restarts,
        "probe": probe,
        "checkpoint save + report": report,
        "rest of the epoch loop": in_loop - steps - wait - probe - report - restarts,
        "Train finish + Tune complete": stamp["end"] - (ep[-1]["report_end"] if ep else m["loop_start"]),
    }
    out["_total"] = stamp["end"] - t0
    out["_startup"] = m["first_step_start"] - t0
    out["_epochs"] = float(len(ep))
    return out


def import_seconds() -> dict[str, float]:
    """Seconds a fresh interpreter spends importing what the harness adds on top of Ray: the trial
    driver's module (harness.tuner, unpickled by Tune's trial actor) and the Train worker's
    (harness.train_loop), each after the Ray modules the floor imports too."""
    out = {}
    for name, ray_part in (("harness.tuner", "ray.tune, ray.train.torch, ray.tune.integration.ray_train"),
                           ("harness.train_loop", "ray.train, ray.train.torch")):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {ray_part}; import {name}"],
                              capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                              check=True)
        for line in proc.stderr.splitlines():
            match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S+)$", line)  # top level: one space
            if match and match.group(2) in (name, "ray.train.torch"):
                role = "driver" if name == "harness.tuner" else "worker"
                out[f"{match.group(2)} ({role})"] = int(match.group(1)) / 1e6
    return out


# ------------------------------------------------------------------------------------- report

def summarise(label: str, res: dict[str, Any], slots: int) -> dict[str, Any]:
    rows = {tid: timeline(tid, s, res) for tid, s in res["stamps"].items()}
    rows = {tid: r for tid, r in rows.items() if r}
    keys = [k for k in next(iter(rows.values()), {}) if not k.startswith("_")]
    print(f"\n[{label}] per trial (seconds):")
    print("  " + f"{'':52s}" + "".join(f"{tid[-8:]:>10s}" for tid in rows) + f"{'total':>10s}{'share':>8s}")
    slot_s = slots * (res["fit_end"] - res["fit_start"])
    for k in keys:
        vals = [r[k] for r in rows.values()]
        print(f"  {k:52s}" + "".join(f"{v:10.1f}" for v in vals) + f"{sum(vals):10.1f}{sum(vals) / slot_s:8.1%}")
    trial_s = sum(r["_total"] for r in rows.values())
    gaps = slot_s - trial_s  # Tune's own set-up, the gaps between trials and its end
    print(f"  {'Tune outside trials (set-up, between trials, end)':52s}" + " " * 10 * len(rows)
          + f"{gaps:10.1f}{gaps / slot_s:8.1%}")
    print(f"  {'trial wall (start -> complete)':52s}" + "".join(f"{r['_total']:10.1f}" for r in rows.values())
          + f"{trial_s:10.1f}")
    print(f"  {'start-up (trial start -> first train step)':52s}"
          + "".join(f"{r['_startup']:10.1f}" for r in rows.values()))
    steps = sum(r["train steps"] for r in rows.values())
    epochs = sum(r["_epochs"] for r in rows.values())
    fixed = sum(r["loader restarts (epochs 2..)"] + r["probe"] + r["checkpoint save + report"]
                + r["rest of the epoch loop"] for r in rows.values())
    epoch_s = (steps + sum(r["data wait"] for r in rows.values())) / max(epochs, 1)
    print(f"  trial-slot time {slot_s:.1f} s ({slots} slots x fit() {slot_s / slots:.1f} s); "
          f"goodput = train steps / slot time = {steps:.1f} / {slot_s:.1f} = {steps / slot_s:.1%}")
    return {"rows": rows, "slot_s": slot_s, "goodput": steps / slot_s,
            "startup": statistics.fmean(r["_startup"] for r in rows.values()),
            "tail": statistics.fmean(r["Train finish + Tune complete"] for r in rows.values()),
            "fixed_per_epoch": fixed / max(epochs, 1), "epoch_s": epoch_s}


def measure(args: argparse.Namespace, trials: int, epochs: int) -> dict[str, Any]:
    """Run the floor study and the demo study on one private head; everything measured, as JSON."""
    from harness.config import build_config
    from harness.preflight import prepare_paths
    from harness.ray_session import connect, quiet_tune
    from harness.study_file import load_study
    from harness.trainer import build_trainer
    from harness.tuner import build_tuner
    from tests.ray_head import attached, start_head

    overrides: dict[str, Any] = {"optim.epochs": epochs, "run.time_marks": True}  # harness/run_logs.py TimeMarks
    if args.data:
        overrides["data.shards"] = args.data
    study = load_study(SPACE, overrides)
    study.search.num_samples, study.search.max_concurrent = trials, args.concurrency
    study.scheduler.max_t, study.scheduler.grace_period = epochs, min(study.scheduler.grace_period, epochs)
    study.base.optim.epochs = epochs  # load_study sets it to the space's max_t
    t = time.time()
    study.base = prepare_paths(study.base, str(SPACE))  # makes the demo set if missing: not timed
    print(f"demo shards ready in {time.time() - t:.0f} s: {study.base.data.shards}", flush=True)
    raw: dict[str, Any] = {"imports": import_seconds(), "concurrency": args.concurrency,
                           "load_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="goodput-") as tmp:
        storage = Path(tmp)
        t = time.time()
        head = start_head(num_cpus=args.cpus)
        print(f"private Ray head {head.gcs_address} up in {time.time() - t:.0f} s", flush=True)
        with attached(head):
            quiet_tune(False)
            connect(log_to_driver=False)  # as harness/tune.py: the workers' lines stay in Ray's logs
            os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # as harness/tune.py sets it
            floor_cfg = build_config(study.base_dict, source="floor")
            floor_cfg.run.storage = str(storage / "floor" / "train")  # floor_driver swaps in its study's
            made = build_trainer(floor_cfg, name="floor")  # its settings only: the loop stays here
            prototype = {key: getattr(made, key) for key in
                         ("run_config", "scaling_config", "backend_config", "train_loop_config")}
            floors = [("floor", {})] + ([("floor_tuned", TUNED_ENV)] if args.tuned_floor else [])
            for label, env in floors:
                stamps = Stamps()
                tuner = tune.Tuner(
                    tune.with_resources(tune.with_parameters(floor_driver, prototype=prototype, env=env),
                                        resources=dict(study.base.scaling.trial_driver_resources)),
                    tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=args.concurrency,
                                                reuse_actors=bool(env)),
                    run_config=tune.RunConfig(name=label, storage_path=str(storage), verbose=0, callbacks=[stamps],
                                              failure_config=tune.FailureConfig(max_failures=0)))
                raw[label] = run_study(label, tuner, stamps, storage / label / "train")
            demo_uri, stamps = str(storage / "demo"), Stamps()
            raw["demo"] = run_study("demo", build_tuner(study, demo_uri, storage / "demo-local", callbacks=(stamps,)),
                                    stamps, Path(demo_uri) / "train")
    raw["load_end"] = os.getloadavg()
    return raw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 trials x 2 epochs (and 2 floor trials)")
    p.add_argument("--trials", type=int, help="demo trials, and as many floor trials (default 4, --quick 2)")
    p.add_argument("--epochs", type=int, help="epochs per trial = ASHA max_t (default 3, --quick 2)")
    p.add_argument("--concurrency", type=int, default=2, help="trials at a time (default 2, as the demo)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the private Ray head (default 2)")
    p.add_argument("--data", help="demo shard folder (default: the demo's data/demo/shards, made if missing)")
    p.add_argument("--tuned-floor", action="store_true",
                   help="also measure the floor with Train's PreemptionWatcher off, a 0.5-s controller poll "
                        "and Tune's reuse_actors")
    p.add_argument("--record", help="also write every measured timestamp to this JSON file")
    p.add_argument("--from-record", help="print the breakdown of a --record file instead of measuring")
    args = p.parse_args(argv)
    trials = args.trials or (2 if args.quick else 4)
    epochs = args.epochs or (2 if args.quick else 3)

    if args.from_record:
        raw = json.loads(Path(args.from_record).read_text())
    else:
        load = os.getloadavg()
        print(f"goodput bench: {platform.machine()}, {os.cpu_count()} CPU cores, "
              f"{time.strftime('%Y-%m-%d %H:%M %Z')}, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
              f"{trials} demo + {trials} floor trials x {epochs} epochs, {args.concurrency} at a time on "
              f"{args.cpus} CPUs", flush=True)
        raw = measure(args, trials, epochs)
        if args.record:
            Path(args.record).write_text(json.dumps(raw, indent=1))
    print("\nimport seconds in a fresh process, the harness's module after Ray's: "
          + ", ".join(f"{n} {s:.2f}" for n, s in raw["imports"].items()))
    slots = raw["concurrency"]
    f = summarise("floor: trivial loop, same TorchTrainer", raw["floor"], slots)
    h = summarise("demo study", raw["demo"], slots)
    if "floor_tuned" in raw:
        tuned = summarise("floor with " + ", ".join(f"{k}={v}" for k, v in TUNED_ENV.items())
                          + ", reuse_actors=True", raw["floor_tuned"], slots)
        print(f"\nRay's floor, trial submitted -> loop start: {f['startup']:.1f} s by default, "
              f"{tuned['startup']:.1f} s tuned; last report -> complete {f['tail']:.1f} s, {tuned['tail']:.1f} s")
    load = raw["load_end"]
    print(f"\nload average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    print(f"start-up, trial submitted -> first train step: demo {h['startup']:.1f} s, floor {f['startup']:.1f} s; "
          f"harness above Ray's floor {h['startup'] - f['startup']:.1f} s per trial (goal <= 5)")
    print(f"end, last report -> trial complete: demo {h['tail']:.1f} s, floor {f['tail']:.1f} s")
    print(f"per-epoch fixed costs (loader restart, probe, checkpoint + report, rest of the loop): "
          f"{h['fixed_per_epoch']:.2f} s = {h['fixed_per_epoch'] / h['epoch_s']:.1%} of an epoch's steps + "
          f"data wait ({h['epoch_s']:.1f} s) (goal <= 10%)")
    print(f"goodput (train steps / trial-slot time): demo {h['goodput']:.1%} (goal >= 80%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
