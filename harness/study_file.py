"""Study files: a base training config, a search space, and how to search it.

    extends: path/to/study.yaml  # optional: a study this one overrides, section by section
    base: {...} | path/to/config.yaml
    space:                       # dotted training-config key -> distribution
      loss.mil_weight: {type: uniform, low: 0.1, high: 2.0}
      loss.teacher_temp: {type: loguniform, low: 0.02, high: 0.1}
      data.crops.local_crops: {type: int, low: 2, high: 8}      # both bounds inclusive
      loss.mil_pooling: {type: choice, values: [sum, attention]}
    points_to_evaluate: [...]    # default: the base config's own values first
    metric: probe_top1
    mode: max
    search: {sampler: tpe, num_samples: 8, max_concurrent: 2, seed: 0, startup_trials: 10, multivariate: false,
             storage: null}     # null: optuna.journal in the study folder; or a database URL
    scheduler: {type: asha, max_t: 4, grace_period: 1, reduction_factor: 2,
                rung_metric: null, rung_mode: null}   # null: ASHA compares `metric` the study's way
    confirm: {top_k: 3, seeds: 2}  # then train the top 3 configs with 2 more seeds; best = best mean
    scaling: {...}               # overrides base.scaling: workers, GPUs, CPUs per trial
    trackers:                    # optional, besides TensorBoard (always on): one run per trial
      mlflow: {tracking_uri: null}             # null: mlflow.db in the study folder; `true` = defaults
      wandb: {project: null, mode: offline}    # null: the study's name; offline needs no account

Everything is checked here, before Ray starts, and each error names the key and the file; a
study whose ASHA rung epochs would carry no probe (eval.probe_every) is refused.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from annotated_types import Ge

from harness.config import (
    ConfigError,
    TrainConfig,
    base_section,
    build_config,
    coerce,
    deep_merge,
    field_paths,
    get_dotted,
    plain_type,
    read_yaml,
    set_dotted,
    shown,
    to_dict,
)
from harness.objective import EPOCH_METRICS, LABELLED_METRICS, rung_epochs, unprobed_rungs

Mode = Literal["max", "min"]  # whether the study maximises or minimises `metric`
STUDY_FILE = "study.yaml"  # the resolved study, saved in its run folder for reports and resumes
_TOP_KEYS = {"extends", "base", "space", "points_to_evaluate", "metric", "mode", "search", "scheduler",
             "confirm", "scaling", "name", "storage", "trackers"}
_DIST_KEYS = {"uniform": {"low", "high"}, "loguniform": {"low", "high"}, "int": {"low", "high"},
              "choice": {"values"}}


@dataclass
class Dist:
    """One searched key: a distribution Tune and Optuna both understand."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    values: list[Any] = field(default_factory=list)

    def contains(self, value: Any) -> bool:
        if self.type == "choice":
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high

    def corners(self) -> list[Any]:
        """Extreme values a sample can take: each must build a valid config."""
        return list(self.values) if self.type == "choice" else [self.low, self.high]

    def tune_domain(self) -> Any:
        from ray import tune

        if self.type == "uniform":
            return tune.uniform(self.low, self.high)
        if self.type == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.type == "int":
            return tune.randint(int(self.low), int(self.high) + 1)  # Tune's upper bound is exclusive
        return tune.choice(list(self.values))


@dataclass
class SearchSettings:
    sampler: Literal["tpe", "random"] = "tpe"
    num_samples: Annotated[int, Ge(1)] = 8
    max_concurrent: Annotated[int, Ge(1)] = 1
    seed: int = 0
    # TPE samples at random until this many trials were told (Optuna's default 10)
    startup_trials: Annotated[int, Ge(0)] = 10
    multivariate: bool = False  # TPE models the parameters jointly (Falkner et al. 2018) or one by one
    # Where Optuna keeps the trials (harness/study_storage.py): None = optuna.journal in the study
    # folder; a database URL (postgresql://..., sqlite:///...) for a study a team shares.
    storage: str | None = None


@dataclass
class SchedulerSettings:
    type: Literal["asha", "none"] = "asha"
    max_t: Annotated[int, Ge(1)] = 4  # epochs; also the trial's optim.epochs
    grace_period: Annotated[int, Ge(1)] = 1  # <= max_t
    reduction_factor: Annotated[int, Ge(2)] = 2
    # What ASHA compares at its rungs: None = the study's metric; any metric the runs report every
    # measured epoch (harness/objective.py EPOCH_METRICS), e.g. an earlier signal of the final probe.
    rung_metric: str | None = None
    rung_mode: Mode | None = None  # None = the study's mode


@dataclass
class ConfirmSettings:
    """After the search: the top_k configs are trained `seeds` more times with other run seeds at the
    full budget, and the study's best is the highest mean over seeds (harness/objective.py)."""

    top_k: Annotated[int, Ge(0)] = 0  # 0: no confirm stage
    seeds: Annotated[int, Ge(1)] = 1


@dataclass
class MLflowSettings:
    tracking_uri: str | None = None  # None: an SQLite store, mlflow.db in the study folder


