"""A CMD hyper-parameter study on Ray Tune: Optuna TPE + ASHA over epochs, probe accuracy as objective.

    python harness/tune.py                                   # the demo study, local Ray
    python harness/tune.py --space tune_spaces/cub.yaml      # joins RAY_ADDRESS when set
    ray job submit --working-dir . -- python harness/tune.py --space tune_spaces/cub.yaml

Running the same command again continues an interrupted study; `--restart` starts a new one.
The run folder gets results.parquet/.csv, curves.parquet, best_config.yaml, best.json and plots.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import typing
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.cli_errors import exit_on_user_error  # noqa: E402
from harness.config import ConfigError, coerce, parse_overrides, to_dict  # noqa: E402
from harness.job_paths import keep_out_of_job_copy, outside_job_copy  # noqa: E402
from harness.objective import rung_epochs  # noqa: E402
from harness.preflight import check_writable, is_remote, prepare_paths  # noqa: E402
from harness.ray_session import choose_address  # noqa: E402
from harness.study_file import SearchSettings, Study, load_study  # noqa: E402
from harness.study_storage import storage_location  # noqa: E402

DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "tune_spaces" / "demo.yaml"
SEARCH_FIELDS = typing.get_type_hints(SearchSettings, include_extras=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="harness/tune.py",
        description="Search CMD's loss weights, temperatures and crops with Ray Tune + Optuna; "
                    "the objective is the linear-probe top-1 of the frozen teacher.",
    )
    parser.add_argument("--space", default=str(DEFAULT_SPACE),
                        help="study YAML (base config + search space); default: the demo study")
    parser.add_argument("--name", help="study name (default: the space's name); the same name resumes")
    parser.add_argument("--storage", help="folder or s3:// / gs:// URI for results "
                                          "(default: the space's storage, else ./runs)")
    parser.add_argument("--restart", action="store_true",
                        help="start a fresh study under a new, time-stamped name")
    parser.add_argument("--retry-errored", action="store_true",
                        help="when resuming, run errored trials again")
    parser.add_argument("--num-samples", type=int, help="override search.num_samples (>= 1)")
    parser.add_argument("--warm-start", metavar="RUN_DIR_OR_STORAGE",
                        help="begin a new study with the finished trials of an earlier one whose space overlaps: "
                             "its study folder, its Optuna journal, or a database URL[#STUDY] "
                             "(harness/warm_start.py); they inform the sampler and are never counted as run")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the random-init probe measured before the study")
    parser.add_argument("--verbose", action="store_true", help="Ray's own logs and progress tables")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides of the base training config, e.g. data.batch_size=16")
    return parser.parse_args(argv)


def study_location(study: Study, args: argparse.Namespace) -> tuple[str, Path]:
    """(where Tune and Train write: a folder or a bucket URI, the local folder for results).

    With a bucket, every node writes checkpoints and trial state there, and the results files
    are written locally (./runs/NAME) and copied next to them at the end. Started by `ray job
    submit`, a relative storage goes under ~/cmd-harness, not into Ray's temporary copy.
    """
    name = args.name or study.name
    if args.restart:
        name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = outside_job_copy(args.storage or study.storage)
    if is_remote(storage):
        return f"{storage.rstrip('/')}/{name}", Path(outside_job_copy("runs")).resolve() / name
    local = Path(storage).expanduser().resolve() / name
    return str(local), local


def study_exists(uri: str) -> bool:
    """Whether Tune has state for this study (the same command then resumes it)."""
    from ray import tune

    return tune.Tuner.can_restore(uri)


def check_storage_matches(study: Study, folder: Path, resuming: bool) -> None:
    """A new study must not meet trials of another in its Optuna storage (a deleted Tune folder
    beside a kept journal, or a shared database that holds the name already)."""
    import optuna

    from harness.study_storage import open_storage

    location = storage_location(study.search.storage, folder)
    if resuming or ("://" not in location and not Path(location).is_file()):
        return
    names = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(open_storage(location))}
    if names.get(folder.name):
        raise ConfigError(f"{location} already holds a study '{folder.name}' with {names[folder.name]} trials, "
                          "but Tune has no state for it: run with --restart or --name NAME for a new study "
                          "(or --warm-start to learn from that one)")


def upload(local: Path, uri: str) -> None:
    """Copy the results files next to the study's trials in the bucket."""
    import pyarrow.fs

    pyarrow.fs.copy_files(str(local), uri)


def objective_line(study: Study) -> str:
    """What the study maximises, in words (harness/objective.py)."""
    rungs = rung_epochs(study.scheduler.grace_period, study.scheduler.max_t, study.scheduler.reduction_factor)
    compare = f"ASHA compares trials at epochs {rungs}; " if study.scheduler.type == "asha" else ""
    return (f"{study.metric} ({study.mode}) on split '{study.base.data.val_split}' at each trial's last "
            f"measured epoch; {compare}the best trial is the best of those that ran all "
            f"{study.scheduler.max_t} epochs")


BASELINE_FILE = "random_init_baseline.json"


