"""Rebuild a study's results and plots from its folder, finished or interrupted.

    python -m harness.report runs/demo
    python -m harness.report runs/cub --storage s3://BUCKET/studies   # a study run with that --storage

With a bucket as storage, Tune's state is in the bucket (STORAGE/NAME) and the results files in
the local run folder (runs/NAME, harness/tune.py `study_location`): `--storage` says where.

Plots (PNG via matplotlib, HTML via plotly) go to RUN_DIR/plots: optimization history,
parameter importances, parallel coordinates, learning curves per trial, and accuracy vs compute
(the Pareto front of the objective against GPU-hours, or wall-hours on CPU).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.express as px  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from harness.cli_errors import exit_on_user_error  # noqa: E402
from harness.results import CURVES_PARQUET, TRIALS_PARQUET, collect, describe_best, write_results  # noqa: E402
from harness.study_file import STUDY_FILE, Study, load_study  # noqa: E402
from harness.study_storage import load_trials_study  # noqa: E402
from shards.urls import is_remote, local_path  # noqa: E402


def optuna_study(study: Study, folder: Path) -> optuna.Study | None:
    """The study's Optuna trials as the searcher told them (harness/study_storage.py), for Optuna's
    own plots; None for a study without them (e.g. no journal in its folder)."""
    try:
        return load_trials_study(folder, study.search.storage)
    except (FileNotFoundError, KeyError) as exc:
        print(f"[report] no Optuna plots: {exc}", file=sys.stderr)
        return None


def _pareto(frame: pd.DataFrame, cost: str, metric: str, maximize: bool) -> pd.DataFrame:
    ordered = frame.sort_values(cost)
    best, keep = None, []
    for idx, row in ordered.iterrows():
        v = row[metric]
        if best is None or (v > best if maximize else v < best):
            best = v
            keep.append(idx)
    return ordered.loc[keep]


def _save(fig_png, fig_html, out: Path, stem: str, written: list[Path]) -> None:
    fig_png.savefig(out / f"{stem}.png", dpi=110, bbox_inches="tight")
    plt.close(fig_png)
    fig_html.write_html(str(out / f"{stem}.html"), include_plotlyjs="cdn")
    written += [out / f"{stem}.png", out / f"{stem}.html"]


def write_plots(study: Study, trials: pd.DataFrame, curves: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """All plots of the study (`collect`'s frames, the Optuna journal in out_dir) into out_dir/plots."""
    out = Path(out_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    metric = study.metric
    maximize = study.mode == "max"

    if len(curves):
        fig, ax = plt.subplots(figsize=(7, 4))
        for tid, c in curves.groupby("trial_id"):
            stopped = c["stop_reason"].iloc[0] != "completed"
            ax.plot(c["epoch"], c[metric], marker="o", linestyle="--" if stopped else "-",
                    label=f"{tid}{' (stopped)' if stopped else ''}")
        ax.set(xlabel="epoch", ylabel=metric, title="Learning curves per trial (dashed: stopped early)")
        ax.legend(fontsize=6, ncol=2)
        html = px.line(curves, x="epoch", y=metric, color="trial_id", line_dash="stop_reason", markers=True)
        _save(fig, html, out, "learning_curves", written)

    done = trials[trials[metric].notna()] if len(trials) else trials
    if len(done):
        cost = "gpu_hours" if done["gpu_hours"].sum() > 0 else "wall_s"
        label = "GPU-hours" if cost == "gpu_hours" else "wall seconds (CPU)"
        front = _pareto(done, cost, metric, maximize)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter(done[cost], done[metric], alpha=0.6, label="trials")
        ax.step(front[cost], front[metric], where="post", color="C3", label="Pareto front")
        ax.set(xlabel=label, ylabel=metric, title="Accuracy vs compute")
        ax.legend()
        html = px.scatter(done, x=cost, y=metric, hover_data=["trial_id"], title="Accuracy vs compute")
        html.add_scatter(x=front[cost], y=front[metric], mode="lines", line_shape="hv", name="Pareto front")
        _save(fig, html, out, "accuracy_vs_compute", written)

    ot = optuna_study(study, Path(out_dir))
    if ot is not None and len(ot.get_trials(states=[TrialState.COMPLETE])) >= 2:
        from optuna.visualization import matplotlib as omp

        plots = {"optimization_history": (omp.plot_optimization_history,
                                          optuna.visualization.plot_optimization_history),
                 "parallel_coordinates": (omp.plot_parallel_coordinate, optuna.visualization.plot_parallel_coordinate),
                 "param_importances": (omp.plot_param_importances, optuna.visualization.plot_param_importances)}
        for stem, (png_fn, html_fn) in plots.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ax = png_fn(ot)
                    fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
                    _save(fig, html_fn(ot), out, stem, written)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances need variation
                print(f"[report] skipped {stem}: {exc}", file=sys.stderr)
    return written


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m harness.report",
                                     description="Rebuild a study's results files and plots from its folder.")
    parser.add_argument("run_dir", help="the study folder (e.g. runs/demo): its study.yaml is read and the "
                                         "results files and plots are written there")
    parser.add_argument("--storage", help="the --storage the study ran with when that was a bucket (e.g. "
                                          "s3://BUCKET/studies): Tune's state is then read from STORAGE/NAME, NAME "
                                          "being the run folder's name; default: the run folder itself")
    return parser.parse_args(argv)


def tune_state(folder: Path, storage: str | None) -> str:
    """Where Tune wrote the study whose results folder is `folder`: the folder itself, or
    STORAGE/NAME for a study run with `--storage STORAGE` (harness/tune.py `study_location`)."""
    if storage is None:
        return str(folder)
    if is_remote(storage):
        return f"{storage.rstrip('/')}/{folder.name}"
    return str(local_path(storage).resolve() / folder.name)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = Path(args.run_dir).resolve()
    if not (folder / STUDY_FILE).is_file():
        raise FileNotFoundError(f"{folder}: not a study folder (no {STUDY_FILE})")
    study = load_study(folder / STUDY_FILE)
    state = tune_state(folder, args.storage)
    trials, curves = collect(study, state, folder)
    best = write_results(study, trials, curves, folder)
    files = write_plots(study, trials, curves, folder)
    print(f"[report] {folder / TRIALS_PARQUET}, {folder / CURVES_PARQUET}, "
          f"{len(files)} plot files in {folder / 'plots'}")
    if best:
        print(f"[report] {describe_best(best)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