@dataclass
class WandbSettings:
    project: str | None = None  # None: the study's name
    # offline: runs in <study folder>/wandb, no account (`wandb sync` uploads them); online: `wandb login` first
    mode: Literal["offline", "online", "disabled"] = "offline"


@dataclass
class TrackerSettings:
    """Experiment trackers (harness/tuner.py `_trackers`); None: off. In a study file, `true` turns
    one on with its defaults."""

    mlflow: MLflowSettings | None = None
    wandb: WandbSettings | None = None


@dataclass
class Study:
    """A validated study file."""

    path: Path
    name: str
    base: TrainConfig
    space: list[Dist]
    points: list[dict[str, Any]]
    metric: str = "probe_top1"
    mode: Mode = "max"
    search: SearchSettings = field(default_factory=SearchSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    confirm: ConfirmSettings = field(default_factory=ConfirmSettings)
    storage: str = "runs"
    trackers: TrackerSettings = field(default_factory=TrackerSettings)

    @property
    def base_dict(self) -> dict[str, Any]:
        """`base` as the plain dict that YAML, Ray and `build_config` take; always made from `base`,
        so the two cannot disagree."""
        return to_dict(self.base)

    @base_dict.setter
    def base_dict(self, values: dict[str, Any]) -> None:
        self.base = build_config(values, source=f"{self.path} (base)")

    def save(self, folder: Path) -> Path:
        """Write the resolved study (full base config, space, settings) into its run folder."""
        space = {}
        for d in self.space:
            space[d.key] = {"type": d.type, "values": d.values} if d.type == "choice" else \
                {"type": d.type, "low": d.low, "high": d.high}
        data = {"name": self.name, "base": self.base_dict, "space": space,
                "points_to_evaluate": self.points, "metric": self.metric, "mode": self.mode,
                "search": dataclasses.asdict(self.search),
                "scheduler": dataclasses.asdict(self.scheduler),
                "confirm": dataclasses.asdict(self.confirm),
                "storage": self.storage, "trackers": dataclasses.asdict(self.trackers)}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STUDY_FILE).write_text(yaml.safe_dump(data, sort_keys=False))
        return folder / STUDY_FILE

    def trial_config(self, params: dict[str, Any]) -> TrainConfig:
        """The training config of one trial: the base plus the sampled dotted values."""
        return build_config(self.base_dict, params, source=f"{self.path} (trial)")


def _settings(cls: type, values: Any, key: str, source: Path) -> Any:
    return cls() if values is None else coerce(values, cls, key, str(source))


def _trackers(values: Any, source: Path) -> TrackerSettings:
    """The `trackers` section; `name: true` is the tracker with its defaults, false or null leaves it off."""
    if isinstance(values, dict):
        values = {name: {} if on is True else None if on is False else on for name, on in values.items()}
    return _settings(TrackerSettings, values, "trackers", source)


def _parse_dist(key: str, spec: Any, source: Path) -> Dist:
    fields = field_paths()
    if key not in fields:
        raise ConfigError(f"{source}: space key '{key}' is not a training config field "
                          f"(e.g. {', '.join(sorted(fields)[:4])}, ...)")
    if not isinstance(spec, dict) or spec.get("type") not in _DIST_KEYS:
        raise ConfigError(f"{source}: space '{key}' needs 'type' in {sorted(_DIST_KEYS)}, got {shown(spec)}")
    kind = spec["type"]
    extra = set(spec) - _DIST_KEYS[kind] - {"type"}
    missing = _DIST_KEYS[kind] - set(spec)
    if extra or missing:
        raise ConfigError(f"{source}: space '{key}' ({kind}) takes {sorted(_DIST_KEYS[kind])}; "
                          f"{'unknown ' + str(sorted(extra)) if extra else 'missing ' + str(sorted(missing))}")
    if kind == "choice":
        values = spec["values"]
        if not isinstance(values, list) or len(values) < 2:
            raise ConfigError(f"{source}: space '{key}' choice needs at least 2 values, got {shown(values)} "
                              f"(set a single value in 'base' instead)")
        return Dist(key, kind, values=values)
    low, high = spec["low"], spec["high"]
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{source}: space '{key}.{name}' must be a number, got {shown(v)}")
    if not low < high:
        raise ConfigError(f"{source}: space '{key}' is an empty range: low {low} >= high {high}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{source}: space '{key}' loguniform needs low > 0, got {low}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{source}: space '{key}' int needs integer bounds, got {low}, {high}")
    if plain_type(fields[key]) is int and kind != "int":
        raise ConfigError(f"{source}: space '{key}' is an int field: use type int")
    return Dist(key, kind, low=low, high=high)


def _check_metrics(metric: str, scheduler: SchedulerSettings, base: TrainConfig, source: Path) -> None:
    """The objective and the rung metric must be values the runs report at every measured epoch,
    and measurable without labels when the evaluation is label-free."""
    for key, name in (("metric", metric), ("scheduler.rung_metric", scheduler.rung_metric)):
        if name is None:
            continue
        if name not in EPOCH_METRICS:
            raise ConfigError(f"{source}: '{key}' = {name!r} is not reported by the runs at each measured epoch "
                              f"(reported: {', '.join(EPOCH_METRICS)})")
        if base.eval.label_free and name in LABELLED_METRICS:
            raise ConfigError(f"{source}: '{key}' = {name!r} needs labels, but eval.label_free is true "
                              "(e.g. metric: rankme)")


