"""The cluster configs in cluster/: checked with Ray's own launcher schema and validator, and the
KubeRay manifests field by field (no schema ships with Ray). Fast: no Ray cluster is started.

What is enforced, for every launcher YAML and every Ray cluster in the KubeRay manifests:
  - the head runs no training (0 CPUs for tasks, no GPU) and holds `trial_driver`;
  - GPU worker types/groups start at 0 and scale out; both on-demand and spot exist, and only
    the on-demand ones (and the head) offer `trial_driver`;
  - an idle timeout brings the cluster back to zero workers;
  - RAY_AUTH_MODE=token on every node, the token read from a secret store, never written here;
  - nothing in cluster/ looks like a credential; dashboard/GCS are never published.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER_YAMLS = [CLUSTER / "aws-gpu.yaml", CLUSTER / "gcp-gpu.yaml"]
FAKE_YAML = CLUSTER / "fake-multinode.yaml"
KUBERAY = CLUSTER / "kuberay"
KUBERAY_YAMLS = sorted(KUBERAY.glob("*.yaml"))
RAY_KINDS = {"RayCluster", "RayJob", "RayService"}
PRIVATE_PORTS = {6379, 8265, 10001}  # GCS, dashboard + job API, Ray Client


def ray_version() -> str:
    import ray

    return ray.__version__


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def all_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


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


def test_launcher_yamls_exist():
    for path in LAUNCHER_YAMLS:
        assert path.is_file(), path


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


def test_head_runs_no_training_and_holds_trial_drivers(launcher):
    path, cfg = launcher
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, f"{path.name}: the head must offer 0 CPUs to tasks"
    assert head["resources"].get("GPU", 0) == 0, f"{path.name}: the head must have no GPU"
    assert head["resources"].get("trial_driver", 0) >= 1, f"{path.name}: head needs `trial_driver`"
    assert head.get("max_workers", 0) == 0


def test_gpu_workers_autoscale_from_zero(launcher):
    path, cfg = launcher
    workers = worker_types(cfg)
    assert workers, path.name
    gpus = set()
    for name, node_type in workers.items():
        assert node_type.get("min_workers", 0) == 0, f"{path.name}: {name} must start at 0 workers"
        assert node_type.get("max_workers", 0) >= 1, f"{path.name}: {name} cannot scale out"
        assert node_type["resources"].get("GPU", 0) >= 1, f"{path.name}: {name} has no GPU"
        assert node_type["resources"].get("CPU", 0) >= 1, f"{path.name}: {name} has no CPUs"
        gpus.add(node_type["resources"]["GPU"])
    assert {1, 8} <= gpus, f"{path.name}: expected 1-GPU and 8-GPU worker types, got {gpus}"
    assert cfg.get("max_workers", 0) >= max(t["max_workers"] for t in workers.values())


def test_spot_and_on_demand_types_and_trial_driver_placement(launcher):
    path, cfg = launcher
    spot, on_demand = [], []
    for name, node_type in worker_types(cfg).items():
        has_driver = node_type["resources"].get("trial_driver", 0) > 0
        if is_spot(node_type["node_config"]):
            spot.append(name)
            assert not has_driver, f"{path.name}: spot type {name} must not offer `trial_driver`"
        else:
            on_demand.append(name)
            assert has_driver, f"{path.name}: on-demand type {name} must offer `trial_driver`"
    assert spot and on_demand, f"{path.name}: need both spot {spot} and on-demand {on_demand} types"


def test_idle_timeout_scales_to_zero(launcher):
    path, cfg = launcher
    timeout = cfg.get("idle_timeout_minutes")
    assert isinstance(timeout, (int, float)) and 0 < timeout <= 30, f"{path.name}: idle timeout {timeout}"
    if cfg["provider"]["type"] == "aws":  # stopped instances would keep disks (and cost)
        assert cfg["provider"].get("cache_stopped_nodes") is False


def test_project_is_installed_on_every_node(launcher):
    path, cfg = launcher
    mounts = cfg.get("file_mounts") or {}
    repo_targets = [remote for remote, local in mounts.items() if local in (".", "./")]
    assert repo_targets, f"{path.name}: the repository is not copied to the nodes"
    setup = " ".join(cfg.get("setup_commands") or [])
    assert "pip install" in setup and repo_targets[0] in setup, f"{path.name}: not installed: {setup}"
    image = (cfg.get("docker") or {}).get("image", "")
    assert ray_version() in image, f"{path.name}: image {image!r} is not Ray {ray_version()}"


def test_token_auth_on_every_node(launcher):
    path, cfg = launcher
    run_options = " ".join((cfg.get("docker") or {}).get("run_options") or [])
    assert "RAY_AUTH_MODE=token" in run_options, f"{path.name}: containers lack RAY_AUTH_MODE=token"
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    for command in ray_starts:
        assert "RAY_AUTH_MODE=token" in command, f"{path.name}: {command}"
    text = path.read_text()
    assert "RAY_AUTH_MODE=disabled" not in text and "RAY_AUTH_TOKEN=" not in text
    # Every node (head: the global list, workers: their own or the global) fetches the token
    # from the cloud's secret store at boot.
    fetch = {"aws": "ssm get-parameter", "gcp": "gcloud secrets versions access"}[cfg["provider"]["type"]]
    for name in cfg["available_node_types"]:
        commands = " ".join(init_commands(cfg, name))
        assert fetch in commands, f"{path.name}: {name} does not fetch the token ({fetch})"


def test_storage_identity_is_named(launcher):
    """Each node type runs as a named IAM instance profile / service account (bucket access)."""
    path, cfg = launcher
    identities = {}
    for name, node_type in cfg["available_node_types"].items():
        node_config = node_type["node_config"]
        if cfg["provider"]["type"] == "aws":
            profile = node_config.get("IamInstanceProfile") or {}
            identities[name] = profile.get("Name") or profile.get("Arn")
        else:
            accounts = node_config.get("serviceAccounts") or [{}]
            identities[name] = accounts[0].get("email")
            assert "https://www.googleapis.com/auth/cloud-platform" in accounts[0].get("scopes", [])
        assert identities[name], f"{path.name}: {name} has no IAM profile / service account"
    head = identities[cfg["head_node_type"]]
    assert all(v != head for k, v in identities.items() if k != cfg["head_node_type"]), \
        f"{path.name}: workers should not run with the head's (EC2/Compute-admin) identity"


def test_dashboard_and_gcs_not_published(launcher):
    path, cfg = launcher
    rules = (cfg["provider"].get("security_group") or {}).get("IpPermissions") or []
    for rule in rules:
        low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
        opened = set(range(low, high + 1)) if low >= 0 else PRIVATE_PORTS
        assert not opened & PRIVATE_PORTS, f"{path.name}: security group opens {opened & PRIVATE_PORTS}"
    for command in cfg["head_start_ray_commands"]:
        # Ray Client / GCS on a public address would be reachable only through a rule above;
        # a different head port would not match the workers' --address.
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
    assert sum(t["max_workers"] for t in workers.values()) == cfg["max_workers"] == 2
    assert sorted(bool(t["resources"].get("trial_driver")) for t in workers.values()) == [False, True]
    assert cfg["idle_timeout_minutes"] < 1


# ---------------------------------------------------------------------------------------
# KubeRay manifests


def ray_cluster_specs() -> list[tuple[str, dict]]:
    """(where, RayCluster spec) for every RayCluster and every RayJob's embedded cluster."""
    out = []
    for path in KUBERAY_YAMLS:
        for doc in all_docs(path):
            if doc.get("kind") == "RayCluster":
                out.append((f"{path.name}:{doc['metadata']['name']}", doc["spec"]))
            elif doc.get("kind") == "RayJob" and "rayClusterSpec" in doc["spec"]:
                out.append((f"{path.name}:{doc['metadata']['name']}", doc["spec"]["rayClusterSpec"]))
    return out


