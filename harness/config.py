"""One typed training config, loaded from YAML with dotted overrides, checked before Ray starts.

Every bad key or value becomes a `ConfigError` whose message names the dotted key and the
file, so a typo fails in a second on the laptop instead of minutes later inside a trial.
Each field declares its own allowed values (`Literal[...]`) or range (`Annotated[float,
annotated_types.Gt(0)]`); this module checks values against those declarations and the few
rules that tie fields together (`check_combinations`), so no table here repeats them.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import operator
import re
import reprlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
import yaml
from annotated_types import Ge, Gt

from cmd_model.config import METHOD_TERMS, EvalConfig, LossConfig, ModelConfig, OptimConfig
from shards.config import DataConfig

MAX_MESSAGE = 600  # characters of one error line: a hostile value cannot flood the terminal


class ConfigError(ValueError):
    """A config problem a user can fix: the message names the key and the file.

    It is one line (line breaks in a key or a path are shown as \\n) of at most MAX_MESSAGE
    characters, cut in the middle when longer, whatever value it quotes.
    """

    def __init__(self, message: str) -> None:
        message = message.replace("\r", "\\r").replace("\n", "\\n")
        if len(message) > MAX_MESSAGE:
            half = MAX_MESSAGE // 2 - 3
            message = f"{message[:half]} ... {message[-half:]}"
        super().__init__(message)


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 60
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 5
_SHOWN.maxlevel = 3


def shown(value: Any) -> str:
    """`repr(value)` cut short (reprlib): what an error message quotes of a value a user gave,
    without building the repr of a huge one."""
    return _SHOWN.repr(value)


@dataclass
class ScalingConfig:
    """How one training run (one trial) is spread over Ray Train workers."""

    num_workers: Annotated[int, Gt(0)] = 1
    use_gpu: bool = False
    cpus_per_worker: Annotated[float, Ge(0)] = 1.0
    gpus_per_worker: Annotated[float, Ge(0)] = 0.0  # 0 with use_gpu: one GPU per worker
    resources_per_worker: dict[str, Annotated[float, Ge(0)]] = field(default_factory=dict)
    # Resources of each Tune trial's driver process (the one that calls TorchTrainer.fit).
    # CPU 0 keeps drivers from starving the workers (in Ray 2.60 a silent hang otherwise);
    # Ray refuses an all-zero request, so the driver asks for the memory it uses (bytes): 2.5 GiB
    # covers a driver and the Train controller placed beside it (peaks measured in cluster/README.md).
    # On a cluster, `trial_driver: 0.01` pins drivers to non-preemptible nodes.
    trial_driver_resources: dict[str, Annotated[float, Ge(0)]] = field(
        default_factory=lambda: {"CPU": 0.0, "memory": 2.5 * 2**30})
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"  # auto: bf16 on GPUs that have it, else fp16; off on CPU

    @property
    def worker_gpus(self) -> float:
        """GPUs each worker holds: gpus_per_worker, 1 when it is 0 with use_gpu, none without."""
        return (self.gpus_per_worker or 1.0) if self.use_gpu else 0.0


@dataclass
class RunConfig:
    """Where a run writes, how often it checkpoints and how it survives failures."""

    name: str = "cmd"
    storage: str = "runs"  # local folder or s3:// / gs:// URI
    seed: int = 0
    max_failures: Annotated[int, Ge(0)] = 0  # Ray Train worker-group restarts from the last checkpoint
    # Refits after a node lost without a preemption drain (harness/node_loss.py); drained
    # preemptions are Ray Train's own, unlimited budget. Neither uses max_failures.
    max_node_losses: Annotated[int, Ge(0)] = 3
    checkpoint_every_steps: Annotated[int, Ge(0)] = 0  # 0: once per epoch only
    # async: rank 0 copies the state and goes on training while Ray Train's upload thread
    # writes, commits and uploads it; sync: the step waits for all of that.
    checkpoint_upload: Literal["async", "sync"] = "async"
    log_every_steps: Annotated[int, Ge(0)] = 0  # 0: a progress line per epoch only
    torch_threads: Annotated[int, Ge(0)] = 0  # 0: one per CPU given to the worker
    # Stop (resumably) once this epoch is done, keeping the full optim.epochs schedule: for
    # jobs with a time limit; rerun with 0 to continue. 0: run to optim.epochs.
    stop_after_epoch: Annotated[int, Ge(0)] = 0
    # Write rank 0's wall-clock marks (timing-<pid>.json in the run folder) for bench/goodput.py.
    time_marks: bool = False


@dataclass
class TrainConfig:
    """A whole training run: what `harness/train.py --config` and each Tune trial take."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ---------------------------------------------------------------------------------------
