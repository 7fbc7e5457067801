"""The typed config: bad keys, types and values fail with the key and file named, before Ray."""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
import pytest
import yaml

from harness import train, tune
from harness.config import (
    ConfigError,
    TrainConfig,
    build_config,
    field_paths,
    get_dotted,
    load_config,
    parse_overrides,
    plain_type,
    set_dotted,
    to_dict,
)
from harness.preflight import check_model_builds

ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "tune_spaces/demo.yaml")
TINY_SWIN = ["model.backbone=swin_tiny_patch4_window7_224", "model.backbone_kwargs={img_size: 48, window_size: 6}"]


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_demo_space_base_loads_with_overrides():
    cfg = load_config(DEMO, ["loss.mil_weight=0.25", "data.crops.local_crops=2"])
    assert cfg.loss.mil_weight == 0.25
    assert cfg.data.crops.local_crops == 2
    assert cfg.model.backbone_kwargs["patch_size"] == 8


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, {"loss": {"mil_wieght": 1.0}})
    with pytest.raises(ConfigError, match=r"cfg.yaml.*'loss.mil_wieght'"):
        load_config(path)


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, {"data": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match=r"'data.batch_size' must be int, got str"):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("loss.method=byol", "'loss.method' must be one of ['dino', 'esvit', 'cmd'], got 'byol'"),
    ("loss.student_temp=0", "'loss.student_temp' must be > 0, got 0.0"),
    ("optim.momentum_teacher=1.5", "'optim.momentum_teacher' must be in [0, 1], got 1.5"),
    ("data.fraction=0", "'data.fraction' must be in (0, 1], got 0.0"),
    ("model.drop_path_rate=1", "'model.drop_path_rate' must be in [0, 1), got 1.0"),
    ("data.crops.blur_p=[1.0, 2.0, 0.5]", "'data.crops.blur_p.1' must be in [0, 1], got 2.0"),
    ("data.crops.local_scale.1=0", "'data.crops.local_scale.1' must be in (0, 1], got 0.0"),
    ("eval.knn_k=[10, 0]", "'eval.knn_k.1' must be > 0, got 0"),
    ("scaling.resources_per_worker={TPU: -1}", "'scaling.resources_per_worker.TPU' must be >= 0"),
    # rules between fields
    ("data.crops.local_scale=[0.5,0.2]", "'data.crops.local_scale' must satisfy low <= high"),
    ("loss.mil_form=official", "cannot be combined with 'loss.mil_pooling' attention"),
])
def test_out_of_range_values(override, message):
    overrides = [override, "loss.mil_pooling=attention"] if "mil_form" in override else [override]
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, overrides)
    assert message in str(err.value)
    assert str(err.value).startswith(DEMO)


@pytest.mark.parametrize("method, zero, refused", [
    ("cmd", ["image", "region", "mil"], True),
    ("esvit", ["image", "region"], True),  # its only terms: mil_weight does not count
    ("cmd", ["image", "region"], False),
    ("dino", ["image", "region", "mil"], False),  # the DINO loss has weight 1 whatever they say
])
def test_loss_weights_of_the_method_must_not_all_be_zero(method, zero, refused):
    overrides = [f"loss.method={method}", *[f"loss.{w}_weight=0" for w in zero]]
    if refused:
        with pytest.raises(ConfigError, match=f"weights 'loss.method' {method} uses .* are all zero"):
            load_config(DEMO, overrides)
    else:
        assert load_config(DEMO, overrides).loss.method == method


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["loss.mil_weight"])


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(DEMO)
    path = write(tmp_path, to_dict(cfg))
    assert to_dict(load_config(path)) == to_dict(cfg)
    assert build_config(to_dict(cfg)) == cfg


def test_defaults_are_valid():
    """Every default passes its own field's declaration (all constraints are ones the checker reads)."""
    assert build_config(to_dict(TrainConfig())) == TrainConfig()


# ---------------------------------------------------------------------------------------
# Numbers as a person writes them


def test_numbers_on_the_command_line():
    values = parse_overrides(["optim.lr=5e-4", "optim.min_lr=0.0005", "data.samples_per_epoch=1e9",
                              "optim.weight_decay=4E-2", "run.name=1e"])
    assert values == {"optim.lr": 0.0005, "optim.min_lr": 0.0005, "data.samples_per_epoch": 1e9,
                      "optim.weight_decay": 0.04, "run.name": "1e"}
    cfg = load_config(DEMO, ["optim.lr=5e-4", "data.samples_per_epoch=1e9"])
    assert cfg.optim.lr == 0.0005 and type(cfg.optim.lr) is float
    assert cfg.data.samples_per_epoch == 10**9 and type(cfg.data.samples_per_epoch) is int


