"""The chart rendered by `helm template`, and what the tests read in it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ruamel.yaml import YAML

if TYPE_CHECKING:
    from collections.abc import Iterable

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "notifications"
EXAMPLES = REPO / "deploy" / "helm" / "examples"
PRODUCTION_VALUES = EXAMPLES / "production-values.yaml"
RELEASE = "notifications"
NAMESPACE = "notifications"
SERVICES = ("api", "scheduler", "dispatcher", "reporter")
#: The cluster version `helm template` renders for (it has no cluster to ask).
KUBE_VERSION = "1.33.0"

Manifest = dict[str, Any]


def load_all(text: str) -> list[Manifest]:
    return [doc for doc in YAML(typ="safe").load_all(text) if doc]


def load_values(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = YAML(typ="safe").load(path.read_text())
    return loaded


@dataclass(frozen=True)
class Rendered:
    """One `helm template` of the chart."""

    objects: list[Manifest]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def named(self, kind: str, name: str) -> Manifest:
        (found,) = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        return found

    def component(self, kind: str, component: str) -> Manifest:
        (found,) = [
            obj
            for obj in self.of_kind(kind)
            if obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ]
        return found

    def deployment(self, service: str) -> Manifest:
        return self.named("Deployment", f"{RELEASE}-{service}")

    def settings(self) -> dict[str, str]:
        data: dict[str, str] = self.named("ConfigMap", f"{RELEASE}-settings")["data"]
        return data


def helm_template(
    helm: Path, *values: Path, sets: Iterable[str] = (), check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    command += ["--kube-version", KUBE_VERSION]
    for path in values:
        command += ["--values", str(path)]
    for assignment in sets:
        command += ["--set", assignment]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=check)


def render(helm: Path, *values: Path, sets: Iterable[str] = ()) -> Rendered:
    objects = load_all(helm_template(helm, *values, sets=sets).stdout)
    for obj in objects:  # `helm install --namespace` puts them there
        obj["metadata"].setdefault("namespace", NAMESPACE)
    return Rendered(objects)


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Manifest) -> dict[str, Any]:
    (only,) = pod_spec(workload)["containers"]
    result: dict[str, Any] = only
    return result


def environment(workload: Manifest, rendered: Rendered) -> dict[str, str]:
    """The variables the container starts with: its ConfigMap's, then its own `env`;
    a variable from a Secret gets a stand-in value `<secret:name/key>`."""
    spec = container(workload)
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        config_map = rendered.named("ConfigMap", source["configMapRef"]["name"])
        env.update(config_map["data"])
    for entry in spec.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = f"<secret:{ref['name']}/{ref['key']}>"
    return env


def secret_refs(workload: Manifest) -> dict[str, tuple[str, str]]:
    """Variable -> (Secret, key) of the container's variables read from Secrets."""
    return {
        entry["name"]: (
            entry["valueFrom"]["secretKeyRef"]["name"],
            entry["valueFrom"]["secretKeyRef"]["key"],
        )
        for entry in container(workload).get("env", [])
        if "secretKeyRef" in entry.get("valueFrom", {})
    }


def strict(schema: Any) -> Any:
    """A CRD schema where an object with declared properties accepts no other key (what
    the API server would silently prune): a misspelt field fails validation."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in result
        and "additionalProperties" not in result
        and not result.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result