# Building a typed config from plain data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# annotated_types bound -> (its attribute, the test a value must pass, how a message shows it)
_BOUNDS: dict[type, tuple[str, Callable[[Any, Any], bool], str]] = {
    annotated_types.Gt: ("gt", operator.gt, ">"),
    annotated_types.Ge: ("ge", operator.ge, ">="),
    annotated_types.Lt: ("lt", operator.lt, "<"),
    annotated_types.Le: ("le", operator.le, "<="),
}


def _bounds(metadata: tuple[Any, ...]) -> list[tuple[str, Callable[[Any, Any], bool], Any]]:
    """(symbol, test, limit) for each bound in an `Annotated[...]`'s metadata (Interval unpacked)."""
    out = []
    for item in metadata:
        for part in item if isinstance(item, annotated_types.GroupedMetadata) else (item,):
            if type(part) not in _BOUNDS:
                raise TypeError(f"config fields support Gt/Ge/Lt/Le/Interval constraints, not {part!r}")
            attr, test, symbol = _BOUNDS[type(part)]
            out.append((symbol, test, getattr(part, attr)))
    return out


def _range_text(bounds: list[tuple[str, Callable[[Any, Any], bool], Any]]) -> str:
    """'> 0', '>= 0', 'in [0, 1]', 'in (0, 1]': the range a message asks for."""
    low = [(s, v) for s, _, v in bounds if s.startswith(">")]
    high = [(s, v) for s, _, v in bounds if s.startswith("<")]
    if len(low) == 1 and len(high) == 1:
        (ls, lv), (hs, hv) = low[0], high[0]
        return f"in {'(' if ls == '>' else '['}{lv}, {hv}{')' if hs == '<' else ']'}"
    return " and ".join(f"{s} {v}" for s, _, v in bounds)


def plain_type(tp: Any) -> Any:
    """The type under `Annotated[...]` and `| None` (int for `Annotated[int, Gt(0)] | None`)."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        else:
            return tp


def coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Return `value` as type `tp` within its declared choices or range, or raise a ConfigError
    naming `key` and `source`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        value = coerce(value, args[0], key, source)
        bounds = _bounds(args[1:])
        if not all(test(value, limit) for _, test, limit in bounds):
            raise ConfigError(f"{source}: '{key}' must be {_range_text(bounds)}, got {shown(value)}")
        return value
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ConfigError(f"{source}: '{key}' must be one of {list(args)}, got {shown(value)}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key, source)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {shown(value)}")
        return build_dataclass(tp, value, source, prefix=f"{key}.")
    if tp is Any:
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {shown(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{key}.{i}", source) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{source}: '{key}' must have {len(args)} items, got {shown(value)}")
        return tuple(coerce(v, a, f"{key}.{i}", source) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {shown(value)}")
        vtype = args[1] if args else Any
        return {str(k): coerce(v, vtype, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # .inf, .nan, 1e999: no range check can refuse NaN
                raise ConfigError(f"{source}: '{key}' must be a finite number, got {shown(value)}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(
        f"{source}: '{key}' must be {_type_name(tp)}, got {type(value).__name__} {shown(value)}"
    )


def build_dataclass(cls: type, values: dict[str, Any], source: str, prefix: str = "") -> Any:
    """`cls(**values)` with every value checked against its field's declared type."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}' (known under "
            f"'{prefix or '<top>'}': {', '.join(sorted(names))})"
        )
    kwargs = {k: coerce(v, hints[k], f"{prefix}{k}", source) for k, v in values.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) that YAML, Ray and checkpoints all accept."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def field_paths(cls: type = TrainConfig, prefix: str = "") -> dict[str, Any]:
    """Every dotted leaf key of the config with its type: what a search space may name.

    Items of fixed-length tuples are leaves too (`data.crops.local_scale.1`), so one end of a
    range such as a crop scale can be searched. Types keep their `Annotated` constraints.
    """
    out: dict[str, Any] = {}
    for name, tp in typing.get_type_hints(cls, include_extras=True).items():
        if dataclasses.is_dataclass(tp):
            out.update(field_paths(tp, f"{prefix}{name}."))
            continue
        out[f"{prefix}{name}"] = tp
        args = typing.get_args(tp)
        if typing.get_origin(tp) is tuple and args and Ellipsis not in args:
            out.update({f"{prefix}{name}.{i}": a for i, a in enumerate(args)})
    return out


