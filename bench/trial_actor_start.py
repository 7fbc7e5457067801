"""Where a Tune trial actor's start goes: the trainable's own module imports, measured.

    python bench/trial_actor_start.py [--rounds 3]

On a private head (2 CPUs, dashboard on), runs 2-trial Tune studies of a no-op function trainable
defined in three modules that differ only in what they import: nothing (the baseline), Ray Train's
torch module (what any TorchTrainer driver imports), and the harness's trial-driver module
(`harness.tuner`). Tune unpickles the trainable when it builds the trial actor, so those imports
run inside the actor's `__init__`. Rounds alternate the three so machine load hits each alike.
Prints each actor's `__init__` seconds (Ray's task table: start -> end of the actor creation task)
and the median of each variant as a ratio to the baseline's.
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ray import tune  # noqa: E402

from harness.ray_session import connect  # noqa: E402
from tests.ray_head import attached, start_head  # noqa: E402

VARIANTS = {  # module name -> what it imports besides Ray Tune
    "trainable_plain": "",
    "trainable_ray_train_torch": "import ray.train.torch  # noqa: F401",
    "trainable_harness_tuner": "import harness.tuner  # noqa: F401",
}


def write_modules(folder: Path) -> None:
    """One importable module per variant, each with the same no-op trainable."""
    for name, imports in VARIANTS.items():
        (folder / f"{name}.py").write_text(f"{imports}\n\n\ndef noop(config):\n    return {{'done': 1}}\n")


def actor_init_seconds(known: set[str]) -> list[float]:
    """`__init__` seconds of the trial actors created since `known` was taken."""
    from ray.util.state import list_tasks

    time.sleep(3)  # the task table records an actor's end a moment after Tune sees it
    tasks = list_tasks(detail=True, limit=10_000, raise_on_missing_output=False)
    return [(t.end_time_ms - t.start_time_ms) / 1e3 for t in tasks
            if t.task_id not in known and t.type == "ACTOR_CREATION_TASK"
            and t.func_or_class_name.startswith("ImplicitFunc") and t.end_time_ms and t.start_time_ms]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the three variants (default 3)")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="actor-start-"))
    write_modules(folder)
    sys.path.insert(0, str(folder))  # Ray hands the driver's sys.path to its workers
    print(textwrap.fill(__doc__.split("\n\n")[2], 100), flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with attached(start_head(num_cpus=2)):
        connect(log_to_driver=False)
        from ray.util.state import list_tasks

        for rnd in range(args.rounds):
            for name in VARIANTS:
                known = {t.task_id for t in list_tasks(limit=10_000, raise_on_missing_output=False)}
                trainable = importlib.import_module(name).noop
                tune.Tuner(tune.with_resources(trainable, {"CPU": 0, "memory": 2**28}),
                           tune_config=tune.TuneConfig(num_samples=2, max_concurrent_trials=2),
                           run_config=tune.RunConfig(storage_path=str(folder / "results"), verbose=0)).fit()
                got = actor_init_seconds(known)
                seconds[name] += got
                print(f"round {rnd} {name}: __init__ {', '.join(f'{s:.1f}' for s in got)} s; "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    base = statistics.median(seconds["trainable_plain"])
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name}: median __init__ {median:.2f} s over {len(values)} actors, {median / base:.2f} x the plain one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
