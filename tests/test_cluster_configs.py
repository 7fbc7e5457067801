"""The cluster files in cluster/, checked against what reads them: Ray 2.60's launcher schema and
validator, KubeRay's v1 CRD schemas (cluster/kuberay/crds/), Ray's own node-provider source
(which cloud API calls the head makes, so which permissions the policies in cluster/iam/ must
grant), the Dockerfile's CUDA variant against the node images' drivers, and the study YAMLs'
resource requests against each node type. Fast: no Ray cluster is started.

What only a real cloud can show (image pulls, IAM evaluation by AWS/GCP, the operator's own
behaviour) is listed in cluster/README.md, "What was verified where".
"""
from __future__ import annotations

import ast
import copy
import fnmatch
import functools
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.specifiers import SpecifierSet

from harness.gpu_check import MIN_DRIVER_FOR_CUDA_MAJOR, gpu_stack_problem

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER_YAMLS = [CLUSTER / "aws-gpu.yaml", CLUSTER / "gcp-gpu.yaml"]
FAKE_YAML = CLUSTER / "fake-multinode.yaml"
KUBERAY = CLUSTER / "kuberay"
KUBERAY_YAMLS = sorted(KUBERAY.glob("*.yaml"))
KUBERAY_CRDS = KUBERAY / "crds"  # KubeRay's own CRDs, vendored unchanged (its README.md says which version)
IAM = CLUSTER / "iam"
RAY_KINDS = {"RayCluster", "RayJob", "RayService"}
PRIVATE_PORTS = {6379, 8265, 10001}  # GCS, dashboard + job API, Ray Client
STUDY_SPACES = [ROOT / "tune_spaces" / f"{name}.yaml" for name in ("cub", "cars", "aircraft")]
PROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def ray_version() -> str:
    import ray

    return ray.__version__


def ray_source(relative: str) -> str:
    """Text of a module of the installed Ray (read, not imported: cloud SDKs are not installed)."""
    import ray

    return (Path(ray.__file__).parent / relative).read_text()


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def all_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def strings(node: object) -> Iterator[str]:
    """Every string value of a parsed YAML document, at any depth."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


# ---------------------------------------------------------------------------------------
# Launcher YAMLs (`ray up`)


def is_spot(node_config: dict) -> bool:
    """AWS spot market or GCP Spot/preemptible scheduling."""
    market = (node_config.get("InstanceMarketOptions") or {}).get("MarketType", "")
    scheduling = node_config.get("scheduling") or {}
    if isinstance(scheduling, list):  # Ray's older examples use a list of one-key mappings
        scheduling = {k: v for item in scheduling for k, v in item.items()}
    return (market.lower() == "spot"
            or str(scheduling.get("provisioningModel", "")).upper() == "SPOT"
            or scheduling.get("preemptible") is True)


def worker_types(cfg: dict) -> dict[str, dict]:
    return {name: t for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"]}


def init_commands(cfg: dict, node_type: str) -> list[str]:
    """The initialization commands a node of this type runs (a type's own list replaces the global)."""
    own = cfg["available_node_types"][node_type].get("initialization_commands")
    return list(own if own is not None else cfg.get("initialization_commands") or [])


@pytest.fixture(params=LAUNCHER_YAMLS, ids=lambda p: p.name)
def launcher(request) -> tuple[Path, dict]:
    return request.param, load(request.param)


def test_launcher_yaml_passes_rays_validator(launcher):
    from ray.autoscaler._private.util import prepare_config, validate_config

    path, cfg = launcher
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)  # raises jsonschema.ValidationError / ValueError on a bad config
    assert prepared["provider"]["type"] in ("aws", "gcp")


def test_resource_counts_are_integers(launcher):
    path, cfg = launcher
    for name, node_type in cfg["available_node_types"].items():
        for resource, count in node_type["resources"].items():
            assert isinstance(count, int) and not isinstance(count, bool), (path.name, name, resource)
            assert count >= 0


def test_only_the_head_holds_trial_drivers_and_it_runs_no_training(launcher):
    """A driver on a GPU node would keep it from idling out (and die with a spot node)."""
    path, cfg = launcher
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, f"{path.name}: the head must offer 0 CPUs to tasks"
    assert head["resources"].get("GPU", 0) == 0, f"{path.name}: the head must have no GPU"
    assert head["resources"].get("trial_driver", 0) >= 1, f"{path.name}: head needs `trial_driver`"
    assert head.get("max_workers", 0) == 0
    for name, node_type in worker_types(cfg).items():
        assert "trial_driver" not in node_type["resources"], f"{path.name}: {name} offers `trial_driver`"


def test_gpu_workers_autoscale_from_zero_on_demand_and_spot(launcher):
    path, cfg = launcher
    workers = worker_types(cfg)
    gpus, spot = set(), set()
    for name, node_type in workers.items():
        assert node_type.get("min_workers", 0) == 0, f"{path.name}: {name} must start at 0 workers"
        assert node_type.get("max_workers", 0) >= 1, f"{path.name}: {name} cannot scale out"
        assert node_type["resources"].get("GPU", 0) >= 1, f"{path.name}: {name} has no GPU"
        assert node_type["resources"].get("CPU", 0) >= 1, f"{path.name}: {name} has no CPUs"
        gpus.add(node_type["resources"]["GPU"])
        spot.add(is_spot(node_type["node_config"]))
    assert {1, 8} <= gpus, f"{path.name}: expected 1-GPU and 8-GPU worker types, got {gpus}"
    assert spot == {True, False}, f"{path.name}: need both spot and on-demand types"
    assert cfg.get("max_workers", 0) >= max(t["max_workers"] for t in workers.values())


def test_idle_timeout_scales_to_zero(launcher):
    path, cfg = launcher
    timeout = cfg.get("idle_timeout_minutes")
    assert isinstance(timeout, (int, float)) and 0 < timeout <= 30, f"{path.name}: idle timeout {timeout}"
    # stopped instances would keep their disks (and cost); the policies grant no stop/start
    assert cfg["provider"].get("cache_stopped_nodes", False) is False