def test_numbers_in_a_yaml_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("optim:\n  lr: 5e-4\n  min_lr: 1e-6\n  weight_decay: 0.0005\n"
                    "data:\n  samples_per_epoch: 1e9\n")
    cfg = load_config(path)
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.weight_decay) == (5e-4, 1e-6, 5e-4)
    assert cfg.data.samples_per_epoch == 10**9


# ---------------------------------------------------------------------------------------
# Every field refuses a value outside its declaration, in one line naming key and file


def bad_value(tp: Any) -> Any:
    """A value `tp` refuses, read from the declaration: past its first bound, not one of its
    choices, or of another type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        base, *meta = args
        parts = [p for m in meta for p in (m if isinstance(m, annotated_types.GroupedMetadata) else [m])]
        bound = parts[0]
        value = {annotated_types.Gt: lambda b: b.gt, annotated_types.Ge: lambda b: b.ge - 1,
                 annotated_types.Lt: lambda b: b.lt, annotated_types.Le: lambda b: b.le + 1}[type(bound)](bound)
        return base(value)
    if origin is Literal:
        return f"not-{args[0]}"
    if origin in (typing.Union, types.UnionType):
        return bad_value(next(a for a in args if a is not type(None)))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return [bad_value(args[0])]  # an item outside the items' declaration
    if origin is dict and args[1] is not Any:
        return {"key": bad_value(args[1])}
    return 5 if tp is str else "five"


LEAVES = sorted(field_paths())


def test_every_field_is_walked():
    assert len(LEAVES) > 80 and "optim.lr" in LEAVES and "data.crops.local_scale.1" in LEAVES
    assert all(not dataclasses.is_dataclass(tp) for tp in field_paths().values())


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("key", LEAVES)
def test_every_field_refuses_a_bad_value_in_one_line(key, tmp_path, capsys, no_ray):
    tree: dict[str, Any] = {}
    set_dotted(tree, key, bad_value(field_paths()[key]))
    path = write(tmp_path, tree)
    assert train.main(["--config", str(path)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {path}: ")
    assert f"'{key}" in line  # the key, or an item of it (eval.knn_k.0)


@pytest.mark.parametrize("args, message", [
    ([DEMO, "loss.nope=1"], "unknown key 'loss.nope'"),
    ([DEMO, "optim.epochs=two"], "'optim.epochs' must be int"),
    ([DEMO, "loss.mil_kl_direction=both"], "'loss.mil_kl_direction' must be one of ['bag||image', 'image||bag']"),
    ([DEMO, "loss.mil_kl_reduction=sum"], "'loss.mil_kl_reduction' must be one of"),
    ([DEMO, "loss.mil_form=official", "loss.mil_pooling=attention"], "cannot be combined"),
    ([DEMO, "data.demo=false", "data.shards=/no/such/folder"], "'data.shards' = /no/such/folder: no such folder"),
    ([DEMO, *TINY_SWIN], "model.conv_stem is for ViT backbones"),
    ([DEMO, *TINY_SWIN, "model.conv_stem=false", "eval.probe_feature=last4cls"],
     "feature 'last4cls' needs a class token; Swin has none"),
    ([DEMO, "model.backbone_kwargs={patch_size: 8, img_size: 64, depth: 4}", "model.dynamic_img_size=false"],
     "doesn't match model"),  # a fixed-size ViT cannot take the 32 px local crops
])
def test_train_cli_one_line_error_before_ray(args, message, capsys, no_ray):
    assert train.main(["--config", *args]) == 2
    line = one_error_line(capsys)
    assert message in line and DEMO in line


@pytest.mark.parametrize("overrides, message", [
    (["loss.mil_kl_reduction=sum"], "'loss.mil_kl_reduction' must be one of"),
    (["optim.lr=-5e-4"], "'optim.lr' must be > 0, got -0.0005"),
    ([*TINY_SWIN, "model.conv_stem=false", "eval.probe_feature=last4cls"], "needs a class token"),
])
def test_tune_cli_one_line_error_before_ray(overrides, message, capsys, no_ray):
    assert tune.main(["--space", DEMO, "--no-baseline", *overrides]) == 2
    line = one_error_line(capsys)
    assert message in line and DEMO in line


def test_every_declared_model_choice_builds():
    """Each value a Literal field of the model, the loss or the probe feature allows is one the
    network, the loss and the backbone accept: the accepted sets cannot drift from the code
    (eval.probe_feature last4cls included)."""
    for key, tp in field_paths().items():
        if typing.get_origin(tp) is not Literal or not key.startswith(("model.", "loss.", "eval.probe_feature")):
            continue
        for choice in typing.get_args(tp):
            cfg = load_config(DEMO, [f"{key}={choice}"])
            assert get_dotted(cfg, key) == choice
            check_model_builds(cfg, DEMO)


def test_preflight_leaves_loss_values_to_the_train_loop():
    """A legal value that makes the loss non-finite (tests/test_nan.py) passes the preflight: the
    worker reports it with epoch, step and term."""
    check_model_builds(load_config(DEMO, ["loss.student_temp=1.0e-40"]), DEMO)


# ---------------------------------------------------------------------------------------
# Hostile input: each refused in one line naming the key (and the file, the line)


def float_items() -> list[tuple[str, str]]:
    """(field, what an override sets) for every float field: `optim.lr` itself, or an entry of a
    mapping of floats (`scaling.resources_per_worker.GPU`)."""
    out = []
    for key, tp in field_paths().items():
        tp = plain_type(tp)
        if tp is float:
            out.append((key, key))
        elif typing.get_origin(tp) is dict and plain_type(typing.get_args(tp)[1]) is float:
            out.append((key, f"{key}.GPU"))
    return out


FLOATS = float_items()


def test_float_fields_are_found():
    assert {"optim.lr", "loss.student_temp", "data.crops.local_scale.1", "scaling.resources_per_worker"} <= \
        {key for key, _ in FLOATS}
    assert len(FLOATS) > 30


@pytest.mark.parametrize("key, item", FLOATS, ids=[key for key, _ in FLOATS])
def test_every_float_field_refuses_infinity_and_nan(key, item):
    for text, shown in ((".inf", "inf"), ("-.inf", "-inf"), (".nan", "nan"), ("1e999", "inf")):
        value = text if item == key else f"{{GPU: {text}}}"
        with pytest.raises(ConfigError) as err:
            load_config(DEMO, [f"{key}={value}"])
        assert str(err.value) == f"{DEMO}: '{item}' must be a finite number, got {shown}"


def test_non_finite_value_in_a_file_names_key_and_file(tmp_path, capsys, no_ray):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"extends: {DEMO}\noptim:\n  lr: .inf\n")
    assert train.main(["--config", str(path)]) == 2
    assert one_error_line(capsys) == f"error: {path}: 'optim.lr' must be a finite number, got inf"


@pytest.mark.parametrize("text, problem", [
    ("optim:\n  lr: 0.001\ndata:\n  batch_size: 4\noptim:\n  epochs: 3\n",
     "line 5: key 'optim' is given twice in one mapping (first on line 1)"),
    ("optim:\n  lr: 0.001\n  epochs: 2\n  lr: 5.0\n",
     "line 4: key 'lr' is given twice in one mapping (first on line 2)"),
    ("model:\n  backbone_kwargs: {depth: 2, depth: 3}\n",
     "line 2: key 'depth' is given twice in one mapping (first on line 2)"),
])
def test_a_key_given_twice_is_refused_naming_key_and_line(tmp_path, text, problem, capsys, no_ray):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    assert train.main(["--config", str(path)]) == 2
    assert one_error_line(capsys) == f"error: {path}: {problem}"


def test_a_merge_key_may_repeat_what_it_merges(tmp_path):
    """`<<: {...}` then a key it also holds is an override, not a key given twice."""
    path = tmp_path / "cfg.yaml"
    path.write_text(f"extends: {DEMO}\nmodel:\n  backbone_kwargs:\n"
                    "    <<: {patch_size: 8, img_size: 48, depth: 3}\n    depth: 2\n")
    assert load_config(path).model.backbone_kwargs["depth"] == 2


def laughs(levels: int, width: int = 10) -> str:
    """A "billion laughs" mapping: `levels` nested aliases of `width` items, width**levels values."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "".join(f"    {line}\n" for line in lines)


