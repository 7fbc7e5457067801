"""Study files: each kind of bad space gets an error naming the key and the file."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.config import ConfigError, field_paths, get_dotted, parse_overrides
from harness.study_file import MLflowSettings, TrackerSettings, WandbSettings, load_study

ROOT = Path(__file__).resolve().parent.parent
SPACES = sorted((ROOT / "tune_spaces").glob("*.yaml"))
DEMO = ROOT / "tune_spaces" / "demo.yaml"


def study_file(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(DEMO.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def overlaps(key: str, other: str) -> bool:
    """`data.crops.local_scale` and `data.crops.local_scale.1` name the same field, in part."""
    return key == other or key.startswith(other + ".") or other.startswith(key + ".")


@pytest.mark.parametrize("space", SPACES, ids=[p.stem for p in SPACES])
def test_shipped_spaces_load_and_a_trial_is_the_base_with_its_values(space):
    """The points to evaluate, and the space's low and high corners (trials far from the base)."""
    study = load_study(space)
    assert study.points, "the base config is evaluated first"
    corners = [{d.key: d.corners()[end] for d in study.space} for end in (0, -1)]
    for point in [*study.points, *corners]:
        cfg = study.trial_config(point)
        assert {key: get_dotted(cfg, key) for key in point} == point
        untouched = [k for k in field_paths() if not any(overlaps(k, key) for key in point)]
        assert [k for k in untouched if get_dotted(cfg, k) != get_dotted(study.base, k)] == []


@pytest.mark.parametrize("change, message", [
    ({"space": {"loss.mil_wieght": {"type": "uniform", "low": 0, "high": 1}}},
     "space key 'loss.mil_wieght' is not a training config field"),
    ({"space": {"loss.mil_weight": {"type": "uniform", "low": 1.0, "high": 1.0}}},
     "space 'loss.mil_weight' is an empty range"),
    ({"space": {"loss.mil_pooling": {"type": "choice", "values": ["sum"]}}},
     "space 'loss.mil_pooling' choice needs at least 2 values"),
    ({"space": {"loss.mil_weight": {"type": "uniform", "low": 0.1, "high": 2.0}},
      "points_to_evaluate": [{"loss.mil_weight": 5.0}]},
     "'points_to_evaluate[0].loss.mil_weight' = 5.0 is outside the space"),
    ({"space": {"loss.student_temp": {"type": "uniform", "low": 0.0, "high": 0.2}}},
     "space 'loss.student_temp' can sample 0.0, which is invalid"),
    ({"space": {"data.crops.local_crops": {"type": "uniform", "low": 2, "high": 6}}},
     "space 'data.crops.local_crops' is an int field"),
    ({"space": {"loss.teacher_temp": {"type": "loguniform", "low": 0.0, "high": 0.1}}},
     "loguniform needs low > 0"),
    ({"space": {"loss.mil_weight": {"type": "normal", "low": 0, "high": 1}}}, "needs 'type' in"),
    ({"serach": {"num_samples": 2}}, "unknown key 'serach'"),
    ({"search": {"num_samples": "many"}}, "'search.num_samples' must be int"),
    ({"search": {"num_samples": 0}}, "'search.num_samples' must be >= 1, got 0"),
    ({"search": {"sampler": "grid"}}, "'search.sampler' must be one of ['tpe', 'random'], got 'grid'"),
    ({"scheduler": {"type": "hyperband"}}, "'scheduler.type' must be one of ['asha', 'none']"),
    ({"scheduler": {"reduction_factor": 1}}, "'scheduler.reduction_factor' must be >= 2, got 1"),
    ({"mode": "up"}, "'mode' must be one of ['max', 'min'], got 'up'"),
    ({"space": {"loss.mil_pooling": {"type": "choice", "values": ["sum", "attention"]}},
      "base": {"loss": {"mil_form": "official"}}},
     "space 'loss.mil_pooling' can sample 'attention', which is invalid"),
    ({"scheduler": {"type": "asha", "max_t": 2, "grace_period": 3, "reduction_factor": 2}},
     "grace_period <= max_t"),
    ({"trackers": {"wandbb": {"mode": "offline"}}}, "unknown key 'trackers.wandbb' (known under 'trackers.': mlflow"),
    ({"trackers": {"wandb": {"mode": "offlne"}}},
     "'trackers.wandb.mode' must be one of ['offline', 'online', 'disabled'], got 'offlne'"),
    ({"trackers": {"mlflow": {"uri": "sqlite:///m.db"}}}, "unknown key 'trackers.mlflow.uri'"),
    ({"trackers": {"mlflow": "yes"}}, "'trackers.mlflow' must be a mapping"),
])
def test_bad_space_errors_name_key_and_file(tmp_path, change, message):
    path = study_file(tmp_path, **change)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_trackers_are_off_unless_named_and_survive_the_saved_study(tmp_path):
    assert load_study(study_file(tmp_path)).trackers == TrackerSettings()
    study = load_study(study_file(tmp_path, trackers={"mlflow": True, "wandb": {"project": "birds"}}))
    assert study.trackers == TrackerSettings(mlflow=MLflowSettings(), wandb=WandbSettings(project="birds"))
    assert study.trackers.wandb.mode == "offline"
    assert load_study(study.save(tmp_path / "run")).trackers == study.trackers
    off = load_study(study_file(tmp_path, trackers={"mlflow": False, "wandb": {"mode": "disabled"}})).trackers
    assert off.mlflow is None and off.wandb == WandbSettings(mode="disabled")