def project_image_name(image: str) -> tuple[str, str]:
    repository, _, tag = image.rpartition(":")
    return repository.rsplit("/", 1)[-1], tag


def test_every_node_runs_the_project_image(launcher):
    """The image of cluster/Dockerfile (its CUDA_VARIANT), tagged with the project's version:
    no per-node pip install that could resolve another torch build."""
    path, cfg = launcher
    image = cfg["docker"]["image"]
    assert project_image_name(image) == ("cmd-harness", PROJECT_VERSION), f"{path.name}: {image}"
    assert not any("pip install" in c for c in cfg.get("setup_commands") or []), path.name
    assert not any(v in (".", "./") for v in (cfg.get("file_mounts") or {}).values()), path.name
    for key in ("head_image", "worker_image"):
        assert key not in cfg["docker"], f"{path.name}: docker.{key} overrides the project image"


def test_token_auth_on_every_node(launcher):
    path, cfg = launcher
    run_options = " ".join((cfg.get("docker") or {}).get("run_options") or [])
    assert "RAY_AUTH_MODE=token" in run_options, f"{path.name}: containers lack RAY_AUTH_MODE=token"
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    for command in ray_starts:
        assert "RAY_AUTH_MODE=token" in command, f"{path.name}: {command}"
    for value in strings(cfg):  # what the config runs or sets, not its comments
        assert "RAY_AUTH_MODE=disabled" not in value and "RAY_AUTH_TOKEN=" not in value, value
    # Every node (head: the global list, workers: their own or the global) fetches the token
    # from the cloud's secret store at boot.
    fetch = {"aws": "ssm get-parameter", "gcp": "gcloud secrets versions access"}[cfg["provider"]["type"]]
    for name in cfg["available_node_types"]:
        commands = " ".join(init_commands(cfg, name))
        assert fetch in commands, f"{path.name}: {name} does not fetch the token ({fetch})"


def test_dashboard_and_gcs_not_published(launcher):
    path, cfg = launcher
    rules = (cfg["provider"].get("security_group") or {}).get("IpPermissions") or []
    for rule in rules:
        low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
        opened = set(range(low, high + 1)) if low >= 0 else PRIVATE_PORTS
        assert not opened & PRIVATE_PORTS, f"{path.name}: security group opens {opened & PRIVATE_PORTS}"
    for command in cfg["head_start_ray_commands"]:
        # a different head port would not match the workers' --address
        if "ray start" in command:
            assert "--port=6379" in command


def test_fake_multinode_config_mirrors_the_cloud_layout():
    """cluster/fake-multinode.yaml: what tests/test_autoscaling.py runs, validated by Ray."""
    from ray.autoscaler._private.util import validate_config

    cfg = load(FAKE_YAML)
    validate_config(copy.deepcopy(cfg))  # prepare_config() needs a file the 2.60 wheel lacks
    provider = cfg["provider"]
    assert provider["type"] == "fake_multinode"
    assert provider["use_node_id_as_ip"] and provider["disable_node_updaters"]
    assert provider["disable_launch_config_check"]
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and head["resources"]["trial_driver"] >= 1
    workers = worker_types(cfg)
    assert all(t["min_workers"] == 0 for t in workers.values())
    assert all("trial_driver" not in t["resources"] for t in workers.values())
    assert sum(t["max_workers"] for t in workers.values()) == cfg["max_workers"] == 2
    assert cfg["idle_timeout_minutes"] < 1


# ---------------------------------------------------------------------------------------
# CUDA: one variant in cluster/Dockerfile, run by the drivers of the node images


def dockerfile_instructions(path: Path = CLUSTER / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) as Docker's parser reads them: comment lines dropped (also inside
    a continued instruction), a trailing backslash joins the next line."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1]
            continue
        word, _, args = (pending + line).strip().partition(" ")
        out.append((word.upper(), args.strip()))
        pending = ""
    assert not pending, f"{path.name} ends inside a continued instruction"
    return out


@dataclass
class BuildStage:
    """The single stage of a Dockerfile as `docker build` without --build-arg resolves it."""
    base: str                               # FROM, global ARGs substituted
    args: dict[str, str]                    # the ARGs the stage's RUNs see
    steps: list[tuple[str, str]]            # the instructions after FROM


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m[1] or m[2], ""), text)


def build_stage(instructions: list[tuple[str, str]]) -> BuildStage:
    n = next(i for i, (instruction, _) in enumerate(instructions) if instruction != "ARG")
    globals_ = {name: default for name, _, default in (args.partition("=") for _, args in instructions[:n])}
    (first, base), steps = instructions[n], instructions[n + 1:]
    assert first == "FROM" and all(i != "FROM" for i, _ in steps), "one build stage expected"
    scope: dict[str, str] = {}
    for instruction, args in steps:
        if instruction == "ARG":  # a global ARG reaches RUN only when the stage declares it again
            name, eq, default = args.partition("=")
            scope[name] = default if eq else globals_.get(name, "")
    return BuildStage(expand(base, globals_), scope, steps)


def shell_commands(stage: BuildStage) -> list[list[str]]:
    """Every RUN as its `&&`-joined commands, split as the shell splits them, with the stage's
    ARGs expanded (command substitutions `$(...)` are kept as written)."""
    commands = []
    for instruction, args in stage.steps:
        if instruction == "RUN":
            words = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: stage.args.get(m[1], m[0]), args))
            command: list[str] = []
            for word in [*words, "&&"]:
                if word == "&&":
                    commands.append(command)
                    command = []
                else:
                    command.append(word)
    return commands


def pip_installs(stage: BuildStage) -> list[list[str]]:
    return [c[2:] for c in shell_commands(stage) if c[:2] == ["pip", "install"]]


def base_image_cuda() -> str:
    """The CUDA variant of the image's base (Ray's tag suffix, e.g. cu128)."""
    tag = re.fullmatch(r"rayproject/ray:[\d.]+-py\d+-(cu\d{3})", build_stage(dockerfile_instructions()).base)
    assert tag, "the base image is not a CUDA build of rayproject/ray"
    return tag[1]