def test_an_alias_bomb_is_refused_in_one_short_line(tmp_path, capsys, no_ray):
    """Under 1 KB of nested aliases standing for 10^6 values (10^9 with three more lines):
    refused while the file is read, never built, walked or printed."""
    path = tmp_path / "cfg.yaml"
    path.write_text(f"extends: {DEMO}\nmodel:\n  backbone_kwargs:\n{laughs(6)}")
    assert len(path.read_text()) < 1024
    assert train.main(["--config", str(path)]) == 2
    assert one_error_line(capsys) == f"error: {path}: line 8: aliases expand this value to more than 100000 values"


def test_an_alias_into_itself_is_refused(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"extends: {DEMO}\nmodel:\n  backbone_kwargs: &kw {{depth: 2, more: *kw}}\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml: line 3: an alias refers to the value that contains it"):
        load_config(path)


def test_a_small_alias_is_read():
    assert parse_overrides(["eval.knn_k=[&k 10, *k]"]) == {"eval.knn_k": [10, 10]}


@pytest.mark.parametrize("override", [
    "run.name=[" + ", ".join(["'" + "x" * 5000 + "'"] * 200) + "]",  # a megabyte of value
    "run.name={" + ", ".join(f"k{i}: [{', '.join(['1'] * 500)}]" for i in range(100)) + "}",
    "loss." + "k" * 100_000 + "=1",  # and of key
])
def test_an_error_line_quotes_a_huge_value_or_key_in_short(override, capsys, no_ray):
    assert train.main(["--config", DEMO, override]) == 2
    line = one_error_line(capsys)
    assert len(line) <= 700 and line.startswith(f"error: {DEMO}: ")