def test_int_bounds_are_inclusive(tmp_path):
    study = load_study(study_file(tmp_path, space={"data.crops.local_crops": {"type": "int", "low": 2, "high": 3}}))
    domain = study.space[0].tune_domain()
    samples = {domain.sample() for _ in range(200)}
    assert samples == {2, 3}


def test_default_point_is_the_base_configs_value_of_each_searched_key(tmp_path):
    study = load_study(study_file(tmp_path, points_to_evaluate=None))
    searched = list(yaml.safe_load(DEMO.read_text())["space"])
    assert study.points == [{key: get_dotted(study.base, key) for key in searched}]
    assert study.trial_config(study.points[0]) == study.base


def test_default_point_leaves_out_a_base_value_the_space_cannot_sample(tmp_path):
    space = yaml.safe_load(DEMO.read_text())["space"]
    key, *others = list(space)
    value = get_dotted(load_study(DEMO).base, key)
    space[key] = {"type": "uniform", "low": value + 1, "high": value + 2}
    study = load_study(study_file(tmp_path, space=space, points_to_evaluate=None))
    assert set(study.points[0]) == set(others)


def test_numbers_in_a_study_file_and_its_overrides(tmp_path):
    """`1e-4` in a study file and `1e-7` on the command line are numbers (YAML 1.2), not strings."""
    path = tmp_path / "space.yaml"
    path.write_text(f"base: {ROOT / 'tune_spaces/demo.yaml'}\n"
                    "space:\n  optim.lr: {type: loguniform, low: 1e-4, high: 1e-2}\n"
                    "points_to_evaluate: [{optim.lr: 5e-3}]\n"
                    "scheduler: {max_t: 9, grace_period: 3, reduction_factor: 3}\n")  # the demo's probe_every 3
    study = load_study(path, parse_overrides(["optim.min_lr=1e-7"]))
    assert (study.space[0].low, study.space[0].high) == (1e-4, 1e-2)
    assert study.points == [{"optim.lr": 5e-3}]
    assert study.base.optim.min_lr == 1e-7


@pytest.mark.parametrize("changes,message", [
    ({"metric": "probe_top"}, "'metric' = 'probe_top' is not reported"),
    ({"scheduler": {"type": "asha", "max_t": 9, "grace_period": 3, "reduction_factor": 3, "rung_metric": "knn"}},
     "'scheduler.rung_metric' = 'knn' is not reported"),
    ({"confirm": {"top_k": -1}}, "confirm"),
    ({"confirm": {"top_k": 2, "seeds": 0}}, "confirm"),
])
def test_metrics_and_confirm_settings_are_checked(tmp_path, capsys, no_ray, changes, message):
    from harness import tune as tune_cli

    with pytest.raises(ConfigError, match=message):
        load_study(study_file(tmp_path, **changes))
    assert tune_cli.main(["--space", str(study_file(tmp_path, **changes))]) == 2  # before Ray
    assert message.split(" =")[0].strip("'") in capsys.readouterr().err


def test_a_label_free_study_selects_on_a_label_free_metric(tmp_path):
    with pytest.raises(ConfigError, match="'metric' = 'probe_top1' needs labels"):
        load_study(study_file(tmp_path), {"eval.label_free": True})
    study = load_study(study_file(tmp_path, metric="rankme"), {"eval.label_free": True})
    assert study.metric == "rankme" and study.base.eval.label_free


def test_dataset_studies_confirm_their_top_three_with_two_more_seeds():
    for name in ("cub", "cars", "aircraft"):
        confirm = load_study(ROOT / "tune_spaces" / f"{name}.yaml").confirm
        assert (confirm.top_k, confirm.seeds) == (3, 2), name


def test_dataset_studies_hold_only_what_differs_from_their_shared_study(tmp_path):
    """cub, cars and aircraft extend recipes/paper_study.yaml: the same space, search and scaling,
    their own name and shards; a study can extend one in another folder, and a loop is refused."""
    shared = load_study(ROOT / "tune_spaces" / "recipes" / "paper_study.yaml")
    for name in ("cub", "cars", "aircraft"):
        study = load_study(ROOT / "tune_spaces" / f"{name}.yaml")
        assert study.name == name and study.base.data.shards == f"data/{name}"
        assert [(d.key, d.type, d.low, d.high, d.values) for d in study.space] == \
            [(d.key, d.type, d.low, d.high, d.values) for d in shared.space]
        assert study.points == shared.points and study.search == shared.search
        assert study.base.scaling == shared.base.scaling and study.base.model == shared.base.model
    elsewhere = tmp_path / "mine.yaml"
    elsewhere.write_text(yaml.safe_dump({"extends": str(ROOT / "tune_spaces" / "cub.yaml"), "name": "mine",
                                         "search": {"num_samples": 4}}))
    mine = load_study(elsewhere)
    assert mine.search.num_samples == 4 and mine.search.max_concurrent == shared.search.max_concurrent
    assert mine.base.data.shards == "data/cub" and mine.base.optim.lr == shared.base.optim.lr
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="leads back"):
        load_study(tmp_path / "a.yaml")
