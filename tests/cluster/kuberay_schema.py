"""Hand-written structural check of the KubeRay ``ray.io/v1`` fields our manifests use.

Not the full CRD (that is ~1 MB of OpenAPI per kind): a documented subset, strict about
the keys it knows, so typos (``minReplica``, ``resoures``), wrong types (an integer in
``rayStartParams``: every value there must be a string) and wrong shapes
(``runtimeEnvYAML`` as a mapping instead of a YAML string) fail offline, before
``kubectl apply``. A field we start using must be added here after checking it in the
CRD of the oldest supported operator (KubeRay 1.3). Semantic rules that the operator
enforces in code rather than in the CRD (min <= replicas <= max, TTL needs shutdown,
clusterSelector vs backoffLimit, name lengths) are in :func:`semantic_errors`.

Sources: KubeRay ``ray-operator/apis/ray/v1/{raycluster,rayjob}_types.go`` and
``controllers/ray/utils/validation.go`` (read, not copied).
"""
from __future__ import annotations

import re
from typing import Any

import jsonschema
import yaml

RAY_CLUSTER_NAME_MAX = 53
"""KubeRay's MaxRayClusterNameLength: longer names break derived pod/service names."""
RAY_JOB_NAME_MAX = RAY_CLUSTER_NAME_MAX - 6
"""KubeRay's MaxRayJobNameLength: the RayJob's cluster name adds a suffix."""
DNS1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""RayCluster/RayJob names must be DNS-1035 labels."""

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_QUANTITY = {"type": ["string", "integer", "number"]}
_RESOURCE_LIST = {"type": "object", "additionalProperties": _QUANTITY}

CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "image": {"type": "string", "pattern": r"^\S+:\S+$"},  # a tag is required: never :latest by omission
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        "command": {"type": "array", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}},
        "workingDir": {"type": "string"},
        "ports": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["containerPort"],
                "additionalProperties": False,
                "properties": {
                    "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "name": {"type": "string", "maxLength": 15},
                    "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                },
            },
        },
        "resources": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"requests": _RESOURCE_LIST, "limits": _RESOURCE_LIST},
        },
        "env": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "value": {"type": "string"},  # env values are strings too ("0", not 0)
                    "valueFrom": {"type": "object"},
                },
            },
        },
        "envFrom": {"type": "array", "items": {"type": "object"}},
        "securityContext": {"type": "object"},
        "lifecycle": {"type": "object"},
        "volumeMounts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "mountPath"],
                "properties": {"name": {"type": "string"}, "mountPath": {"type": "string"}},
            },
        },
        "livenessProbe": {"type": "object"},
        "readinessProbe": {"type": "object"},
    },
}

POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "additionalProperties": False,
    "properties": {
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {
                "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
                "serviceAccountName": {"type": "string"},
                "automountServiceAccountToken": {"type": "boolean"},
                "nodeSelector": _STRING_MAP,
                "tolerations": {"type": "array", "items": {"type": "object"}},
                "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
            },
        },
    },
}

HEAD_GROUP = {
    "type": "object",
    "required": ["template"],
    "additionalProperties": False,
    "properties": {
        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
        "rayStartParams": _STRING_MAP,
        "template": POD_TEMPLATE,
    },
}

WORKER_GROUP = {
    "type": "object",
    # KubeRay requires min/max when the autoscaler is off; we always set both.
    "required": ["groupName", "minReplicas", "maxReplicas", "template"],
    "additionalProperties": False,
    "properties": {
        "groupName": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "replicas": {"type": "integer", "minimum": 0},
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 0},
        "numOfHosts": {"type": "integer", "minimum": 1},
        "rayStartParams": _STRING_MAP,
        "template": POD_TEMPLATE,
    },
}

RAY_CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec", "rayVersion"],
    "additionalProperties": False,
    "properties": {
        "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
                "resources": {"type": "object"},
            },
        },
        "headGroupSpec": HEAD_GROUP,
        "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
    },
}

_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": DNS1035},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}

RAY_CLUSTER = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayCluster"},
        "metadata": {**_METADATA, "properties": {**_METADATA["properties"],
                     "name": {"type": "string", "pattern": DNS1035, "maxLength": RAY_CLUSTER_NAME_MAX}}},
        "spec": RAY_CLUSTER_SPEC,
    },
}

RAY_JOB = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {**_METADATA, "properties": {**_METADATA["properties"],
                     "name": {"type": "string", "pattern": DNS1035, "maxLength": RAY_JOB_NAME_MAX}}},
        "spec": {
            "type": "object",
            "required": ["entrypoint"],
            "additionalProperties": False,
            # Exactly one way to get a cluster: a new one, or an existing one by label.
            "oneOf": [{"required": ["rayClusterSpec"]}, {"required": ["clusterSelector"]}],
            "properties": {
                "entrypoint": {"type": "string", "minLength": 1},
                "runtimeEnvYAML": {"type": "string"},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "backoffLimit": {"type": "integer", "minimum": 0},
                "suspend": {"type": "boolean"},
                "jobId": {"type": "string"},
                "entrypointNumCpus": {"type": "number", "minimum": 0},
                "entrypointNumGpus": {"type": "number", "minimum": 0},
                "clusterSelector": _STRING_MAP,
                "rayClusterSpec": RAY_CLUSTER_SPEC,
            },
        },
    },
}

SCHEMAS = {"RayCluster": RAY_CLUSTER, "RayJob": RAY_JOB}


def _cluster_spec_errors(spec: dict[str, Any], where: str) -> list[str]:
    errors = []
    names = [g.get("groupName") for g in spec.get("workerGroupSpecs", [])]
    if len(names) != len(set(names)):
        errors.append(f"{where}: duplicate worker groupName in {names}")
    for group in spec.get("workerGroupSpecs", []):
        lo, hi = group.get("minReplicas", 0), group.get("maxReplicas", 0)
        n = group.get("replicas", lo)
        if not lo <= n <= hi:
            errors.append(f"{where}: group {group.get('groupName')!r} needs "
                          f"minReplicas <= replicas <= maxReplicas, got {lo} <= {n} <= {hi}")
    return errors


def semantic_errors(doc: dict[str, Any]) -> list[str]:
    """Rules KubeRay enforces in its controller (validation.go), not in the CRD schema."""
    kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
    where = f"{kind}/{name}"
    if kind == "RayCluster":
        return _cluster_spec_errors(doc["spec"], where)
    spec = doc["spec"]
    errors = []
    if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes"):
        errors.append(f"{where}: ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
    if "clusterSelector" in spec:
        if not spec["clusterSelector"].get("ray.io/cluster"):
            errors.append(f"{where}: clusterSelector needs the label ray.io/cluster: <name>")
        if spec.get("backoffLimit", 0) > 0:
            errors.append(f"{where}: backoffLimit > 0 is rejected together with clusterSelector")
    if "runtimeEnvYAML" in spec:
        try:
            env = yaml.safe_load(spec["runtimeEnvYAML"])
        except yaml.YAMLError as exc:
            errors.append(f"{where}: runtimeEnvYAML is not valid YAML: {exc}")
        else:
            if not isinstance(env, dict):
                errors.append(f"{where}: runtimeEnvYAML must be a YAML mapping, got {type(env).__name__}")
    if "rayClusterSpec" in spec:
        errors += _cluster_spec_errors(spec["rayClusterSpec"], where)
    return errors


def validate(doc: dict[str, Any]) -> list[str]:
    """All problems of one RayCluster/RayJob manifest, as readable strings ([] = valid)."""
    schema = SCHEMAS.get(doc.get("kind"))
    if schema is None:
        return [f"not a RayCluster/RayJob: kind={doc.get('kind')!r}"]
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
              for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]
    if errors:  # semantic rules assume the structure is right
        return errors
    return semantic_errors(doc)


def ray_containers(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(group name, group spec, Ray container) for the head ("head") and every worker group.

    KubeRay treats the first container of each pod template as the Ray container.
    """
    out = [("head", spec["headGroupSpec"], spec["headGroupSpec"]["template"]["spec"]["containers"][0])]
    for group in spec.get("workerGroupSpecs", []):
        out.append((group["groupName"], group, group["template"]["spec"]["containers"][0]))
    return out


_QUANTITY_RE = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def parse_quantity(value: str | int | float) -> float:
    """Kubernetes resource quantity ("28Gi", "500m", 7, "1e3" not supported) -> number."""
    match = _QUANTITY_RE.match(str(value))
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]
