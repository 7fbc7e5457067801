"""The Tune study: one trial = one TorchTrainer run, searched by Optuna TPE, stopped by ASHA.

This follows Ray's pattern for tuning a Train V2 trainer: each trial is a function (the
"driver") that builds a TorchTrainer and fits it, with `TuneReportCallback` forwarding rank 0's
per-epoch reports to Tune so ASHA and Optuna see every epoch (Ray 2.60).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from harness.asha import ResumableASHA
from harness.config import build_config
from harness.console import TrialProgress, quiet_train_console
from harness.searcher import BudgetAwareOptunaSearch
from harness.study_file import Study
from harness.trainer import fit


def trial_driver(params: dict[str, Any], base: dict[str, Any], train_storage: str,
                 verbose: bool = False) -> None:
    """One trial: the base config plus the sampled values, trained by a TorchTrainer.

    The Train run is named by the trial id, so a restored study resumes each unfinished trial
    from its last checkpoint instead of starting it over.
    """
    cfg = build_config(base, params, source="trial")
    cfg.run.storage = train_storage
    trial_id = tune.get_context().get_trial_id()
    fit(cfg, f"train-{trial_id}", callbacks=[TuneReportCallback(), *quiet_train_console(verbose)], verbose=verbose)


def _searcher(study: Study) -> Any:
    if study.search.sampler == "random":
        # Tune ignores max_concurrent_trials for this searcher: it must be given here.
        return BasicVariantGenerator(points_to_evaluate=study.points, random_state=study.search.seed,
                                     max_concurrent=study.search.max_concurrent)
    import optuna

    # constant_liar: running trials count as bad, so parallel workers do not sample one spot.
    sampler = optuna.samplers.TPESampler(seed=study.search.seed, constant_liar=True,
                                         n_startup_trials=study.search.startup_trials,
                                         multivariate=study.search.multivariate)
    return BudgetAwareOptunaSearch(study.space, metric=study.metric, mode=study.mode,
                                   max_epochs=study.scheduler.max_t, points_to_evaluate=study.points,
                                   sampler=sampler, max_concurrent=study.search.max_concurrent)


def _scheduler(study: Study, study_uri: str) -> Any:
    if study.scheduler.type == "none":
        return FIFOScheduler()
    # ASHA keyed on the reported epoch: training_iteration restarts at 0 after a restore.
    return ResumableASHA(study_uri, study.metric, max_t=study.scheduler.max_t,
                         grace_period=study.scheduler.grace_period,
                         reduction_factor=study.scheduler.reduction_factor)


def tune_config(study: Study, study_uri: str) -> tune.TuneConfig:
    """How the study searches and stops: the searcher, ASHA and the objective (harness/objective.py)."""
    return tune.TuneConfig(
        metric=study.metric, mode=study.mode, search_alg=_searcher(study),
        scheduler=_scheduler(study, study_uri), num_samples=study.search.num_samples,
        max_concurrent_trials=study.search.max_concurrent,
        # Not reuse_actors, although each new driver process imports torch again (through
        # ray.train.torch; bench/trial_actor_start.py): a driver's thread outlives fit() by more
        # than Tune's 2-s reset wait, and Tune 2.60 then ends the next trial as ERROR ("Trainable
        # runner reuse requires reset_config() to be implemented and return True").
    )


def _trackers(study: Study, local_dir: Path) -> list[Any]:
    """Opt-in experiment trackers through Ray's own logger callbacks (TensorBoard is Tune's default)."""
    callbacks: list[Any] = []
    mlflow = study.trackers.get("mlflow")
    if mlflow:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = mlflow.get("tracking_uri") if isinstance(mlflow, dict) else None
        callbacks.append(MLflowLoggerCallback(
            tracking_uri=uri or f"sqlite:///{(local_dir / 'mlflow.db').resolve()}",
            experiment_name=study.name, save_artifact=False))
    wandb = study.trackers.get("wandb")
    if wandb:
        from ray.air.integrations.wandb import WandbLoggerCallback

        opts = wandb if isinstance(wandb, dict) else {}
        callbacks.append(WandbLoggerCallback(project=opts.get("project", study.name),
                                             mode=opts.get("mode", "offline")))
    return callbacks


def build_tuner(study: Study, study_uri: str, local_dir: Path, retry_errored: bool = False,
                verbose: bool = False, callbacks: tuple[tune.Callback, ...] = ()) -> tune.Tuner:
    """A new Tuner, or the interrupted study restored (finished trials are kept, not re-run).

    `study_uri` is where Tune and Train write (a folder or an s3:// / gs:// URI shared by all
    nodes); `local_dir` holds what the driver writes itself (MLflow's default store);
    `callbacks` are Tune callbacks added to the study's own (bench/goodput.py's timestamps).
    """
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, base=study.base_dict,
                             train_storage=f"{study_uri}/train", verbose=verbose),
        resources=dict(study.base.scaling.trial_driver_resources),
    )
    param_space = {d.key: d.tune_domain() for d in study.space}
    if tune.Tuner.can_restore(study_uri):
        print(f"[study] resuming {study_uri}: finished trials are kept"
              + ("; errored trials are retried" if retry_errored else ""), flush=True)
        return tune.Tuner.restore(study_uri, trainable=trainable, param_space=param_space,
                                  resume_unfinished=True, resume_errored=retry_errored)
    storage, name = study_uri.rsplit("/", 1)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune_config(study, study_uri),
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

