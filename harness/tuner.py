"""The Tune study: one trial = one TorchTrainer run, searched by Optuna TPE, stopped by ASHA.

This follows Ray's pattern for tuning a Train V2 trainer: each trial is a function (the
"driver") that builds a TorchTrainer and fits it, with `TuneReportCallback` forwarding rank 0's
per-epoch reports to Tune so ASHA and Optuna see every epoch (Ray 2.60).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import FIFOScheduler

from harness.asha import ResumableASHA
from harness.config import build_config
from harness.console import TrialProgress, quiet_train_console, show_events
from harness.objective import CONFIRM_OF
from harness.searcher import BudgetAwareOptunaSearch
from harness.study_file import Study
from harness.study_storage import storage_location
from harness.trainer import fit

log = logging.getLogger(__name__)


def trial_driver(params: dict[str, Any], base: dict[str, Any], train_storage: str,
                 verbose: bool = False) -> None:
    """One trial: the base config plus the sampled values, trained by a TorchTrainer.

    The Train run is named by the trial id, so a restored study resumes each unfinished trial
    from its last checkpoint instead of starting it over. A confirm run names the search trial
    it repeats (CONFIRM_OF) besides its config and seed.
    """
    show_events()  # a lost node's line, on this actor's stdout (the console with --verbose)
    params = {k: v for k, v in params.items() if k != CONFIRM_OF}
    cfg = build_config(base, params, source="trial")
    cfg.run.storage = train_storage
    trial_id = tune.get_context().get_trial_id()
    fit(cfg, f"train-{trial_id}", callbacks=[TuneReportCallback(), *quiet_train_console(verbose)], verbose=verbose)


def _searcher(study: Study, study_uri: str, local_dir: Path, inherited: list[Any]) -> BudgetAwareOptunaSearch:
    import optuna

    if study.search.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=study.search.seed)
    else:  # constant_liar: running trials count as bad, so parallel workers do not sample one spot
        sampler = optuna.samplers.TPESampler(seed=study.search.seed, constant_liar=True,
                                             n_startup_trials=study.search.startup_trials,
                                             multivariate=study.search.multivariate)
    return BudgetAwareOptunaSearch(
        study.space, metric=study.metric, mode=study.mode, max_epochs=study.scheduler.max_t,
        storage=storage_location(study.search.storage, local_dir), study_name=study_uri.rstrip("/").rsplit("/", 1)[-1],
        points_to_evaluate=study.points, sampler=sampler, max_concurrent=study.search.max_concurrent,
        search_trials=study.search.num_samples, confirm=(study.confirm.top_k, study.confirm.seeds),
        base_seed=study.base.run.seed, inherited=inherited)


def _scheduler(study: Study, study_uri: str) -> Any:
    if study.scheduler.type == "none":
        return FIFOScheduler()
    # ASHA keyed on the reported epoch: training_iteration restarts at 0 after a restore.
    return ResumableASHA(study_uri, study.metric, max_t=study.scheduler.max_t,
                         grace_period=study.scheduler.grace_period,
                         reduction_factor=study.scheduler.reduction_factor,
                         rung_metric=study.scheduler.rung_metric, rung_mode=study.scheduler.rung_mode)


def confirm_trials(study: Study) -> int:
    """The most confirm runs a study can ask for: each candidate 1 + seeds runs (harness/objective.py)."""
    return study.confirm.top_k * (1 + study.confirm.seeds)


def tune_config(study: Study, study_uri: str, local_dir: Path | None = None,
                inherited: list[Any] = (), reuse_actors: bool = False) -> tune.TuneConfig:
    """How the study searches and stops: the searcher, ASHA and the objective (harness/objective.py).

    `local_dir` holds the study's Optuna journal (default: the study folder itself); `inherited`
    are a warm start's trials (harness/warm_start.py), added when the study's storage is created;
    `reuse_actors` only for a trainable other than the trial driver (see below)."""
    return tune.TuneConfig(
        metric=study.metric, mode=study.mode,
        search_alg=_searcher(study, study_uri, local_dir or Path(study_uri), list(inherited)),
        scheduler=_scheduler(study, study_uri), num_samples=study.search.num_samples + confirm_trials(study),
        max_concurrent_trials=study.search.max_concurrent, reuse_actors=reuse_actors,
        # The trial driver never reuses actors, although each new driver process imports torch again (through
        # ray.train.torch; bench/trial_actor_start.py): a driver's thread outlives fit() by more
        # than Tune's 2-s reset wait, and Tune 2.60 then ends the next trial as ERROR ("Trainable
        # runner reuse requires reset_config() to be implemented and return True").
    )


def _trackers(study: Study, local_dir: Path) -> list[Any]:
    """Opt-in experiment trackers through Ray's own logger callbacks (TensorBoard is Tune's default)."""
    callbacks: list[Any] = []
    mlflow = study.trackers.mlflow
    if mlflow:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(
            tracking_uri=mlflow.tracking_uri or f"sqlite:///{(local_dir / 'mlflow.db').resolve()}",
            experiment_name=study.name, save_artifact=False))
    wandb = study.trackers.wandb
    if wandb:
        from harness.wandb_tracker import WandbTracker

        callbacks.append(WandbTracker(project=wandb.project or study.name, mode=wandb.mode, folder=local_dir))
    return callbacks


def build_tuner(study: Study, study_uri: str, local_dir: Path, retry_errored: bool = False,
                verbose: bool = False, callbacks: tuple[tune.Callback, ...] = (),
                trainable: Any = None, inherited: list[Any] = (), reuse_actors: bool = False) -> tune.Tuner:
    """A new Tuner, or the interrupted study restored (finished trials are kept, not re-run).

    `study_uri` is where Tune and Train write (a folder or an s3:// / gs:// URI shared by all
    nodes); `local_dir` holds what the driver writes itself (the Optuna journal, MLflow's default
    store); `callbacks` are Tune callbacks added to the study's own (bench/goodput.py's timestamps);
    `trainable` replaces the trial driver (a function of the trial's config: tests and benchmarks);
    `inherited` are a warm start's trials for a new study; `reuse_actors` runs the trials of such a
    `trainable` in the same actors (bench/many_trials.py).
    """
    trainable = trainable or tune.with_resources(
        tune.with_parameters(trial_driver, base=study.base_dict,
                             train_storage=f"{study_uri}/train", verbose=verbose),
        resources=dict(study.base.scaling.trial_driver_resources),
    )
    param_space = {d.key: d.tune_domain() for d in study.space}
    if tune.Tuner.can_restore(study_uri):
        log.info(f"[study] resuming {study_uri}: finished trials are kept"
                 + ("; errored trials are retried" if retry_errored else ""))
        return tune.Tuner.restore(study_uri, trainable=trainable, param_space=param_space,
                                  resume_unfinished=True, resume_errored=retry_errored)
    storage, name = study_uri.rsplit("/", 1)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune_config(study, study_uri, local_dir, inherited, reuse_actors),
        run_config=tune.RunConfig(
            name=name, storage_path=storage,
            callbacks=[TrialProgress(study.metric, study.scheduler.max_t), *_trackers(study, local_dir),
                       *callbacks],
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1 if verbose else 0,
        ),
    )


def trial_resources(study: Study) -> dict[str, float]:
    """What one trial needs at once: its driver plus all its Train workers."""
    from harness.trainer import worker_resources

    need = dict(study.base.scaling.trial_driver_resources)
    for key, value in worker_resources(study.base).items():
        need[key] = need.get(key, 0.0) + value * study.base.scaling.num_workers
    return need


def unschedulable(study: Study, cluster: dict[str, float]) -> list[str]:
    """Resources a trial needs beyond what the cluster has now (an autoscaler may add them)."""
    return [f"{key}: trial needs {value:g}, cluster has {cluster.get(key, 0):g}"
            for key, value in trial_resources(study).items() if value > cluster.get(key, 0) + 1e-9]