def cuda_version(variant: str) -> str:
    return f"{variant[2:-1]}.{variant[-1]}"  # cu128 -> 12.8


def test_dockerfile_base_image_is_this_ray_and_python_with_the_torch_of_its_cuda():
    stage = build_stage(dockerfile_instructions())
    image = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>\d)(?P<minor>\d+)-(?P<cuda>cu\d{3})",
                         stage.base)
    assert image, stage.base
    assert image["ray"] == ray_version()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains(f"{image['py']}.{image['minor']}"), (stage.base, requires)
    first, *later = pip_installs(stage)
    assert "torch" in first and first[first.index("--index-url") + 1] == \
        f"https://download.pytorch.org/whl/{image['cuda']}", first
    # Later installs keep that build: no dependency resolution at all, or torch pinned to the
    # version just installed (PyPI's default torch is another CUDA's).
    pinned = "torch==$(python -c 'import torch; print(torch.__version__)')"
    for install in later:
        assert "--no-deps" in install or pinned in install, install


def torch_check(stage: BuildStage) -> list[str]:
    """The build's own check of the installed torch: the `python -c` right after its install."""
    commands = shell_commands(stage)
    index = next(i for i, c in enumerate(commands) if c[:2] == ["pip", "install"] and "torch" in c)
    check = commands[index + 1]
    assert check[:2] == ["python", "-c"], check
    return check