def baseline_key(study: Study) -> str:
    """A hash of what the random-init probe depends on: data (and its manifest), model, eval, seed."""
    base = to_dict(study.base)
    inputs = {key: base[key] for key in ("data", "model", "eval")} | {"seed": study.base.run.seed}
    manifest = Path(study.base.data.shards) / "manifest.json"
    if not is_remote(study.base.data.shards) and manifest.is_file():
        inputs["manifest"] = hashlib.sha256(manifest.read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def start_label(study: Study) -> str:
    """What the runs start from, in words: 'random-init' or 'init-checkpoint'."""
    return "init-checkpoint" if study.base.model.init_checkpoint else "random-init"


def random_init_baseline(study: Study, folder: Path) -> dict[str, float]:
    """The evaluation of the backbone the study's runs start from (harness/backbone_eval.py
    `evaluate_start`: random init, or the init checkpoint): what self-supervision must beat.

    Kept in the study folder under `baseline_key`, so a resumed or resubmitted study does not
    measure it again, and a changed data, model or eval config does."""
    cache = folder / BASELINE_FILE
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    key = baseline_key(study)
    if key in known:
        return known[key]
    from harness.backbone_eval import evaluate_start

    result = evaluate_start(study.base)
    folder.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({**known, key: result}, indent=2))
    return result


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    study = load_study(args.space, parse_overrides(args.overrides))
    if args.num_samples is not None:  # checked against search.num_samples' own declaration
        study.search.num_samples = coerce(args.num_samples, SEARCH_FIELDS["num_samples"], "--num-samples",
                                          "command line")
    choose_address()  # a dead RAY_ADDRESS ends here, before the demo set or the baseline
    inherited = None
    if args.warm_start:
        from harness.warm_start import inherit

        inherited = inherit(args.warm_start, study)  # an incompatible study is refused here, before Ray
    keep_out_of_job_copy(study.base, "[study]")  # and study_location does the same for --storage
    study.base = prepare_paths(study.base, args.space)
    study.base_dict = to_dict(study.base)
    uri, folder = study_location(study, args)
    check_writable(str(folder), "the study folder", args.space)
    resuming = study_exists(uri)
    check_storage_matches(study, folder, resuming)
    if resuming:
        inherited = None  # the study's storage has what it inherited when it was created
    confirm = (f", then the top {study.confirm.top_k} configs again with {study.confirm.seeds} more "
               f"seed(s) each" if study.confirm.top_k else "")
    print(f"[study] {study.name}: {study.search.num_samples} trials x <= {study.scheduler.max_t} epochs{confirm}, "
          f"{len(study.space)} parameters, {study.search.max_concurrent} at once; folder {uri}",
          flush=True)
    print(f"[study] objective: {objective_line(study)}", flush=True)
    if inherited is not None:
        print(f"[study] {inherited.line()}", flush=True)
    elif args.warm_start:
        print("[study] --warm-start ignored: the study exists already (its inherited trials are kept)", flush=True)
    print(f"[study] watch it: optuna-dashboard {storage_location(study.search.storage, folder)} "
          "(the dashboard extra: pip install -e '.[dashboard]')", flush=True)

    baseline = {} if args.no_baseline else random_init_baseline(study, folder)
    if baseline:
        shown = " ".join(f"{k} {baseline[k]:.4f}" for k in (study.metric, "knn_top1") if k in baseline)
        print(f"[study] {start_label(study)} backbone: {shown}", flush=True)

    import ray

    from harness.console import summary_table
    from harness.ray_session import connect, quiet_tune
    from harness.report import write_plots
    from harness.results import close_call, collect, describe_best, write_results
    from harness.tuner import build_tuner, unschedulable

    quiet_tune(args.verbose)
    connect(verbose=args.verbose, log_to_driver=args.verbose)
    for problem in unschedulable(study, ray.cluster_resources()):
        print(f"[study] warning: a trial cannot be scheduled on the cluster as it is now ({problem}); "
              "it waits for an autoscaler to add nodes", flush=True)
    if not is_remote(uri):
        # Tune saves the study's state every >= 10 s by default; a trial finished in that window
        # before a crash would start again on resume (its Train run then only re-reports its last
        # epoch). Locally a save is one small file: save every 2 s. On a bucket each save uploads
        # the study folder, so Tune's default period stands there.
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    study.save(folder)
    tuner = build_tuner(study, uri, folder, retry_errored=args.retry_errored, verbose=args.verbose,
                        inherited=inherited.trials if inherited else ())
    tuner.fit()

    trials, curves = collect(study, uri, folder)
    extra = {"random_init": baseline} if baseline else {}
    if inherited:
        extra["inherited"] = {"from": inherited.source, "trials": len(inherited.trials)}
    best = write_results(study, trials, curves, folder, extra)
    write_plots(study, trials, curves, folder)
    print("\n" + summary_table(trials, study.metric, [d.key for d in study.space], study.mode))
    for _, row in trials[trials["status"] == "ERROR"].iterrows():
        print(f"[study] errored {row['trial_id']}: {row['error']} (rerun with --retry-errored)")
    if best:
        line = f"\n[study] {describe_best(best)}"
        if baseline:
            line += f"; {start_label(study)} backbone {baseline[study.metric]:.4f}"
        print(line)
        if close_call(best):
            print(f"[study] {close_call(best)}")
        print(f"[study] best config: {folder / 'best_config.yaml'}\n[study] best checkpoint: {best['checkpoint_path']}")
    print(f"[study] results: {folder / 'results.parquet'} (pandas.read_parquet), plots in {folder / 'plots'}")
    if is_remote(uri):
        upload(folder, uri)
        print(f"[study] results copied to {uri}")
    return 0 if best else 1


if __name__ == "__main__":
    sys.exit(main())