# ---------------------------------------------------------------------------------------
# Overrides and files


def _field_type(tp: Any, part: str) -> Any:
    """The declared type of `part` below a field of type `tp`: a dataclass field, a mapping
    field's values; None where nothing is declared (an unknown key, a value of type Any)."""
    tp = plain_type(tp)
    if dataclasses.is_dataclass(tp):
        return typing.get_type_hints(tp, include_extras=True).get(part)
    if typing.get_origin(tp) is dict:
        return typing.get_args(tp)[1]
    return None


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted `key` in a nested dict as the config declares it, creating sections on the way.

    A list field takes one item index as its last part (`data.crops.local_scale.1`), a mapping
    field its entries (`model.backbone_kwargs.depth`). A key that goes on below a value
    (`optim.lr.x`), past an item (`data.crops.local_scale.0.1`) or out of a list's range is
    refused: it names no field. Unknown section keys are left to `build_dataclass` to name.
    """
    parts = key.split(".")
    node, tp = tree, TrainConfig
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        tp = _field_type(tp, part)
        declared = plain_type(tp)
        if typing.get_origin(declared) is tuple:
            _set_item(node, part, here, parts[i + 1:], key, value)
            return
        if tp is not None and declared is not Any and not dataclasses.is_dataclass(declared) \
                and typing.get_origin(declared) is not dict:
            raise ConfigError(f"override '{key}': '{here}' is a value ({_type_name(declared)}), not a section")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{here}' is not a section")
    node[parts[-1]] = value


def _set_item(node: dict[str, Any], part: str, field_key: str, rest: list[str], key: str, value: Any) -> None:
    """Set item `rest[0]` of the list field `part` of `node` (its default when not set yet)."""
    if len(rest) != 1 or not rest[0].isdecimal():
        raise ConfigError(f"override '{key}': '{field_key}' is a list: its one further part must be "
                          f"an item index (e.g. '{field_key}.0')")
    current = node[part] if part in node else get_dotted(TrainConfig(), field_key)
    if not isinstance(current, (list, tuple)):
        raise ConfigError(f"override '{key}': '{field_key}' is {shown(current)}, not a list")
    index = int(rest[0])
    if index >= len(current):
        raise ConfigError(f"override '{key}': '{field_key}' has {len(current)} items, no item {index}")
    items = list(current)
    items[index] = value
    node[part] = items


MAX_YAML_VALUES = 100_000  # nodes a config document may expand to; a training config has a few hundred


class YAMLRefused(yaml.MarkedYAMLError):
    """Valid YAML that a config may not use: a key given twice, aliases that expand too far."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float syntax: `5e-4` and `1e9` are numbers, as a
    person means them (PyYAML follows YAML 1.1, where a float needs a dot: `5e-4` is a string).

    It refuses what PyYAML lets through silently: a key given twice in one mapping (a second
    `optim:` section would replace the first), and aliases that expand the document past
    MAX_YAML_VALUES values (a 2 KB "billion laughs" of nested `*a` stands for 10^9 of them) or
    into themselves.
    """

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        _check_expansion(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may repeat what it overrides
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in first_line:
                        raise YAMLRefused(None, None, f"key {shown(key)} is given twice in one mapping "
                                                      f"(first on line {first_line[key]})", key_node.start_mark)
                    first_line[key] = line
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    break
        return super().construct_mapping(node, deep)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand it past MAX_YAML_VALUES nodes or into a cycle.

    Aliases share one node, so the expanded size is counted once per node (memoised), in time
    proportional to the text, not to the expansion."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise YAMLRefused(None, None, "an alias refers to the value that contains it", node.start_mark)
        open_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(item) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            n = 1
        open_nodes.discard(id(node))
        if n > MAX_YAML_VALUES:
            raise YAMLRefused(None, None, f"aliases expand this value to more than {MAX_YAML_VALUES} values",
                              node.start_mark)
        sizes[id(node)] = n
        return n

    if root is not None:
        size(root)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text the way every config, study file and override is read."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def yaml_problem(exc: BaseException) -> str:
    """One line for a YAML error: 'line N: what' (PyYAML's own text spans several lines),
    'not valid YAML: ...' for a syntax error."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    where = f"line {mark.line + 1}: " if mark is not None else ""
    return f"{where}{problem}" if isinstance(exc, YAMLRefused) else f"not valid YAML: {where}{problem}"


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings from a CLI to {dotted key: YAML-parsed value}."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. loss.mil_weight=0.5)")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = load_yaml(raw) if raw.strip() else ""
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            raise ConfigError(f"override '{key.strip()}': {yaml_problem(exc)}") from None
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from disk, or a ConfigError naming the file and the line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = load_yaml(p.read_text()) or {}
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        # ValueError: an integer of more digits than Python converts; RecursionError: nesting
        raise ConfigError(f"{p}: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    return data


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` laid over `base`, section by section."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def base_section(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """The training config inside a file: a space file's `base:`, or the file itself.

    `base` may be a path, or a mapping whose `extends: FILE` names a config it overrides, so
    the per-dataset studies share one paper recipe.
    """
    def resolve(ref: str) -> Path:
        return Path(ref) if Path(ref).is_absolute() else path.parent / ref

    if "extends" in data:
        parent = resolve(data["extends"])
        rest = {k: v for k, v in data.items() if k != "extends"}
        return deep_merge(base_section(read_yaml(parent), parent), rest)
    if "base" not in data:
        return data
    base = data["base"]
    if isinstance(base, str):
        return base_section(read_yaml(resolve(base)), resolve(base))
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: 'base' must be a mapping or a path to a config file")
    return base_section(base, path)


def build_config(values: dict[str, Any], overrides: dict[str, Any] | None = None,
                 source: str = "<config>") -> TrainConfig:
    """Typed, checked TrainConfig from a plain dict plus dotted overrides."""
    tree = copy.deepcopy(values)
    for key, value in (overrides or {}).items():
        set_dotted(tree, key, value)
    cfg = build_dataclass(TrainConfig, tree, source)
    check_combinations(cfg, source)
    return cfg


def load_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from a config file or a space file's base, with CLI overrides applied."""
    p = Path(path)
    ov = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    return build_config(base_section(read_yaml(p), p), ov, source=str(p))


# ---------------------------------------------------------------------------------------
# Rules that tie fields together (each field's own range is on its declaration)


def get_dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = cfg[int(part)] if part.isdigit() else getattr(cfg, part)
    return cfg


def check_combinations(cfg: TrainConfig, source: str) -> None:
    """Reject combinations of valid values that no run can use, naming the keys: caught here,
    before Ray starts, not in each worker."""
    for key in ("data.crops.global_scale", "data.crops.local_scale"):
        lo, hi = get_dotted(cfg, key)
        if not lo <= hi:
            raise ConfigError(f"{source}: '{key}' must satisfy low <= high, got {[lo, hi]}")
    loss = cfg.loss
    if loss.method != "dino":  # dino is its image term alone, with weight 1 (cmd_model/loss)
        used = tuple(f"{term}_weight" for term in METHOD_TERMS[loss.method])
        if not any(getattr(loss, w) > 0 for w in used):
            names = ", ".join(f"'loss.{w}'" for w in used)
            raise ConfigError(f"{source}: the weights 'loss.method' {loss.method} uses ({names}) are all zero")
    if loss.mil_form == "official" and loss.mil_pooling == "attention":
        raise ConfigError(f"{source}: 'loss.mil_form' official is the official unweighted sum over "
                          "tokens; it cannot be combined with 'loss.mil_pooling' attention")