def ray_jobs() -> list[tuple[str, dict]]:
    return [(f"{p.name}:{d['metadata']['name']}", d) for p in KUBERAY_YAMLS for d in all_docs(p)
            if d.get("kind") == "RayJob"]


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


def assert_token_env(where: str, env: list[dict]) -> None:
    by_name = {e["name"]: e for e in env or []}
    assert by_name.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE!=token"
    token = by_name.get("RAY_AUTH_TOKEN")
    assert token, f"{where}: no RAY_AUTH_TOKEN"
    assert "value" not in token, f"{where}: RAY_AUTH_TOKEN written in the manifest"
    assert token["valueFrom"]["secretKeyRef"]["name"], f"{where}: RAY_AUTH_TOKEN not from a Secret"


def test_kuberay_manifests_parse_with_known_kinds():
    assert KUBERAY_YAMLS, "no KubeRay manifests"
    kinds = set()
    for path in KUBERAY_YAMLS:
        for doc in all_docs(path):
            kinds.add(doc["kind"])
            assert doc.get("metadata", {}).get("name"), f"{path.name}: unnamed {doc['kind']}"
            if doc["kind"] in RAY_KINDS:
                assert doc["apiVersion"] == "ray.io/v1", f"{path.name}: {doc['apiVersion']}"
    assert {"RayCluster", "RayJob"} <= kinds, kinds