def read_study_file(source: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A study file's mapping, laid over the study it `extends` (deep-merged: a section it gives
    replaces that section's keys one by one; a list, such as points_to_evaluate, is replaced whole).
    A base given by path (or by its own `extends`) stays relative to the file that names it."""
    data = read_yaml(source)
    if "extends" not in data:
        return data
    ref = data["extends"]
    if not isinstance(ref, str):
        raise ConfigError(f"{source}: 'extends' must be the path of a study file, got {ref!r}")
    parent_path = (source.parent / ref).resolve()
    if parent_path in seen:
        raise ConfigError(f"{source}: 'extends' = {ref} leads back to {parent_path}")
    parent = read_study_file(parent_path, (*seen, source.resolve()))
    base = parent.get("base")
    if isinstance(base, str):
        parent["base"] = str(parent_path.parent / base)
    elif isinstance(base, dict) and isinstance(base.get("extends"), str):
        parent["base"] = {**base, "extends": str(parent_path.parent / base["extends"])}
    return deep_merge(parent, {k: v for k, v in data.items() if k != "extends"})


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> Study:
    """Read and check a study file; `overrides` are dotted base-config overrides from the CLI."""
    source = Path(path)
    data = read_study_file(source)
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key '{unknown[0]}' (known: {', '.join(sorted(_TOP_KEYS))})")
    base_dict = copy.deepcopy(base_section(data, source))
    for key, value in (data.get("scaling") or {}).items():
        set_dotted(base_dict, f"scaling.{key}", value)
    for key, value in (overrides or {}).items():
        set_dotted(base_dict, key, value)
    search = _settings(SearchSettings, data.get("search"), "search", source)
    scheduler = _settings(SchedulerSettings, data.get("scheduler"), "scheduler", source)
    if scheduler.grace_period > scheduler.max_t:
        raise ConfigError(f"{source}: 'scheduler' needs grace_period <= max_t, got "
                          f"{scheduler.grace_period} > {scheduler.max_t}")
    set_dotted(base_dict, "optim.epochs", scheduler.max_t)
    base = build_config(base_dict, source=str(source))
    if scheduler.type == "asha":
        rungs = (scheduler.grace_period, scheduler.max_t, scheduler.reduction_factor)
        missing = unprobed_rungs(*rungs, base.eval.probe_every)
        if missing:
            raise ConfigError(
                f"{source}: ASHA compares trials at epochs {rung_epochs(*rungs)}"
                f" but 'eval.probe_every' = {base.eval.probe_every} measures no probe at epoch(s) {missing}: "
                f"set eval.probe_every to a divisor of every rung epoch")

    space_spec = data.get("space") or {}
    if not isinstance(space_spec, dict) or not space_spec:
        raise ConfigError(f"{source}: 'space' must map at least one training config key to a distribution")
    space = [_parse_dist(key, spec, source) for key, spec in space_spec.items()]
    for dist in space:  # every sample must build a valid config
        for value in dist.corners():
            try:
                build_config(base_dict, {dist.key: value}, source=str(source))
            except ConfigError as exc:
                raise ConfigError(f"{source}: space '{dist.key}' can sample {shown(value)}, which is invalid: "
                                  f"{str(exc).split(': ', 1)[-1]}") from None

    points = data.get("points_to_evaluate")
    if points is None:  # the base config's own values first (the paper defaults in real spaces)
        point = {d.key: get_dotted(base, d.key) for d in space if d.contains(get_dotted(base, d.key))}
        points = [point] if point else []
    if not isinstance(points, list):
        raise ConfigError(f"{source}: 'points_to_evaluate' must be a list of mappings")
    by_key = {d.key: d for d in space}
    for i, point in enumerate(points):
        if not isinstance(point, dict):
            raise ConfigError(f"{source}: 'points_to_evaluate[{i}]' must be a mapping")
        for key, value in point.items():
            if key not in by_key:
                raise ConfigError(f"{source}: 'points_to_evaluate[{i}].{key}' is not in 'space'")
            if not by_key[key].contains(value):
                raise ConfigError(f"{source}: 'points_to_evaluate[{i}].{key}' = {shown(value)} is outside "
                                  f"the space ({by_key[key].type} {by_key[key].corners()})")
    metric = coerce(data.get("metric", Study.metric), str, "metric", str(source))
    mode = coerce(data.get("mode", Study.mode), Mode, "mode", str(source))
    _check_metrics(metric, scheduler, base, source)
    confirm = _settings(ConfirmSettings, data.get("confirm"), "confirm", source)
    return Study(path=source, name=str(data.get("name") or source.stem), base=base, space=space,
                 points=[dict(p) for p in points], metric=metric, mode=mode, search=search, scheduler=scheduler,
                 confirm=confirm,
                 storage=str(data.get("storage") or base.run.storage),
                 trackers=_trackers(data.get("trackers"), source))
