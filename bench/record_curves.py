"""Record the demo study's learning-curve table: configs x seeds x max_t epochs, every metric every epoch.

    python bench/record_curves.py                      # 24 configs x 3 seeds, 2 at a time (~2 h on 2 cores)
    python bench/record_curves.py --configs 32         # more configs; the same command continues
    python bench/record_curves.py --table-only         # write the table from the runs finished so far

The configs are the demo study's base point first, then a seeded uniform sample of its space
(tune_spaces/demo.yaml; log scale for loguniform keys), each trained with run.seed 0, 1, ... by the
real harness (Ray Tune over Ray Train, no early stopping) with `eval.probe_every=1`. Every per-epoch
value the runs report is kept (probe_top1, knn_top1, rank1/5, map100, rankme on the validation
split; loss and its terms, teacher entropy, prototypes used, the collapse flag, grad norm, lr):
one row per (config, seed, epoch) in bench/data/demo_curves_v2.parquet, with the base point, the
machine and the date in its metadata. bench/search.py replays it. The first table
(bench/data/demo_curves.parquet: 32 configs, one seed, probe and loss only) is kept for reference.

A recording runs seed by seed (every config at seed 0, then at seed 1, ...). An interrupted one
goes on as a new part (a new study folder) that runs the (config, seed) pairs the earlier parts
did not finish: Ray 2.60 restores a study of fixed points with its pending trials at once.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "bench" / "data" / "demo_curves_v2.parquet"
TABLE_V1 = ROOT / "bench" / "data" / "demo_curves.parquet"  # 32 configs x 1 seed, probe and loss (superseded)
SEED_KEY = "run.seed"
# Tune's own bookkeeping in each result, not measurements (the config is kept once, by its keys)
TUNE_COLUMNS = ("training_iteration", "timestamp", "pid", "time_this_iter_s", "time_total_s",
                "time_since_restore", "iterations_since_restore", "done")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/record_curves.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default=str(ROOT / "tune_spaces" / "demo.yaml"), help="study YAML")
    parser.add_argument("--configs", type=int, default=24, help="configs, the base point first (default 24)")
    parser.add_argument("--seeds", type=int, default=3, help="run.seed 0..N-1 for every config (default 3)")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the config sample")
    parser.add_argument("--storage", default=str(ROOT / "runs"), help="where the study runs")
    parser.add_argument("--out", default=str(TABLE), help="the table (parquet)")
    parser.add_argument("--table-only", action="store_true",
                        help="write the table from the runs finished so far, without running more")
    return parser.parse_args(argv)


def sample_configs(study, count: int, seed: int) -> list[dict[str, Any]]:
    """The study's base point, then `count - 1` configs drawn uniformly from its space (in the log
    of loguniform keys; int bounds inclusive), from one seeded generator."""
    rng = np.random.default_rng(seed)
    configs = [dict(study.points[0])] if study.points else []
    while len(configs) < count:
        point: dict[str, Any] = {}
        for d in study.space:
            if d.type == "choice":
                point[d.key] = d.values[int(rng.integers(len(d.values)))]
            elif d.type == "int":
                point[d.key] = int(rng.integers(int(d.low), int(d.high) + 1))
            elif d.type == "loguniform":
                point[d.key] = float(math.exp(rng.uniform(math.log(d.low), math.log(d.high))))
            else:
                point[d.key] = float(rng.uniform(d.low, d.high))
        configs.append(point)
    return configs


def runs_of(configs: list[dict[str, Any]], seeds: int) -> list[dict[str, Any]]:
    """Every (config, seed) as one trial's point, seed-major: a partial recording is whole seeds."""
    return [{**config, SEED_KEY: seed} for seed in range(seeds) for config in configs]


def parts(base_uri: str) -> list[str]:
    """The study folders of this recording, in order: NAME-curves-v2, NAME-curves-v2-2, ..."""
    found = [base_uri] if Path(base_uri).is_dir() else []
    k = 2
    while Path(f"{base_uri}-{k}").is_dir():
        found.append(f"{base_uri}-{k}")
        k += 1
    return found