def test_a_line_break_in_a_key_stays_on_one_line(tmp_path, capsys, no_ray):
    path = tmp_path / "cfg.yaml"
    path.write_text(f'extends: {DEMO}\nrun:\n  "na\\nme": x\n')
    assert train.main(["--config", str(path)]) == 2
    assert "unknown key 'run.na\\nme'" in one_error_line(capsys)


@pytest.mark.parametrize("override, message", [
    ("data.crops.local_scale.0.1=0.35", "'data.crops.local_scale' is a list: its one further part must be an item"),
    ("data.crops.local_scale.low=0.35", "'data.crops.local_scale' is a list: its one further part must be an item"),
    ("data.crops.local_scale.2=0.35", "'data.crops.local_scale' has 2 items, no item 2"),
    ("eval.knn_k.4=5", "'eval.knn_k' has 4 items, no item 4"),
    ("optim.lr.0=1", "'optim.lr' is a value (float), not a section"),
    ("data.samples_per_epoch.x=1", "'data.samples_per_epoch' is a value (int), not a section"),
    ("optim.lr=[1, ", "not valid YAML: line 1:"),
])
def test_an_override_must_name_a_field_exactly(override, message, capsys, no_ray):
    assert train.main(["--config", DEMO, override]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: override '{override.split('=')[0]}': ") and message in line


def test_an_item_override_sets_that_item_only():
    cfg = load_config(DEMO, ["data.crops.local_scale.1=0.35", "eval.knn_k.3=5", "model.backbone_kwargs.depth=2"])
    assert cfg.data.crops.local_scale == (0.1, 0.35) and cfg.eval.knn_k == (10, 20, 100, 5)
    assert cfg.model.backbone_kwargs == {"patch_size": 8, "img_size": 48, "depth": 2, "embed_dim": 96, "num_heads": 3}


@pytest.mark.parametrize("value", ["0", "-1"])
def test_tune_refuses_fewer_than_one_sample(value, capsys, no_ray):
    args = ["--space", DEMO, "--no-baseline", "--num-samples", value, "data.demo=false", "data.shards=/no/such/dir"]
    assert tune.main(args) == 2
    assert one_error_line(capsys) == f"error: command line: '--num-samples' must be >= 1, got {value}"


def test_tune_applies_the_number_of_samples_given(demo_shards, tmp_path, capsys, no_ray):
    with pytest.raises(RuntimeError, match="got as far as starting Ray"):  # every check before Ray passed
        tune.main(["--space", DEMO, "--no-baseline", "--num-samples", "1", "--storage", str(tmp_path),
                   "data.demo=false", f"data.shards={demo_shards}"])
    assert "[study] demo: 1 trials x <= 9 epochs" in capsys.readouterr().out
