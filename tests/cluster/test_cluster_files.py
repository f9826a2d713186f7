"""Offline checks of cluster/: Docker image, KubeRay manifests, nightly CronJob, launcher YAML.

Nothing here talks to a cloud, a registry or a Kubernetes API; everything runs in about a
second. KubeRay manifests are checked against the documented subset schema in
kuberay_schema.py and through Ray's own KubeRay -> autoscaler translation; the launcher
YAML goes through Ray's prepare_config + validate_config (ray/autoscaler/ray-schema.json).
"""
from __future__ import annotations

import copy
import fnmatch
import importlib.util
import os
import pathlib
import re
import shlex
import stat
import subprocess
import sys
import tomllib

import jsonschema
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHER = CLUSTER / "launcher" / "aws-gpu.yaml"
DOCKERFILE = CLUSTER / "docker" / "Dockerfile"
README = CLUSTER / "README.md"


def _load_schema_module():
    # Loaded by path so the helper works under any pytest import mode / package layout.
    spec = importlib.util.spec_from_file_location(
        "dcnn_flame_tests_kuberay_schema", pathlib.Path(__file__).with_name("kuberay_schema.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ks = _load_schema_module()


# ----------------------------------------------------------------------------- helpers

def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pinned_ray() -> str:
    for dep in _pyproject()["project"]["dependencies"]:
        if re.match(r"^ray(\[|=)", dep.replace(" ", "")):
            return dep.split("==", 1)[1].strip()
    raise AssertionError("pyproject.toml has no pinned ray dependency")


def _pinned_torch() -> str:
    match = re.search(r"^TORCH_SPEC\s*\?=\s*torch==(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert match, "Makefile must pin TORCH_SPEC ?= torch==<version>"
    return match.group(1)


def _yaml_files() -> list[pathlib.Path]:
    files = sorted(p for p in CLUSTER.rglob("*") if p.suffix in {".yaml", ".yml"})
    assert files, "no YAML under cluster/"
    return files


def _docs(path: pathlib.Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kube_docs() -> list[tuple[str, dict]]:
    """Every Kubernetes object under cluster/kuberay, plus YAML manifests embedded in ConfigMaps."""
    out = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in _docs(path):
            out.append((path.name, doc))
            if doc.get("kind") == "ConfigMap":
                for key, text in doc.get("data", {}).items():
                    if key.endswith((".yaml", ".yml")):
                        out.append((f"{path.name}:{key}", yaml.safe_load(text)))
    return out


def _ray_manifests() -> list[tuple[str, dict]]:
    docs = [(w, d) for w, d in _kube_docs() if d.get("kind") in ("RayCluster", "RayJob")]
    assert {d["kind"] for _, d in docs} == {"RayCluster", "RayJob"}
    return docs


def _cluster_specs() -> list[tuple[str, dict]]:
    """(where, RayCluster spec) of the RayCluster and of every RayJob's own cluster."""
    out = []
    for where, doc in _ray_manifests():
        if doc["kind"] == "RayCluster":
            out.append((where, doc["spec"]))
        elif "rayClusterSpec" in doc["spec"]:
            out.append((where, doc["spec"]["rayClusterSpec"]))
    return out


def _nightly() -> dict[str, dict]:
    docs = {d["kind"]: d for d in _docs(KUBERAY / "cronjob-generate.yaml")}
    assert set(docs) == {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"}
    return docs


def _entrypoints() -> list[tuple[str, str, list[str]]]:
    """(where, job script name, Hydra overrides) of every RayJob entrypoint."""
    out = []
    for where, doc in _ray_manifests():
        if doc["kind"] != "RayJob":
            continue
        argv = shlex.split(doc["spec"]["entrypoint"])
        assert argv[0] == "python" and argv[1].endswith(".py"), f"{where}: unexpected entrypoint {argv[:2]}"
        out.append((where, pathlib.Path(argv[1]).stem, argv[2:]))
    return out


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        lines.append(buf + stripped)
        buf = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def _docker_args() -> dict[str, str]:
    args = {}
    for instr, rest in _dockerfile():
        if instr == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key.strip()] = value.strip().strip('"')
    return args


_IMAGE_TAG = re.compile(r":(?P<version>[\w.]+)-ray(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d)(?P<pyminor>\d+)-(?P<cuda>cu\d+)$")


# ----------------------------------------------------------------------------- every file

def test_every_yaml_under_cluster_parses():
    for path in _yaml_files():
        docs = _docs(path)
        assert docs, f"{path} holds no YAML document"
        for doc in docs:
            assert isinstance(doc, dict) and "apiVersion" in doc or "cluster_name" in doc, \
                f"{path}: a document without apiVersion (Kubernetes) or cluster_name (launcher)"
    embedded = [w for w, _ in _kube_docs() if ":" in w]
    assert embedded == ["cronjob-generate.yaml:rayjob.yaml"]


def test_no_credentials_in_cluster_files():
    patterns = [re.compile(r"AKIA[0-9A-Z]{16}"), re.compile(r"ASIA[0-9A-Z]{16}"),
                re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
                re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{40}")]
    files = [p for p in CLUSTER.rglob("*") if p.is_file()] + [ROOT / ".dockerignore"]
    for path in files:
        text = path.read_text()
        for pattern in patterns:
            assert not pattern.search(text), f"{path} looks like it contains a credential ({pattern.pattern})"
    for where, doc in _kube_docs():
        assert doc.get("kind") != "Secret", f"{where}: Secrets are created from the shell, never committed"


def test_all_objects_live_in_the_project_namespace_and_use_defined_service_accounts():
    docs = _kube_docs()
    namespaces = {d["metadata"].get("namespace") for _, d in docs if d["kind"] != "Namespace"}
    assert namespaces == {"dcnn-flame"}
    defined = {d["metadata"]["name"] for _, d in docs if d["kind"] == "ServiceAccount"}
    used = set()
    for _, spec in _cluster_specs():
        for _, group, _ in ks.ray_containers(spec):
            used.add(group["template"]["spec"].get("serviceAccountName"))
    used.add(_nightly()["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"])
    assert used <= defined, f"pods use undefined ServiceAccounts {used - defined}"
    sa = next(d for _, d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "dcnn-flame-ray")
    assert re.match(r"^arn:aws:iam::\d{12}:role/\S+$", sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"])


# ----------------------------------------------------------------------------- KubeRay schema

@pytest.mark.parametrize("where,doc", _ray_manifests(), ids=lambda v: v if isinstance(v, str) else "")
def test_kuberay_manifest_matches_documented_schema(where, doc):
    if where.endswith("rayjob.yaml"):  # the nightly template, as the CronJob will create it
        doc = yaml.safe_load(yaml.safe_dump(doc).replace("__RUN_DATE__", "2026-12-31"))
    assert ks.validate(doc) == [], where


def _valid_cluster() -> dict:
    return copy.deepcopy(_docs(KUBERAY / "raycluster.yaml")[0])


def _valid_job() -> dict:
    return copy.deepcopy(_docs(KUBERAY / "rayjob-train.yaml")[0])


def _mutations():
    def int_start_param(d):
        d["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # the classic mistake
    def min_above_max(d):
        d["spec"]["workerGroupSpecs"][0].update(minReplicas=3, maxReplicas=2, replicas=2)
    def replicas_above_max(d):
        d["spec"]["workerGroupSpecs"][0].update(replicas=9)
    def typo_in_group(d):
        g = d["spec"]["workerGroupSpecs"][0]
        g["minReplica"] = g.pop("minReplicas")
    def typo_in_container(d):
        c = d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        c["resoures"] = c.pop("resources")
    def no_image(d):
        del d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    def untagged_image(d):
        d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] = "rayproject/ray"
    def wrong_api(d):
        d["apiVersion"] = "ray.io/v1alpha1"
    def long_name(d):
        d["metadata"]["name"] = "x" * 60
    def upper_name(d):
        d["metadata"]["name"] = "DcnnFlame"
    def int_env_value(d):
        d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"][1]["value"] = 0
    def duplicate_group(d):
        d["spec"]["workerGroupSpecs"][1]["groupName"] = "gpu"
    return {f.__name__: f for f in (int_start_param, min_above_max, replicas_above_max, typo_in_group,
                                    typo_in_container, no_image, untagged_image, wrong_api, long_name,
                                    upper_name, int_env_value, duplicate_group)}


@pytest.mark.parametrize("mutation", sorted(_mutations()))
def test_schema_rejects_common_raycluster_mistakes(mutation):
    doc = _valid_cluster()
    assert ks.validate(doc) == []
    _mutations()[mutation](doc)
    assert ks.validate(doc), f"{mutation} was accepted"


@pytest.mark.parametrize("mutation", [
    "runtime_env_as_mapping", "runtime_env_not_mapping", "ttl_without_shutdown", "both_cluster_sources",
    "no_cluster_source", "selector_with_backoff", "zero_deadline", "bad_submission_mode", "job_name_too_long"])
def test_schema_rejects_common_rayjob_mistakes(mutation):
    doc = _valid_job()
    assert ks.validate(doc) == []
    spec = doc["spec"]
    if mutation == "runtime_env_as_mapping":
        spec["runtimeEnvYAML"] = {"env_vars": {"A": "1"}}
    elif mutation == "runtime_env_not_mapping":
        spec["runtimeEnvYAML"] = "- just\n- a list\n"
    elif mutation == "ttl_without_shutdown":
        spec["shutdownAfterJobFinishes"] = False
    elif mutation == "both_cluster_sources":
        spec["clusterSelector"] = {"ray.io/cluster": "dcnn-flame"}
    elif mutation == "no_cluster_source":
        del spec["rayClusterSpec"]
    elif mutation == "selector_with_backoff":
        del spec["rayClusterSpec"]
        spec.update(clusterSelector={"ray.io/cluster": "dcnn-flame"}, shutdownAfterJobFinishes=False,
                    ttlSecondsAfterFinished=0, backoffLimit=1)
    elif mutation == "zero_deadline":
        spec["activeDeadlineSeconds"] = 0
    elif mutation == "bad_submission_mode":
        spec["submissionMode"] = "K8sJob"
    elif mutation == "job_name_too_long":
        doc["metadata"]["name"] = "dcnn-flame-train-" + "x" * 31  # 48 > 47
    assert ks.validate(doc), f"{mutation} was accepted"


def test_cluster_selector_variant_from_the_comment_is_valid():
    doc = _valid_job()
    spec = doc["spec"]
    del spec["rayClusterSpec"]
    for key in ("shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "backoffLimit"):
        del spec[key]
    spec["clusterSelector"] = {"ray.io/cluster": _valid_cluster()["metadata"]["name"]}
    assert ks.validate(doc) == []


# ----------------------------------------------------------------------------- resources

def _is_gpu_group(name: str) -> bool:
    return "gpu" in name


def test_gpu_groups_request_gpus_in_limits_and_other_groups_none():
    for where, spec in _cluster_specs():
        names = [n for n, _, _ in ks.ray_containers(spec)]
        assert any(map(_is_gpu_group, names)), f"{where}: no GPU group"
        for name, group, container in ks.ray_containers(spec):
            res = container.get("resources", {})
            limits, requests = res.get("limits", {}), res.get("requests", {})
            pod = group["template"]["spec"]
            if _is_gpu_group(name):
                assert int(limits.get("nvidia.com/gpu", 0)) >= 1, f"{where}/{name}: GPU must be in limits"
                assert requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"]) == limits["nvidia.com/gpu"], \
                    f"{where}/{name}: extended-resource requests must equal limits"
                tolerated = {t.get("key") for t in pod.get("tolerations", [])}
                assert "nvidia.com/gpu" in tolerated, f"{where}/{name}: cannot land on tainted GPU nodes"
                assert "num-gpus" not in group.get("rayStartParams", {}), "let KubeRay derive GPUs from limits"
            else:
                assert not any(k.endswith("gpu") for k in {**limits, **requests}), f"{where}/{name}: wastes a GPU"
            assert "cpu" in limits and "memory" in limits, f"{where}/{name}: Ray sizes itself from limits"
            if name != "head":
                assert pod.get("automountServiceAccountToken") is False, \
                    f"{where}/{name}: workers need no Kubernetes API token"
            sc = container.get("securityContext", {})
            assert sc.get("runAsNonRoot") is True and sc.get("allowPrivilegeEscalation") is False, \
                f"{where}/{name}: must run as the image's non-root user without escalation (the image has sudo)"


def test_head_takes_no_work_and_serves_the_dashboard_inside_the_cluster():
    for where, spec in _cluster_specs():
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0", where
        assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0", where
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: never expose the job API"
        ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
        assert ports["dashboard"] == 8265 and ports["gcs-server"] == 6379, where


def test_ray_sees_the_intended_resources_through_its_kuberay_translation():
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    for where, spec in _cluster_specs():
        cr = {"metadata": {"name": "dcnn-flame", "namespace": "dcnn-flame"}, "spec": copy.deepcopy(spec)}
        config = _derive_autoscaling_config_from_ray_cr(cr)  # also runs Ray's validate_config
        types = config["available_node_types"]
        assert types["headgroup"]["resources"]["CPU"] == 0 and "GPU" not in types["headgroup"]["resources"]
        for group in spec["workerGroupSpecs"]:
            res = types[group["groupName"]]["resources"]
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert res["CPU"] == int(ks.parse_quantity(limits["cpu"])), where
            assert res.get("GPU", 0) == int(limits.get("nvidia.com/gpu", 0)), where
            assert types[group["groupName"]]["max_workers"] == group["maxReplicas"], where


def test_object_store_fits_in_shared_memory_and_in_the_memory_limit():
    checked = 0
    for where, spec in _cluster_specs():
        for name, group, container in ks.ray_containers(spec):
            pod = group["template"]["spec"]
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "/dev/shm" in mounts, f"{where}/{name}: default 64 MiB /dev/shm makes Ray spill to disk"
            volume = next(v for v in pod["volumes"] if v["name"] == mounts["/dev/shm"])
            assert volume["emptyDir"]["medium"] == "Memory", f"{where}/{name}: /dev/shm must be tmpfs"
            store = group["rayStartParams"].get("object-store-memory")
            assert store is not None, f"{where}/{name}: set object-store-memory explicitly"
            store = int(store)
            shm = ks.parse_quantity(volume["emptyDir"]["sizeLimit"])
            memory = ks.parse_quantity(container["resources"]["limits"]["memory"])
            assert store < shm, f"{where}/{name}: object store {store} does not fit /dev/shm {shm}"
            assert store <= 0.5 * memory, f"{where}/{name}: object store leaves too little heap of {memory}"
            checked += 1
    assert checked >= 8


def test_fixed_size_job_clusters_match_the_requested_train_workers():
    for where, script, overrides in _entrypoints():
        if script != "train":
            continue
        doc = dict(_ray_manifests())[where]
        spec = doc["spec"]["rayClusterSpec"]
        assert spec["enableInTreeAutoscaling"] is False
        gpus = sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
                   for g in spec["workerGroupSpecs"] if _is_gpu_group(g["groupName"]))
        workers = dict(o.split("=", 1) for o in overrides)["trainer.num_workers"]
        assert int(workers) == gpus, f"{where}: {workers} DDP ranks but {gpus} GPUs in the cluster"


# ----------------------------------------------------------------------------- versions / image

def _all_images() -> set[str]:
    images = set()
    for _, spec in _cluster_specs():
        images |= {c["image"] for _, _, c in ks.ray_containers(spec)}
    images.add(yaml.safe_load(LAUNCHER.read_text())["docker"]["image"])
    return images


def test_one_image_everywhere_with_the_pinned_ray_and_python():
    import ray

    pinned = _pinned_ray()
    assert ray.__version__ == pinned, f"installed ray {ray.__version__} != pyproject pin {pinned}"
    images = _all_images()
    assert len(images) == 1, f"head, workers and launcher must share one image, found {images}"
    tag = _IMAGE_TAG.search(images.pop())
    assert tag, "image tag must read <version>-ray<x.y.z>-py<XY>-cu<NNN>"
    assert tag["ray"] == pinned
    assert (tag["py"], tag["pyminor"]) == ("3", "11")
    assert tag["cuda"] == _docker_args()["BASE_IMAGE"].rsplit("-", 1)[1], "image tag CUDA != Dockerfile base"
    for where, spec in _cluster_specs():
        assert spec["rayVersion"] == pinned, where


def test_dockerfile_pins_ray_python_cuda_and_torch_with_a_constraint():
    args = _docker_args()
    instructions = _dockerfile()
    pinned = _pinned_ray()
    assert args["BASE_IMAGE"] == f"rayproject/ray:{pinned}-py311-cu128"
    assert ("FROM", "${BASE_IMAGE}") in instructions
    assert "ray-ml" not in DOCKERFILE.read_text().split("#")[0]
    cuda = args["BASE_IMAGE"].rsplit("-", 1)[1]
    assert args["TORCH_INDEX_URL"] == f"https://download.pytorch.org/whl/{cuda}", "torch CUDA != image CUDA"
    assert args["TORCH_VERSION"] == _pinned_torch(), "image torch != Makefile TORCH_SPEC"

    runs = [rest for instr, rest in instructions if instr == "RUN"]
    pip_installs = [cmd.strip() for run in runs for cmd in run.split("&&") if "pip install" in cmd]
    torch_install, project_installs = pip_installs[0], pip_installs[1:]
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_install and '"torch==${TORCH_VERSION}"' in torch_install
    assert re.search(r"pip freeze \| grep -i '\^torch==' > (\S+)", " ".join(runs)), "constraint not recorded"
    constraint = re.search(r"> (\S+torch-constraint\.txt)", " ".join(runs)).group(1)
    assert project_installs, "the project is never installed"
    for cmd in project_installs:
        assert f"-c {constraint}" in cmd, f"pip install without the torch constraint: {cmd!r}"
    assert any("tools/check_env.py" in run for run in runs), "no check for a second torch"
    digits = cuda.removeprefix("cu")
    smoke = " ".join(runs)
    assert f"ray.__version__ == '{pinned}'" in smoke, "the build-time smoke check tests another Ray"
    assert f".startswith('{digits[:-1]}.{digits[-1]}')" in smoke, "the build-time smoke check tests another CUDA"

    users = [rest for instr, rest in instructions if instr == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the image must end as a non-root user"
    copies = [rest.split() for instr, rest in instructions if instr == "COPY"]
    sources = [s for c in copies for s in c[:-1] if not s.startswith("--")]
    assert not [s for s in sources if s.endswith((".pkl", ".pt", ".pth", ".ckpt", ".npz"))], "model files in image"
    for src in sources:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"


def test_dockerignore_excludes_local_state_and_models_but_not_what_the_image_needs():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for needed in (".git", ".venv", "runs", "outputs", "**/*.pkl", "**/*.ckpt", "**/.env"):
        assert needed in patterns, f".dockerignore misses {needed}"
    copies = [rest.split() for instr, rest in _dockerfile() if instr == "COPY"]
    sources = [s for c in copies for s in c[:-1] if not s.startswith("--")]
    for src in sources:
        hit = [p for p in patterns if not p.startswith("!") and fnmatch.fnmatch(src, p.lstrip("/"))]
        assert not hit, f"{src} is copied by the Dockerfile but excluded by .dockerignore {hit}"
    # weights are kept out of the image, except the AU detector the package ships (last match wins)
    shipped = "dcnn_flame/generation/assets/au_reference_112.pt"
    excluded = False
    for p in patterns:
        if fnmatch.fnmatch(shipped, p.lstrip("!").lstrip("/")):
            excluded = not p.startswith("!")
    assert not excluded and (ROOT / shipped).exists()
    assert any(fnmatch.fnmatch("runs/x/model.pt", p) for p in patterns if not p.startswith("!"))


# ----------------------------------------------------------------------------- nightly CronJob

_CRON_FIELDS = [(0, 59, {}), (0, 23, {}), (1, 31, {}),
                (1, 12, {m: i + 1 for i, m in enumerate(
                    "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}),
                (0, 7, {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())})]


def _cron_field_ok(field: str, lo: int, hi: int, names: dict[str, int]) -> bool:
    def value(token: str) -> int | None:
        if token.upper() in names:
            return names[token.upper()]
        return int(token) if token.isdigit() else None

    for part in field.split(","):
        base, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            return False
        if base == "*":
            continue
        first, _, last = base.partition("-")
        a, b = value(first), value(last) if last else value(first)
        if a is None or b is None or not lo <= a <= b <= hi:
            return False
    return True


def valid_cron(schedule: str) -> bool:
    """Standard 5-field cron as Kubernetes CronJob accepts it (names, ranges, lists, steps)."""
    fields = schedule.split()
    return len(fields) == 5 and all(_cron_field_ok(f, *spec) for f, spec in zip(fields, _CRON_FIELDS))


@pytest.mark.parametrize("schedule,ok", [
    ("0 2 * * *", True), ("*/15 0-6 1,15 JAN-MAR MON-FRI", True), ("0 0 * * 7", True),
    ("0 2 * *", False), ("61 2 * * *", False), ("0 24 * * *", False), ("0 2 0 * *", False),
    ("*/0 * * * *", False), ("0 2 * * 8", False), ("5-1 * * * *", False), ("@daily", False)])
def test_cron_validator(schedule, ok):
    assert valid_cron(schedule) is ok


def test_cronjob_is_batch_v1_forbid_with_valid_schedule_and_wiring():
    docs = _nightly()
    cron = docs["CronJob"]
    assert cron["apiVersion"] == "batch/v1"
    assert valid_cron(cron["spec"]["schedule"]), cron["spec"]["schedule"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["timeZone"] == "Etc/UTC"  # the script dates with `date -u`
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config_volume = next(v for v in pod["volumes"] if "configMap" in v)
    assert config_volume["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    mount = mounts[config_volume["name"]]
    script_key, template_key = "create-rayjob.sh", "rayjob.yaml"
    assert set(docs["ConfigMap"]["data"]) == {script_key, template_key}
    assert container["command"] == ["/bin/bash", f"{mount}/{script_key}"]
    assert f"{mount}/{template_key}" in docs["ConfigMap"]["data"][script_key]
    deadline = docs["ConfigMap"]["data"][template_key]
    rayjob_deadline = yaml.safe_load(deadline)["spec"]["activeDeadlineSeconds"]
    assert cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] > rayjob_deadline
    assert rayjob_deadline < 24 * 3600, "a nightly run must end before the next night"


def test_nightly_rbac_is_least_privilege():
    docs = _nightly()
    rules = docs["Role"]["rules"]
    assert rules == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get"]}]
    binding = docs["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": docs["Role"]["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": docs["ServiceAccount"]["metadata"]["name"],
                                    "namespace": "dcnn-flame"}]


_FAKE_KUBECTL = r"""#!/bin/bash
# Stand-in for kubectl: records each call, serves RayJob state from files in $FAKE_KUBE.
echo "$*" >> "$FAKE_KUBE/calls"
case "$*" in
  *" create -f -"*) cat > "$FAKE_KUBE/created.yaml"; touch "$FAKE_KUBE/exists" ;;
  *"--ignore-not-found -o name"*) if [ -f "$FAKE_KUBE/exists" ]; then echo "rayjob.ray.io/x"; fi ;;
  *"{.status.jobDeploymentStatus}"*)
    head -n1 "$FAKE_KUBE/deployment"
    if [ "$(wc -l < "$FAKE_KUBE/deployment")" -gt 1 ]; then sed -i 1d "$FAKE_KUBE/deployment"; fi ;;
  *"{.status.jobStatus}"*) cat "$FAKE_KUBE/jobstatus" ;;
  *) echo "unexpected kubectl call: $*" >&2; exit 9 ;;
esac
"""


def _run_nightly_script(tmp_path, run_date, deployment=("Complete",), job_status="SUCCEEDED", exists=False):
    data = _nightly()["ConfigMap"]["data"]
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "kubectl"
    fake.write_text(_FAKE_KUBECTL)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    state = tmp_path / "state"
    state.mkdir()
    (state / "deployment").write_text("\n".join(deployment) + "\n")
    (state / "jobstatus").write_text(job_status + "\n")
    if exists:
        (state / "exists").touch()
    (tmp_path / "create-rayjob.sh").write_text(data["create-rayjob.sh"])
    (tmp_path / "rayjob.yaml").write_text(data["rayjob.yaml"])
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "FAKE_KUBE": str(state),
           "NAMESPACE": "dcnn-flame", "RAYJOB_TEMPLATE": str(tmp_path / "rayjob.yaml"),
           "POLL_SECONDS": "0", "RUN_DATE": run_date}
    proc = subprocess.run(["bash", str(tmp_path / "create-rayjob.sh")], env=env, capture_output=True,
                          text=True, timeout=30)
    calls = (state / "calls").read_text().splitlines() if (state / "calls").exists() else []
    created = state / "created.yaml"
    return proc, calls, (yaml.safe_load(created.read_text()) if created.exists() else None)


def _rbac_verbs(calls: list[str]) -> set[str]:
    verbs = set()
    for call in calls:
        argv = call.split()
        sub = argv[argv.index("-n") + 2] if argv[0] == "-n" else argv[0]
        verbs.add({"create": "create", "get": "get"}.get(sub, f"unmapped:{sub}"))
    return verbs


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_nightly_script_creates_one_valid_rayjob_for_the_date_and_waits(tmp_path):
    proc, calls, created = _run_nightly_script(
        tmp_path, "2026-03-07", deployment=("Initializing", "Running", "Running", "Complete"))
    assert proc.returncode == 0, proc.stderr
    assert sum(" create -f -" in c for c in calls) == 1
    assert sum("jobDeploymentStatus" in c for c in calls) == 4  # polled until Complete
    assert ks.validate(created) == []
    assert created["metadata"]["name"] == "dcnn-flame-nightly-2026-03-07"
    overrides = dict(o.split("=", 1) for o in shlex.split(created["spec"]["entrypoint"])[2:])
    assert overrides["name"] == "nightly-2026-03-07"
    assert "__RUN_DATE__" not in yaml.safe_dump(created)
    role_verbs = set(_nightly()["Role"]["rules"][0]["verbs"])
    assert _rbac_verbs(calls) <= role_verbs, f"script needs verbs the Role lacks: {_rbac_verbs(calls) - role_verbs}"


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_nightly_script_rerun_reuses_the_rayjob_and_reports_failure(tmp_path):
    proc, calls, created = _run_nightly_script(
        tmp_path, "2026-03-07", deployment=("Failed",), job_status="FAILED", exists=True)
    assert proc.returncode == 1
    assert created is None and not any(" create " in c for c in calls)
    assert "already exists" in proc.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_nightly_script_rejects_a_malformed_date_before_touching_the_api(tmp_path):
    proc, calls, created = _run_nightly_script(tmp_path, "2026-3-7; rm -rf /")
    assert proc.returncode == 2 and calls == [] and created is None
    assert "RUN_DATE" in proc.stderr


# ----------------------------------------------------------------------------- overrides

def _readme_override_names() -> list[str]:
    text = README.read_text()
    block = text.split("<!-- overrides:begin -->", 1)[1].split("<!-- overrides:end -->", 1)[0]
    return re.findall(r"^\|\s*`([^`]+)`\s*\|", block, re.M)


def test_every_override_used_in_manifests_is_listed_once_in_the_readme():
    listed = _readme_override_names()
    assert len(listed) == len(set(listed)), "an override is listed twice"
    used = {o.split("=", 1)[0] for _, _, overrides in _entrypoints() for o in overrides}
    assert used, "no overrides found in the RayJob entrypoints"
    assert used <= set(listed), f"overrides missing from cluster/README.md: {used - set(listed)}"
    assert set(listed) <= used, f"README lists overrides no manifest uses: {set(listed) - used}"


@pytest.mark.parametrize("where,script,overrides", _entrypoints(), ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_overrides_compose_with_the_job_config(where, script, overrides):
    config_dir = ROOT / "configs"
    if not (config_dir / f"{script}.yaml").exists():
        pytest.skip(f"configs/{script}.yaml does not exist yet; the override names are still examples")
    from hydra import compose, initialize_config_dir

    from dcnn_flame import config as cfgmod

    if hasattr(cfgmod, "register_configs"):
        cfgmod.register_configs()
    overrides = [o.replace("__RUN_DATE__", "2026-01-31") for o in overrides]
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        compose(config_name=script, overrides=overrides)


# ----------------------------------------------------------------------------- cluster launcher

def _launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def _prepared_launcher(config: dict | None = None) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config or _launcher()))  # merges aws/defaults.yaml, offline
    validate_config(prepared)
    return prepared


def test_launcher_yaml_passes_rays_own_validation():
    prepared = _prepared_launcher()
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] == "head"
    # Ray's AWS defaults would pip-install a nightly Ray wheel unless we set these ourselves.
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert not any("pip install" in cmd for cmd in prepared[key]), f"{key}: {prepared[key]}"


@pytest.mark.parametrize("mutation", ["string_resource", "unknown_top_level_key", "head_not_a_node_type",
                                      "min_workers_over_max"])
def test_rays_launcher_validation_is_not_a_no_op(mutation):
    config = _launcher()
    if mutation == "string_resource":
        config["available_node_types"]["head"]["resources"] = {"CPU": "0"}
    elif mutation == "unknown_top_level_key":
        config["max_worker"] = 3
    elif mutation == "head_not_a_node_type":
        config["head_node_type"] = "ray.head.default"
    elif mutation == "min_workers_over_max":
        config["available_node_types"]["gpu_worker"]["min_workers"] = config["max_workers"] + 1
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _prepared_launcher(config)


def test_launcher_head_is_cpu_less_and_every_node_has_an_ami_and_a_role():
    prepared = _prepared_launcher()
    types = prepared["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}
    assert types["head"]["max_workers"] == 0
    for name, node in types.items():
        config = node["node_config"]
        assert re.match(r"^ami-[0-9a-f]{8,17}$", config.get("ImageId", "")), \
            f"{name}: set ImageId; Ray's default AMI has CUDA 11.2 drivers, too old for cu128"
        # The auto-created ray-autoscaler-v1 role is attached to the head only: workers
        # without their own profile cannot reach S3.
        assert re.match(r"^arn:aws:iam::\d{12}:instance-profile/\S+$", config["IamInstanceProfile"]["Arn"]), name
        is_gpu_type = re.match(r"^(g\d|p\d)", config["InstanceType"]) is not None
        assert is_gpu_type == ("gpu" in name), f"{name}: instance type {config['InstanceType']}"
        if "gpu" in name:
            assert "--gpus all" in node["docker"]["worker_run_options"]
    worker_profiles = {types[n]["node_config"]["IamInstanceProfile"]["Arn"] for n in types if n != "head"}
    assert types["head"]["node_config"]["IamInstanceProfile"]["Arn"] not in worker_profiles, \
        "workers must not carry the head's EC2-launching role"
    assert sum(n.get("min_workers", 0) for n in types.values()) == 0, "idle clusters should cost only the head"