def finished_runs(uris: list[str], keys: list[str], max_t: int) -> dict[tuple, pd.DataFrame]:
    """(point values in `keys` order) -> the per-epoch reports of the run that ran all max_t epochs."""
    from ray.tune import ExperimentAnalysis

    from harness.results import epoch_reports

    done: dict[tuple, pd.DataFrame] = {}
    for uri in uris:
        analysis = ExperimentAnalysis(uri)
        for trial in analysis.trials:
            frame = epoch_reports(analysis, trial.trial_id)
            if "epoch" in frame and len(frame) and frame["epoch"].max() >= max_t:
                done[tuple(trial.config[k] for k in keys)] = frame
    return done


def write_table(study, configs: list[dict[str, Any]], seeds: int, uris: list[str], out: Path) -> tuple[int, int]:
    """One row per (config_id, seed, epoch) of every finished run, every numeric metric kept;
    returns (runs, configs with every seed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    params = [d.key for d in study.space]
    keys = [*params, SEED_KEY]
    done = finished_runs(uris, keys, study.scheduler.max_t)
    frames = []
    for config_id, config in enumerate(configs):
        for seed in range(seeds):
            frame = done.get(tuple({**config, SEED_KEY: seed}[k] for k in keys))
            if frame is None:
                continue
            numeric = frame.select_dtypes("number")
            numeric = numeric[[c for c in numeric if c not in TUNE_COLUMNS and not c.startswith("config/")]]
            numeric = numeric.assign(config_id=config_id, seed=seed, **config)
            frames.append(numeric)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(table):
        table["epoch"] = table["epoch"].astype(int)
        table = table.sort_values(["config_id", "seed", "epoch"]).reset_index(drop=True)
    base = study.points[0] if study.points else {}
    meta = {"machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs".strip(),
            "date": time.strftime("%Y-%m-%d"),
            "space": str(study.path.relative_to(ROOT)) if study.path.is_relative_to(ROOT) else str(study.path),
            "metric": study.metric, "split": study.base.data.val_split, "seeds": str(seeds),
            "params": json.dumps(params), "base_point": json.dumps(base), "base_config_id": "0",
            "base": json.dumps(study.base_dict), "max_t": str(study.scheduler.max_t)}
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), **{k: v.encode() for k, v in meta.items()}})
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(arrow, out)
    runs = table.groupby(["config_id", "seed"]).ngroups if len(table) else 0
    whole = int((table.groupby("config_id")["seed"].nunique() == seeds).sum()) if len(table) else 0
    return runs, whole


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from harness.config import build_config, set_dotted
    from harness.preflight import prepare_paths
    from harness.ray_session import connect, quiet_tune
    from harness.study_file import Dist, load_study
    from harness.tuner import build_tuner

    study = load_study(args.space)
    configs = sample_configs(study, args.configs, args.sample_seed)
    base = study.base_dict
    set_dotted(base, "eval.probe_every", 1)
    study.base = prepare_paths(build_config(base, source=args.space), args.space)
    study.scheduler.type = "none"
    base_uri = str(Path(args.storage).resolve() / f"{study.name}-curves-v2")
    uris = parts(base_uri)
    if not args.table_only:
        keys = [*(d.key for d in study.space), SEED_KEY]
        finished = finished_runs(uris, keys, study.scheduler.max_t) if uris else {}
        left = [p for p in runs_of(configs, args.seeds) if tuple(p[k] for k in keys) not in finished]
        study.space = [*study.space, Dist(SEED_KEY, "choice", values=list(range(max(2, args.seeds))))]
        study.search.sampler, study.search.seed = "random", args.sample_seed
        study.search.max_concurrent = args.concurrent
        study.points, study.search.num_samples = left, len(left)
        uri = base_uri if not uris else f"{base_uri}-{len(uris) + 1}"
        print(f"[curves] {len(configs)} configs x {args.seeds} seeds x {study.scheduler.max_t} epochs, "
              f"probe every epoch: {len(left)} runs left; study folder {uri}", flush=True)
        if left:
            quiet_tune(False)
            connect(log_to_driver=False)
            build_tuner(study, uri, Path(uri)).fit()
        uris = parts(base_uri)
    runs, whole = write_table(study, configs, args.seeds, uris, Path(args.out))
    print(f"[curves] {runs} finished runs, {whole} configs with all {args.seeds} seeds -> {args.out}", flush=True)
    return 0 if whole >= args.configs or args.table_only else 1


if __name__ == "__main__":
    sys.exit(main())