@pytest.mark.parametrize("torch_cuda", ["the base image's", "13.0", None])
def test_dockerfile_build_fails_unless_torch_is_built_for_the_base_images_cuda(tmp_path, torch_cuda):
    """Runs the Dockerfile's check against a torch that reports being built for `torch_cuda`
    (PyPI's default 13.0, a CPU build: None); real CUDA builds of torch cannot be installed here."""
    variant = base_image_cuda()
    passes = torch_cuda == "the base image's"
    built_for = cuda_version(variant) if passes else torch_cuda
    assert passes or built_for != cuda_version(variant)
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text(f"__version__ = '2.0'\nclass version:\n    cuda = {built_for!r}\n")
    check = torch_check(build_stage(dockerfile_instructions()))
    proc = subprocess.run([sys.executable, *check[1:]], env={"PYTHONPATH": str(tmp_path)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode == 0) == passes, proc.stderr
    if not passes:
        built = "cu" + (built_for or "none").replace(".", "")
        assert proc.stderr.strip() == f"torch 2.0 is built for {built}, not {variant}"


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves `path` out: a pattern matches it or a folder above it,
    with `*` inside one path element and `**` across any number (Docker's rules, no `!` here)."""
    def match(pattern: list[str], parts: list[str]) -> bool:
        if not pattern:
            return not parts
        if pattern[0] == "**":
            return any(match(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
        return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and match(pattern[1:], parts[1:])

    parts = path.split("/")
    return any(match(p.split("/"), parts[:n]) for p in patterns for n in range(1, len(parts) + 1))


def test_dockerfile_copies_the_project_but_no_local_data_environment_or_credentials():
    patterns = [line.strip() for line in (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert not any(p.startswith("!") for p in patterns)
    for left_out in ("data/demo/shards/train-000000.tar", "runs/demo/results.parquet", ".venv/bin/python",
                     ".git/HEAD", "harness/__pycache__/train.cpython-311.pyc", "cmd_harness.egg-info/PKG-INFO",
                     ".env", "cluster/node.pem", "home/.ray/auth_token", "a/b/c.key"):
        assert dockerignored(left_out, patterns), left_out
    shipped = ["pyproject.toml", *(str(p.relative_to(ROOT)) for package in ("harness", "cmd_model", "shards")
                                   for p in (ROOT / package).glob("*.py"))]
    assert not [p for p in shipped if dockerignored(p, patterns)]
    stage = build_stage(dockerfile_instructions())
    copies = [args.split()[-2:] for instruction, args in stage.steps if instruction == "COPY"]
    assert copies == [["pyproject.toml", "./"], [".", "./"]], copies  # dependencies cached apart from code
    assert pip_installs(stage)[-1] == ["--no-deps", "-e", "."]


def test_dockerfile_bakes_in_no_auth_setting_or_secret():
    """Ray's token comes from a Secret at run time, and RAY_AUTH_MODE from the cluster configs, so
    the image also runs a local token-less `ray start`."""
    for instruction, args in dockerfile_instructions():
        if instruction in ("ENV", "ARG"):
            for name in (w.split("=", 1)[0] for w in shlex.split(args)):
                assert not name.startswith("RAY_AUTH"), f"{instruction} {name}"
                assert not re.search(r"SECRET|PASSWORD|TOKEN|KEY", name), f"{instruction} {name}"


# The NVIDIA driver of each config's GPU node image (vendor release notes; only a real node shows
# the exact version). If a config moves to another image family, this table must be re-checked.
NODE_IMAGE_DRIVERS = {
    "aws-gpu.yaml": ("base-oss-nvidia-driver-gpu-ubuntu-22.04", "535.0"),
    "gcp-gpu.yaml": ("common-cu124-ubuntu-2204", "550.0"),
}


@pytest.mark.parametrize("name", sorted(NODE_IMAGE_DRIVERS))
def test_node_image_driver_runs_the_images_torch(name):
    family, driver = NODE_IMAGE_DRIVERS[name]
    cfg = load(CLUSTER / name)
    for node_type, spec in worker_types(cfg).items():
        assert family in json.dumps(spec["node_config"]), f"{name}: {node_type} left image family {family}"
    variant = base_image_cuda()
    cuda = cuda_version(variant)
    assert int(cuda.split(".")[0]) in MIN_DRIVER_FOR_CUDA_MAJOR
    assert gpu_stack_problem(driver, cuda, "torch", True) is None, \
        f"{name}: driver {driver} cannot run the image's torch ({variant})"


# ---------------------------------------------------------------------------------------
# Permissions: the policies in cluster/iam/ against the calls Ray's node providers make


def statements(policy: dict) -> list[dict]:
    out = []
    for statement in policy["Statement"]:
        listed = {k: ([v] if isinstance(v, str) else v) for k, v in statement.items()
                  if k in ("Action", "Resource")}
        out.append({**statement, **listed})
    return out


def allows(policy: dict, action: str, resource: str, context: dict[str, str] | None = None) -> bool:
    """IAM's Allow evaluation for the subset these policies use (wildcards, StringEquals)."""
    context = context or {}
    for s in statements(policy):
        if s["Effect"] != "Allow" or not any(fnmatch.fnmatchcase(action, a) for a in s["Action"]):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in s["Resource"]):
            continue
        conditions = s.get("Condition", {})
        assert set(conditions) <= {"StringEquals"}, conditions
        if all(context.get(k) == v for k, v in conditions.get("StringEquals", {}).items()):
            return True
    return False


def aws_policy(name: str) -> dict:
    return json.loads((IAM / "aws" / f"{name}.json").read_text())


# boto3 calls in ray/autoscaler/_private/aws/node_provider.py -> the IAM action each needs, and
# whether the head makes it with this config (cache_stopped_nodes false, no CloudWatch agent,
# every node type's resources given so `ray up` never asks EC2 for instance types).
AWS_CALLS = {
    "create_instances": ("ec2:RunInstances", True),
    "create_tags": ("ec2:CreateTags", True),
    "terminate_instances": ("ec2:TerminateInstances", True),
    ".terminate()": ("ec2:TerminateInstances", True),
    "instances.filter": ("ec2:DescribeInstances", True),
    "stop_instances": ("ec2:StopInstances", False),
    "start_instances": ("ec2:StartInstances", False),
    ".stop()": ("ec2:StopInstances", False),
    "describe_images": ("ec2:DescribeImages", False),
    "describe_instance_types": ("ec2:DescribeInstanceTypes", False),
}


def aws_calls_in_ray() -> set[str]:
    source = ray_source("autoscaler/_private/aws/node_provider.py")
    calls = set(re.findall(r"\.meta\.client\.(\w+)", source))
    calls |= set(re.findall(r"\bec2\w*\.(create_instances|describe_\w+)\(", source))
    calls |= {"instances.filter"} if re.search(r"\.instances\.filter\(", source) else set()
    return calls | {m for m in (".terminate()", ".stop()") if m in source}


def test_aws_calls_of_rays_node_provider_are_the_known_ones():
    """If Ray's provider starts calling another EC2 API, the head policy must be re-derived."""
    calls = aws_calls_in_ray()
    assert calls <= set(AWS_CALLS), f"unknown EC2 calls: {calls - set(AWS_CALLS)}"
    assert {"create_instances", "create_tags", "terminate_instances", "instances.filter"} <= calls
    cfg = load(CLUSTER / "aws-gpu.yaml")
    assert "cloudwatch" not in cfg["provider"]
    assert all(t.get("resources") for t in cfg["available_node_types"].values())


def test_aws_head_policy_grants_what_the_autoscaler_calls_for_this_cluster_only():
    from ray.autoscaler.tags import TAG_RAY_CLUSTER_NAME

    cfg = load(CLUSTER / "aws-gpu.yaml")
    head, region = aws_policy("head-policy"), cfg["provider"]["region"]
    instance = f"arn:aws:ec2:{region}:ACCOUNT_ID:instance/i-0123456789abcdef0"
    ours = {f"ec2:ResourceTag/{TAG_RAY_CLUSTER_NAME}": cfg["cluster_name"]}
    theirs = {f"ec2:ResourceTag/{TAG_RAY_CLUSTER_NAME}": "someone-else"}
    launch = {f"aws:RequestTag/{TAG_RAY_CLUSTER_NAME}": cfg["cluster_name"], "ec2:CreateAction": "RunInstances"}
    for action, needed in set(AWS_CALLS.values()):
        if action == "ec2:RunInstances":
            granted = allows(head, action, instance, launch)
        elif action == "ec2:DescribeInstances":
            granted = allows(head, action, "*")
        else:
            granted = allows(head, action, instance, ours)
        assert granted == needed, f"head policy: {action} {'missing' if needed else 'not needed'}"
    assert allows(head, "ec2:CreateTags", instance, launch)  # tags on create
    assert not allows(head, "ec2:TerminateInstances", instance, theirs)
    assert not allows(head, "ec2:CreateTags", instance, theirs)
    assert not allows(head, "ec2:RunInstances", instance,
                      {f"aws:RequestTag/{TAG_RAY_CLUSTER_NAME}": "someone-else"})
    for kind in ("subnet", "network-interface", "security-group", "volume", "key-pair",
                 "spot-instances-request"):
        assert allows(head, "ec2:RunInstances", f"arn:aws:ec2:{region}:ACCOUNT_ID:{kind}/x"), kind
    assert allows(head, "ec2:RunInstances", f"arn:aws:ec2:{region}::image/ami-0123456789abcdef0")


def test_aws_head_can_resolve_every_ssm_image_id_and_pass_only_the_worker_role():
    """EC2 resolves `ImageId: resolve:ssm:...` with the caller's (the head's) ssm:GetParameters."""
    cfg = load(CLUSTER / "aws-gpu.yaml")
    head, region = aws_policy("head-policy"), cfg["provider"]["region"]
    images = {t["node_config"]["ImageId"] for t in worker_types(cfg).values()}
    assert all(i.startswith("resolve:ssm:") for i in images), images
    for image in images:
        arn = f"arn:aws:ssm:{region}::parameter{image.removeprefix('resolve:ssm:')}"
        assert allows(head, "ssm:GetParameters", arn), f"head cannot resolve {image}"
    roles = {t["node_config"]["IamInstanceProfile"]["Name"] for t in worker_types(cfg).values()}
    assert roles == {"cmd-harness-ray-worker"}, roles
    ec2 = {"iam:PassedToService": "ec2.amazonaws.com"}
    assert allows(head, "iam:PassRole", "arn:aws:iam::ACCOUNT_ID:role/cmd-harness-ray-worker", ec2)
    assert not allows(head, "iam:PassRole", "arn:aws:iam::ACCOUNT_ID:role/cmd-harness-ray-head", ec2)
    assert not allows(head, "iam:PassRole", "arn:aws:iam::ACCOUNT_ID:role/cmd-harness-ray-worker",
                      {"iam:PassedToService": "lambda.amazonaws.com"})


def test_aws_worker_policy_is_storage_token_and_image_only():
    cfg = load(CLUSTER / "aws-gpu.yaml")
    worker, region = aws_policy("worker-policy"), cfg["provider"]["region"]
    token = re.search(r"ssm get-parameter .*?--name (\S+)", " ".join(cfg["initialization_commands"])).group(1)
    assert allows(worker, "ssm:GetParameter", f"arn:aws:ssm:{region}:ACCOUNT_ID:parameter{token}")
    assert not allows(worker, "ssm:GetParameter", f"arn:aws:ssm:{region}:ACCOUNT_ID:parameter/other")
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
        assert allows(worker, action, "arn:aws:s3:::BUCKET/studies/cub/results.parquet"), action
        assert not allows(worker, action, "arn:aws:s3:::OTHER/x"), action
    assert allows(worker, "s3:ListBucket", "arn:aws:s3:::BUCKET")
    repository = cfg["docker"]["image"].split("/", 1)[1].rsplit(":", 1)[0]
    for action in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"):
        assert allows(worker, action, f"arn:aws:ecr:{region}:ACCOUNT_ID:repository/{repository}")
    assert allows(worker, "ecr:GetAuthorizationToken", "*")
    granted = {a for s in statements(worker) for a in s["Action"]}
    assert not {a for a in granted if a.split(":")[0] in ("ec2", "iam")}, granted


@pytest.mark.parametrize("name", ["head-policy", "worker-policy", "trust-policy"])
def test_aws_policies_have_no_wide_wildcards(name):
    """`*` as a resource only where the API has no resource-level permission."""
    no_resource_level = {"ec2:DescribeInstances", "ecr:GetAuthorizationToken"}
    for s in statements(aws_policy(name)):
        assert s["Effect"] == "Allow", s
        for action in s.get("Action", []):
            assert "*" not in action, f"{name}: wildcard action {action}"
        if "*" in s.get("Resource", []):
            assert set(s["Action"]) <= no_resource_level, f"{name}: {s['Action']} on *"
        for resource in s.get("Resource", []):  # wildcards only in the resource id, never in
            if resource != "*":                   # the partition, service, region or account
                assert "*" not in ":".join(resource.split(":")[:5]), f"{name}: {resource}"


def gcp_role() -> dict:
    return load(IAM / "gcp" / "head-role.yaml")


def gcp_accounts() -> dict:
    return load(IAM / "gcp" / "service-accounts.yaml")["accounts"]


def test_gcp_head_role_is_exactly_what_the_node_provider_needs():
    source = ray_source("autoscaler/_private/gcp/node.py")
    methods = set(re.findall(r"\.instances\(\)\s*\.(\w+)\(", source))
    assert methods == {"list", "get", "setLabels", "insert", "delete", "stop", "start"}, methods
    assert re.search(r"\.zoneOperations\(\)\s*\.get\(", source)
    cfg = load(CLUSTER / "gcp-gpu.yaml")
    assert cfg["provider"].get("cache_stopped_nodes", False) is False  # stop/start never called
    needed = {"compute.instances.list", "compute.instances.get", "compute.instances.setLabels",
              "compute.instances.create", "compute.instances.delete", "compute.zoneOperations.get"}
    # what an insert with the worker node_configs needs besides instances.create
    configs = [t["node_config"] for t in worker_types(cfg).values()]
    needed |= {"compute.disks.create", "compute.images.useReadOnly",
               "compute.subnetworks.use", "compute.subnetworks.useExternalIp"}
    if any(c.get("metadata") for c in configs):
        needed.add("compute.instances.setMetadata")
    if any(c.get("serviceAccounts") for c in configs):
        needed.add("compute.instances.setServiceAccount")
    granted = set(gcp_role()["includedPermissions"])
    assert granted == needed, f"missing {needed - granted}, not needed {granted - needed}"


def test_gcp_nodes_run_as_the_described_accounts_and_rays_own_account_is_inert():
    """`ray up` (Ray 2.60) always creates ray-autoscaler-sa-v1 with project-wide roles; the
    accounts file must say so, keep it disabled, and no node may run as it."""
    source = ray_source("autoscaler/_private/gcp/config.py")
    constants = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    ray_account = f"{constants['RAY']}-sa-{constants['VERSION']}"
    accounts = gcp_accounts()
    assert ray_account in accounts, f"cluster/iam/gcp/service-accounts.yaml omits {ray_account}"
    assert accounts[ray_account]["disabled"] is True and accounts[ray_account]["runs"] == "nothing"
    assert accounts[ray_account]["project"] == constants["DEFAULT_SERVICE_ACCOUNT_ROLES"]
    cfg = load(CLUSTER / "gcp-gpu.yaml")
    used = {}
    for name, node_type in cfg["available_node_types"].items():
        emails = [a["email"] for a in node_type["node_config"]["serviceAccounts"]]
        assert len(emails) == 1, (name, emails)
        used[name] = emails[0].split("@")[0]
        assert used[name] in accounts and used[name] != ray_account, (name, used[name])
    assert used.pop(cfg["head_node_type"]) == "cmd-harness-ray-head"
    assert set(used.values()) == {"cmd-harness-ray-worker"}
    for name, account in accounts.items():
        if name != ray_account:  # project-wide: only the custom head role
            assert all(r.startswith("projects/PROJECT_ID/roles/") for r in account.get("project", [])), name
    assert accounts["cmd-harness-ray-head"]["worker_account"] == ["roles/iam.serviceAccountUser"]
    assert "project" not in accounts["cmd-harness-ray-worker"]
    role_id = accounts["cmd-harness-ray-head"]["project"][0].rsplit("/", 1)[1]
    assert re.fullmatch(r"[a-zA-Z0-9_.]{3,64}", role_id), role_id
    assert not any("*" in p for p in gcp_role()["includedPermissions"])


# ---------------------------------------------------------------------------------------
# KubeRay manifests: KubeRay's v1 CRD schemas, and token auth wired the way the operator reads it


def strict(schema: dict) -> dict:
    """The CRD's openAPIV3Schema with unknown fields rejected, as the API server does with
    strict field validation: every object that lists `properties` and neither sets
    `additionalProperties` nor `x-kubernetes-preserve-unknown-fields` gets
    additionalProperties: false. Free-form objects (no `properties`, e.g. `metadata`) stay open."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@functools.cache
def crd_v1_schema(kind: str) -> dict:
    """The v1 openAPIV3Schema of KubeRay's CRD for `kind` (17k lines: parsed once, with libyaml)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((KUBERAY_CRDS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=loader)
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def crd_validator(kind: str):
    import jsonschema

    return jsonschema.Draft7Validator(strict(crd_v1_schema(kind)))


def ray_docs() -> list[tuple[str, dict]]:
    return [(f"{p.name}:{d['metadata']['name']}", d) for p in KUBERAY_YAMLS for d in all_docs(p)
            if d.get("kind") in RAY_KINDS]


def ray_cluster_specs() -> list[tuple[str, dict]]:
    """(where, RayCluster spec) for every RayCluster and every RayJob's embedded cluster."""
    out = []
    for where, doc in ray_docs():
        if doc["kind"] == "RayCluster":
            out.append((where, doc["spec"]))
        elif doc["kind"] == "RayJob" and "rayClusterSpec" in doc["spec"]:
            out.append((where, doc["spec"]["rayClusterSpec"]))
    return out


def ray_jobs() -> list[tuple[str, dict]]:
    return [(where, d) for where, d in ray_docs() if d["kind"] == "RayJob"]


def pod_specs(spec: dict) -> list[tuple[str, dict]]:
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    return pods + [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]


def start_param_resources(params: dict) -> dict:
    """KubeRay's `resources` ray start param: a JSON object in an escaped, quoted string."""
    raw = params.get("resources")
    if not raw:
        return {}
    text = raw.strip()
    if text.startswith('"') and text.endswith('"'):
        text = text[1:-1].replace('\\"', '"')
    return json.loads(text)


def is_spot_pod(pod_spec: dict) -> bool:
    selector = pod_spec.get("nodeSelector") or {}
    return str(selector.get("cloud.google.com/gke-spot", "")).lower() == "true" or \
        str(selector.get("eks.amazonaws.com/capacityType", "")).upper() == "SPOT" or \
        str(selector.get("karpenter.sh/capacity-type", "")).lower() == "spot"


def test_kuberay_manifests_parse_with_known_kinds():
    assert KUBERAY_YAMLS, "no KubeRay manifests"
    kinds = {d["kind"] for p in KUBERAY_YAMLS for d in all_docs(p)}
    for where, doc in ray_docs():
        assert doc["apiVersion"] == "ray.io/v1", f"{where}: {doc['apiVersion']}"
    assert {"RayCluster", "RayJob"} <= kinds, kinds


def test_every_ray_manifest_passes_the_kuberay_crd_schema_with_unknown_fields_rejected():
    docs = ray_docs()
    assert {d["kind"] for _, d in docs} >= {"RayCluster", "RayJob"}
    for where, doc in docs:
        errors = sorted(crd_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, f"{where}: " + "; ".join(
            f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5])
        # metadata is a free-form object in the CRD (the API server checks ObjectMeta itself)
        assert set(doc["metadata"]) <= {"name", "namespace", "labels", "annotations"}, where


def test_the_strict_schema_rejects_a_misspelled_field_at_any_depth():
    """What the check above can catch: a typo in spec, in authOptions, deep in a container."""
    validator = crd_validator("RayJob")
    where, job = ray_jobs()[0]
    assert validator.is_valid(job)
    for path, typo in ((["spec"], "shutdownAfterJobFinish"),
                       (["spec", "rayClusterSpec", "authOptions"], "secretname"),
                       (["spec", "rayClusterSpec", "headGroupSpec", "template", "spec", "containers", 0],
                        "imagePullPolicyy")):
        bad = copy.deepcopy(job)
        node = bad
        for key in path:
            node = node[key]
        node[typo] = "x"
        assert not validator.is_valid(bad), f"{where}: {'.'.join(map(str, path))}.{typo} passed"
    bad = copy.deepcopy(job)
    bad["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "tokens"
    assert not validator.is_valid(bad), "an authOptions.mode outside the CRD's enum passed"


def test_token_auth_is_wired_the_way_the_operator_reads_it():
    """KubeRay (>= 1.6) adds the token to its own dashboard calls only when
    authOptions.mode == token, and then sets RAY_AUTH_MODE / RAY_AUTH_TOKEN (from the Secret named
    by secretName, key `auth_token`) in every Ray container, the autoscaler and a RayJob's
    submitter, unless a container already sets them: so none may."""
    specs = ray_cluster_specs()
    kinds = {where.split(":")[0] for where, _ in specs}
    assert {"raycluster.yaml", "rayjob-cub.yaml"} <= kinds, kinds
    for where, spec in specs:
        auth = spec.get("authOptions") or {}
        assert auth.get("mode") == "token", f"{where}: authOptions.mode = {auth.get('mode')!r}"
        assert auth.get("secretName") == "cmd-harness-ray-token", f"{where}: authOptions.secretName"
        # the operator refuses K8s token auth together with a secretName, and token auth below Ray 2.52
        assert not auth.get("enableK8sTokenAuth"), where
        assert tuple(map(int, spec["rayVersion"].split("."))) >= (2, 52), where
        containers = [(f"{where}/{n}", c) for n, pod in pod_specs(spec)
                      for c in pod.get("containers", []) + pod.get("initContainers", [])]
        containers.append((f"{where}/autoscaler", spec.get("autoscalerOptions") or {}))
        for cwhere, container in containers:
            names = {e["name"] for e in container.get("env") or []}
            assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}, \
                f"{cwhere}: sets Ray's auth variables itself; the operator's would be skipped"
    for where, job in ray_jobs():
        assert job["spec"]["rayClusterSpec"].get("authOptions"), f"{where}: no rayClusterSpec.authOptions"
        for container in job["spec"]["submitterPodTemplate"]["spec"]["containers"]:
            names = {e["name"] for e in container.get("env") or []}
            assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, f"{where}: submitter env"


def test_ray_clusters_autoscale_gpu_groups_from_zero_and_only_the_head_holds_drivers():
    specs = ray_cluster_specs()
    for where, spec in specs:
        assert spec.get("enableInTreeAutoscaling") is True, where
        options = spec.get("autoscalerOptions") or {}
        assert 0 < int(options.get("idleTimeoutSeconds", 0)) <= 1800, f"{where}: idle timeout"
        assert spec.get("rayVersion") == ray_version(), f"{where}: rayVersion {spec.get('rayVersion')}"
        head = spec["headGroupSpec"]
        params = head.get("rayStartParams") or {}
        assert str(params.get("num-cpus")) == "0", f"{where}: head num-cpus must be 0"
        assert start_param_resources(params).get("trial_driver", 0) >= 1, f"{where}: head trial_driver"
        assert "nvidia.com/gpu" not in (head["template"]["spec"]["containers"][0]
                                        .get("resources", {}).get("limits") or {}), where
        spot = set()
        for group in spec["workerGroupSpecs"]:
            name = f"{where}/{group['groupName']}"
            assert group.get("minReplicas") == 0, f"{name}: minReplicas must be 0"
            assert int(group.get("maxReplicas", 0)) >= 1, f"{name}: maxReplicas"
            assert 0 <= int(group.get("replicas", 0)) <= int(group["maxReplicas"]), name
            pod = group["template"]["spec"]
            gpus = (pod["containers"][0].get("resources", {}).get("limits") or {}).get("nvidia.com/gpu")
            assert isinstance(gpus, int) and gpus >= 1, f"{name}: nvidia.com/gpu limit {gpus!r}"
            assert "trial_driver" not in start_param_resources(group.get("rayStartParams") or {}), \
                f"{name}: a GPU group offers `trial_driver`"
            spot.add(is_spot_pod(pod))
        assert spot == {True, False}, f"{where}: need spot and on-demand GPU groups"


def test_every_ray_container_runs_the_one_project_image():
    images = set()
    for _where, spec in ray_cluster_specs():
        for _name, pod in pod_specs(spec):
            images |= {c["image"] for c in pod["containers"]}
    for _where, job in ray_jobs():
        images |= {c["image"] for c in job["spec"]["submitterPodTemplate"]["spec"]["containers"]}
    assert len(images) == 1, f"one project image everywhere, got {images}"
    image = images.pop()
    assert project_image_name(image) == ("cmd-harness", PROJECT_VERSION), image
    assert image == load(CLUSTER / "gcp-gpu.yaml")["docker"]["image"], "GKE and gcp-gpu.yaml differ"


def test_rayjob_runs_a_study_and_shuts_down():
    jobs = ray_jobs()
    assert jobs
    for where, job in jobs:
        spec = job["spec"]
        entrypoint = spec["entrypoint"]
        assert entrypoint.startswith("python harness/tune.py"), f"{where}: {entrypoint}"
        assert "--space tune_spaces/cub.yaml" in entrypoint, f"{where}: {entrypoint}"
        assert re.search(r"--storage (gs|s3)://\S+", entrypoint), f"{where}: no bucket storage"
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        assert isinstance(runtime_env, dict) and runtime_env.get("working_dir"), where
        assert spec.get("shutdownAfterJobFinishes") is True, where


def test_no_published_dashboard_or_gcs():
    for where, spec in ray_cluster_specs():
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: head Service exposed"
        assert not head.get("enableIngress"), f"{where}: ingress on the dashboard"
        for container in head["template"]["spec"]["containers"]:
            for port in container.get("ports") or []:
                assert "hostPort" not in port, f"{where}: hostPort {port}"
    for path in KUBERAY_YAMLS:
        for doc in all_docs(path):
            if doc["kind"] == "Service":
                assert doc["spec"].get("type", "ClusterIP") not in ("LoadBalancer", "NodePort"), path.name
            assert doc["kind"] != "Ingress", f"{path.name}: an Ingress publishes the cluster"


def test_workload_identity_service_account():
    accounts = [d for p in KUBERAY_YAMLS for d in all_docs(p) if d["kind"] == "ServiceAccount"]
    names = {a["metadata"]["name"] for a in accounts}
    for a in accounts:
        annotations = a["metadata"].get("annotations") or {}
        google = annotations.get("iam.gke.io/gcp-service-account", "")
        assert google.split("@")[0] in gcp_accounts(), f"{a['metadata']['name']}: {google}"
    assert names
    for where, spec in ray_cluster_specs():
        for name, pod in pod_specs(spec):
            assert pod.get("serviceAccountName") in names, f"{where}/{name}: no storage identity"




# ---------------------------------------------------------------------------------------
# The studies the clusters run: drivers on the head with a measured memory reservation


def study_scaling(path: Path) -> dict:
    """The study's scaling section as the harness resolves it (its `extends` and its base's)."""
    from harness.config import to_dict
    from harness.study_file import load_study

    return to_dict(load_study(path).base)["scaling"]


def worker_bundle(scaling: dict) -> dict[str, float]:
    """What one Ray Train worker of the study asks for (as harness/trainer.py builds it)."""
    gpus = (float(scaling.get("gpus_per_worker") or 0) or 1.0) if scaling.get("use_gpu") else 0.0
    bundle = {"CPU": float(scaling.get("cpus_per_worker", 1)), "GPU": gpus}
    bundle.update(scaling.get("resources_per_worker") or {})
    return {k: v for k, v in bundle.items() if v}


def fits(need: dict[str, float], have: dict[str, float]) -> bool:
    return all(have.get(k, 0) >= v for k, v in need.items() if k != "memory")


# Peak RSS measured on this machine (cluster/README.md, "Trial driver memory"): a trial driver
# process plus the Train controller that Ray 2.60 starts on the driver's node without reserving
# memory for it. The reservation must cover both; tests/test_autoscaling.py re-measures them.
MEASURED_DRIVER_PEAK_BYTES = (1137 + 918) * 2**20


@pytest.mark.parametrize("space", STUDY_SPACES, ids=lambda p: p.name)
def test_study_drivers_go_to_the_head_with_their_measured_memory(space):
    driver = {k: float(v) for k, v in (study_scaling(space).get("trial_driver_resources") or {}).items()}
    assert 0 < driver.get("trial_driver", 0) <= 1, f"{space.name}: drivers not pinned to the head"
    assert driver.get("CPU", 1) == 0, f"{space.name}: drivers must not take the CPUs workers need"
    assert driver.get("memory", 0) >= MEASURED_DRIVER_PEAK_BYTES, \
        f"{space.name}: reserves {driver.get('memory', 0) / 2**20:.0f} MiB per driver, measured " \
        f"{MEASURED_DRIVER_PEAK_BYTES / 2**20:.0f} MiB"


@pytest.mark.parametrize("space", STUDY_SPACES, ids=lambda p: p.name)
def test_study_fits_every_cluster(space):
    """A Train worker fits a spot and an on-demand worker type of every cluster, and its trial
    driver fits on the head (and only there): otherwise a trial waits forever."""
    scaling = study_scaling(space)
    bundle = worker_bundle(scaling)
    driver = {k: float(v) for k, v in (scaling.get("trial_driver_resources") or {}).items() if v}
    for path in LAUNCHER_YAMLS:
        cfg = load(path)
        head = cfg["available_node_types"][cfg["head_node_type"]]["resources"]
        assert fits(driver, head), f"{path.name}: trial driver {driver} does not fit the head {head}"
        for name, node_type in worker_types(cfg).items():
            assert not fits(driver, node_type["resources"]), f"{path.name}: a driver fits {name}"
        for want_spot in (True, False):
            assert any(fits(bundle, t["resources"]) for t in worker_types(cfg).values()
                       if is_spot(t["node_config"]) == want_spot), \
                f"{path.name}: no {'spot' if want_spot else 'on-demand'} type fits a worker {bundle}"
    for where, spec in ray_cluster_specs():
        head_params = spec["headGroupSpec"].get("rayStartParams") or {}
        head = {"CPU": float(head_params.get("num-cpus", 0)), **start_param_resources(head_params)}
        assert fits(driver, head), f"{where}: trial driver {driver} does not fit the head {head}"
        for want_spot in (True, False):
            offers = []
            for g in spec["workerGroupSpecs"]:
                if is_spot_pod(g["template"]["spec"]) != want_spot:
                    continue
                limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
                params = g.get("rayStartParams") or {}
                offers.append({"CPU": float(params.get("num-cpus", limits["cpu"])),
                               "GPU": float(limits.get("nvidia.com/gpu", 0)),
                               **start_param_resources(params)})
            assert any(fits(bundle, o) for o in offers), \
                f"{where}: no {'spot' if want_spot else 'on-demand'} group fits a worker {bundle}: {offers}"
            assert not any(fits(driver, o) for o in offers), f"{where}: a driver fits a GPU group"


def test_readme_names_only_files_that_exist():
    """cluster/README.md points users at files; each one it names must be there."""
    text = (CLUSTER / "README.md").read_text()
    named = set(re.findall(r"\b((?:cluster|tune_spaces|tests|harness)/[\w./-]+\.(?:yaml|json|py|md))", text))
    named |= {f"cluster/{n}" for n in re.findall(r"`((?:kuberay|iam)/[\w./-]+\.(?:yaml|json))`", text)}
    assert len(named) >= 8, named
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, f"cluster/README.md names missing files: {missing}"


# ---------------------------------------------------------------------------------------
# No credentials anywhere in cluster/

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"(?i)(aws_secret_access_key|secretaccesskey)\s*[:=]"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GCP key file": re.compile(r'"private_key(_id)?"\s*:|"type"\s*:\s*"service_account"'),
    "Ray token (hex 256 bit)": re.compile(r"\b[0-9a-fA-F]{64}\b"),
    "GitHub / Slack token": re.compile(r"\b(ghp_[A-Za-z0-9]{36}|xox[abprs]-[A-Za-z0-9-]{10,})"),
    "inline credential": re.compile(
        r"(?i)\b(password|passwd|secret_key|api_key|access_key|auth_token|token)\s*[:=]\s*"
        r"['\"]?(?!\$|\{|<|\"|'|secretKeyRef|valueFrom)[A-Za-z0-9/+_\-]{16,}"),
    "token in env value": re.compile(r"RAY_AUTH_TOKEN\s*=\s*['\"]?[A-Za-z0-9]{8,}"),
}


def cluster_text_files() -> list[Path]:
    return [p for p in sorted(CLUSTER.rglob("*")) if p.is_file() and p.suffix not in (".png", ".pdf")]


def test_no_credentials_in_cluster_folder():
    files = cluster_text_files()
    assert files
    for path in files:
        text = path.read_text(errors="replace")
        for what, pattern in SECRET_PATTERNS.items():
            match = pattern.search(text)
            assert not match, f"{path.relative_to(ROOT)}: looks like a {what}: {match.group(0)!r}"


def test_secret_scanner_catches_the_obvious():
    """The patterns above do fire (so a clean pass above means something)."""
    samples = {
        "AWS access key id": "aws_access_key_id: AKIAABCDEFGHIJKLMNOP",
        "private key": "-----BEGIN RSA PRIVATE KEY-----",
        "Ray token (hex 256 bit)": "token " + "ab" * 32,
        "inline credential": "password: hunter2hunter2hunter2",
        "token in env value": "RAY_AUTH_TOKEN=abcdef0123456789",
    }
    for what, text in samples.items():
        assert SECRET_PATTERNS[what].search(text), what
    assert not SECRET_PATTERNS["inline credential"].search(
        "secretKeyRef: {name: cmd-harness-ray-token, key: auth_token}")