def test_ray_clusters_autoscale_with_gpu_groups_from_zero():
    specs = ray_cluster_specs()
    assert len(specs) >= 2  # the RayCluster and the RayJob's cluster
    for where, spec in specs:
        assert spec.get("enableInTreeAutoscaling") is True, where
        options = spec.get("autoscalerOptions") or {}
        assert 0 < int(options.get("idleTimeoutSeconds", 0)) <= 1800, f"{where}: idle timeout"
        assert spec.get("rayVersion") == ray_version(), f"{where}: rayVersion {spec.get('rayVersion')}"
        groups = spec.get("workerGroupSpecs") or []
        assert groups, where
        spot = on_demand = 0
        for group in groups:
            name = f"{where}/{group.get('groupName')}"
            assert group.get("groupName"), name
            assert group.get("minReplicas") == 0, f"{name}: minReplicas must be 0"
            assert int(group.get("maxReplicas", 0)) >= 1, f"{name}: maxReplicas"
            assert 0 <= int(group.get("replicas", 0)) <= int(group["maxReplicas"]), name
            pod = group["template"]["spec"]
            container = pod["containers"][0]
            gpus = (container.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu")
            assert isinstance(gpus, int) and gpus >= 1, f"{name}: nvidia.com/gpu limit {gpus!r}"
            has_driver = start_param_resources(group.get("rayStartParams") or {}).get("trial_driver", 0) > 0
            if is_spot_pod(pod):
                spot += 1
                assert not has_driver, f"{name}: spot group must not offer `trial_driver`"
            else:
                on_demand += 1
                assert has_driver, f"{name}: on-demand group must offer `trial_driver`"
        assert spot and on_demand, f"{where}: need spot and on-demand GPU groups"


def test_ray_cluster_heads_run_no_training():
    for where, spec in ray_cluster_specs():
        head = spec["headGroupSpec"]
        params = head.get("rayStartParams") or {}
        assert str(params.get("num-cpus")) == "0", f"{where}: head num-cpus must be 0"
        assert start_param_resources(params).get("trial_driver", 0) >= 1, f"{where}: head trial_driver"
        container = head["template"]["spec"]["containers"][0]
        limits = container.get("resources", {}).get("limits") or {}
        assert "nvidia.com/gpu" not in limits, f"{where}: GPU on the head"


def test_every_ray_container_has_an_image_and_token_auth():
    images = set()
    for where, spec in ray_cluster_specs():
        pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
        pods += [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
        for name, pod in pods:
            for container in pod["containers"]:
                assert container.get("image"), f"{where}/{name}: no image"
                assert not container["image"].endswith(":latest"), f"{where}/{name}: unpinned image"
                images.add(container["image"])
                assert_token_env(f"{where}/{name}/{container['name']}", container.get("env"))
        # the autoscaler sidecar talks to the GCS too
        assert_token_env(f"{where}/autoscaler", (spec.get("autoscalerOptions") or {}).get("env"))
    for where, job in ray_jobs():
        submitter = (job["spec"].get("submitterPodTemplate") or {}).get("spec")
        assert submitter, f"{where}: the submitter pod needs the token (submitterPodTemplate)"
        for container in submitter["containers"]:
            assert container.get("image"), where
            images.add(container["image"])
            assert_token_env(f"{where}/submitter", container.get("env"))
    assert len(images) == 1, f"one project image everywhere, got {images}"


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
        assert "rayClusterSpec" in spec, f"{where}: shutdownAfterJobFinishes needs its own cluster"


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
    assert accounts, "no ServiceAccount for bucket access"
    names = {a["metadata"]["name"] for a in accounts}
    for a in accounts:
        annotations = a["metadata"].get("annotations") or {}
        assert any(k in annotations for k in ("iam.gke.io/gcp-service-account",
                                              "eks.amazonaws.com/role-arn")), a["metadata"]["name"]
    for where, spec in ray_cluster_specs():
        pods = [spec["headGroupSpec"]["template"]["spec"]]
        pods += [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
        for pod in pods:
            assert pod.get("serviceAccountName") in names, f"{where}: pod without the storage identity"


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


def test_dockerfile_builds_the_project_on_the_pinned_ray():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"rayproject/ray:{re.escape(ray_version())}\b", text)
    assert "pip install" in text and "COPY" in text
    assert "RAY_AUTH_TOKEN" not in text and not re.search(r"(?m)^\s*ENV\s+.*(SECRET|PASSWORD|KEY)=", text)
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "data", "runs"} <= set(ignore)


def test_readme_covers_the_workflow():
    text = (CLUSTER / "README.md").read_text()
    for needle in ("ray up", "ray down", "ray job submit --address http://127.0.0.1:8265 --working-dir .",
                   "ray job logs", "-f", "results.parquet", "kubectl port-forward", "ray dashboard",
                   "RAY_AUTH_MODE=token", "trial_driver", "assumption"):
        assert needle in text, f"cluster/README.md does not mention {needle!r}"


def test_cub_study_pins_trial_drivers():
    """The study the cluster runs asks for `trial_driver` (the harness reads it)."""
    resources = cub_scaling().get("trial_driver_resources") or {}
    assert 0 < resources.get("trial_driver", 0) <= 1, f"tune_spaces/cub.yaml: trial_driver_resources = {resources}"

def cub_scaling() -> dict:
    space = ROOT / "tune_spaces" / "cub.yaml"
    if not space.is_file():
        pytest.skip("tune_spaces/cub.yaml not written yet")
    data = load(space)
    scaling = dict((data.get("base") or {}).get("scaling") or {}) if isinstance(data.get("base"), dict) else {}
    scaling.update(data.get("scaling") or {})
    return scaling


def worker_bundle(scaling: dict) -> dict[str, float]:
    """What one Ray Train worker of the study asks for (as harness/trainer.py builds it)."""
    gpus = (float(scaling.get("gpus_per_worker") or 0) or 1.0) if scaling.get("use_gpu") else 0.0
    bundle = {"CPU": float(scaling.get("cpus_per_worker", 1)), "GPU": gpus}
    bundle.update(scaling.get("resources_per_worker") or {})
    return {k: v for k, v in bundle.items() if v}


def fits(need: dict[str, float], have: dict[str, float]) -> bool:
    return all(have.get(k, 0) >= v for k, v in need.items() if k != "memory")


def test_cub_study_fits_every_cluster():
    """A Train worker of tune_spaces/cub.yaml fits on a spot and on an on-demand worker type of
    every cluster, and its trial driver fits on the head: otherwise a trial waits forever."""
    scaling = cub_scaling()
    bundle = worker_bundle(scaling)
    driver = {k: float(v) for k, v in (scaling.get("trial_driver_resources") or {}).items() if v}
    for path in LAUNCHER_YAMLS:
        cfg = load(path)
        head = cfg["available_node_types"][cfg["head_node_type"]]["resources"]
        assert fits(driver, head), f"{path.name}: trial driver {driver} does not fit the head {head}"
        for want_spot in (True, False):
            assert any(fits(bundle, t["resources"]) for t in worker_types(cfg).values()
                       if is_spot(t["node_config"]) == want_spot), \
                f"{path.name}: no {'spot' if want_spot else 'on-demand'} type fits a worker {bundle}"
    for where, spec in ray_cluster_specs():
        head_params = spec["headGroupSpec"].get("rayStartParams") or {}
        head = {"CPU": float(head_params.get("num-cpus", 0)), **start_param_resources(head_params)}
        assert fits(driver, head), f"{where}: trial driver {driver} does not fit the head {head}"
        for want_spot in (True, False):
            groups = [g for g in spec["workerGroupSpecs"] if is_spot_pod(g["template"]["spec"]) == want_spot]
            offers = []
            for g in groups:
                limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
                params = g.get("rayStartParams") or {}
                offers.append({"CPU": float(params.get("num-cpus", limits["cpu"])),
                               "GPU": float(limits.get("nvidia.com/gpu", 0)),
                               **start_param_resources(params)})
            assert any(fits(bundle, o) for o in offers), \
                f"{where}: no {'spot' if want_spot else 'on-demand'} group fits a worker {bundle}: {offers}"
