"""Record a real learning-curve table of the demo study: N configs x max_t epochs, probe every epoch.

    python bench/record_curves.py                      # 32 configs, 2 at a time (~80 min on 2 cores)
    python bench/record_curves.py --samples 40         # more configs; the same command resumes

The configs are the demo study's base config first, then a seeded random sample of its space
(tune_spaces/demo.yaml), each trained by the real harness (Ray Tune over Ray Train, no early
stopping) with `eval.probe_every=1`, so every epoch's probe_top1 on the validation split is a
measurement. The table (one row per config and epoch) is written to bench/data/demo_curves.parquet
with the machine and date in its metadata; bench/search.py replays it as a tabular benchmark.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "bench" / "data" / "demo_curves.parquet"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/record_curves.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default=str(ROOT / "tune_spaces" / "demo.yaml"), help="study YAML")
    parser.add_argument("--samples", type=int, default=32, help="configs, the base config first")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random sample")
    parser.add_argument("--storage", default=str(ROOT / "runs"), help="where the study runs")
    parser.add_argument("--out", default=str(TABLE), help="the table (parquet)")
    parser.add_argument("--table-only", action="store_true",
                        help="write the table from the configs finished so far, without running more")
    return parser.parse_args(argv)


def parts(base_uri: str) -> list[str]:
    """The study folders of this recording, in order: NAME-curves, NAME-curves-2, ..."""
    found = [base_uri] if Path(base_uri).is_dir() else []
    k = 2
    while Path(f"{base_uri}-{k}").is_dir():
        found.append(f"{base_uri}-{k}")
        k += 1
    return found


def finished_and_left(study, uris: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """(trials that ran all epochs, their curves, the configs of the others in creation order)."""
    from harness.results import collect, plain

    params = [d.key for d in study.space]
    done, curves, left = [], [], []
    for uri in uris:
        trials, curve = collect(study, uri)
        full = trials["epochs"] >= study.scheduler.max_t
        done.append(trials[full])
        curves.append(curve[curve["trial_id"].isin(trials.loc[full, "trial_id"])])
        for _, row in trials[~full].sort_values("trial_id").iterrows():
            left.append({key: plain(row[key]) for key in params})
    done_ids = {tuple(r[k] for k in params) for frame in done for _, r in frame.iterrows()}
    left = [p for p in left if tuple(p.values()) not in done_ids]  # finished in a later part
    return pd.concat(done), pd.concat(curves), left


def write_table(study, uris: list[str], out: Path, started: float) -> int:
    """The per-epoch table of every config that finished all its epochs; returns its config count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    done, curves, _ = finished_and_left(study, uris)
    params = [d.key for d in study.space]
    table = curves[["trial_id", "epoch", study.metric, "loss"]].merge(done[["trial_id", *params]], on="trial_id")
    table["epoch"] = table["epoch"].astype(int)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
            "space": str(study.path.relative_to(ROOT)) if study.path.is_relative_to(ROOT) else str(study.path),
            "metric": study.metric, "split": study.base.data.val_split, "seeds": "1 (run.seed 0)",
            "params": json.dumps(params), "max_t": str(study.scheduler.max_t),
            "wall_s": f"{time.time() - started:.0f}"}
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), **{k: v.encode() for k, v in meta.items()}})
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(arrow, out)
    return int(done["trial_id"].nunique())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from harness.config import build_config, set_dotted
    from harness.preflight import prepare_paths
    from harness.ray_session import connect, quiet_tune
    from harness.study_file import load_study
    from harness.tuner import build_tuner

    study = load_study(args.space)
    study.search.sampler, study.search.num_samples = "random", args.samples
    study.search.max_concurrent, study.search.seed = args.concurrent, args.seed
    study.scheduler.type = "none"
    base = study.base_dict
    set_dotted(base, "eval.probe_every", 1)
    study.base = prepare_paths(build_config(base, source=args.space), args.space)
    base_uri = str(Path(args.storage).resolve() / f"{study.name}-curves")
    uris = parts(base_uri)
    started = time.time()
    if not args.table_only:
        if uris:
            # Ray 2.60 restores a random-sampler study with every pending trial at once (its
            # max_concurrent is lost) and cancels them: an interrupted recording goes on as a new
            # part that evaluates the configs the earlier parts left unfinished, in their order.
            _, _, left = finished_and_left(study, uris)
            study.points, study.search.num_samples = left, len(left)
            uri = f"{base_uri}-{len(uris) + 1}"
        else:
            uri = base_uri
        print(f"[curves] {study.search.num_samples} configs x {study.scheduler.max_t} epochs, probe every "
              f"epoch; study folder {uri}", flush=True)
        if study.search.num_samples:
            quiet_tune(False)
            connect(log_to_driver=False)
            build_tuner(study, uri, Path(uri)).fit()
        uris = parts(base_uri)
    n = write_table(study, uris, Path(args.out), started)
    print(f"[curves] {n} complete configs -> {args.out}", flush=True)
    return 0 if n >= args.samples or args.table_only else 1


if __name__ == "__main__":
    sys.exit(main())
