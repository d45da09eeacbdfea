"""The chart lints, renders, and every object it renders is one the API server accepts:
the Kubernetes objects against the API's schemas (kubernetes-validate), the custom
resources (KEDA, Prometheus Operator) against their operators' CRDs, and so are the
examples of deploy/helm/examples (Strimzi, CloudNativePG)."""

from __future__ import annotations

import re
import subprocess
from typing import TYPE_CHECKING, Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.chart import (
    CHART,
    EXAMPLES,
    KUBE_VERSION,
    PRODUCTION_VALUES,
    REPO,
    SERVICES,
    Rendered,
    container,
    helm_template,
    load_all,
    load_values,
    pod_spec,
    strict,
)

if TYPE_CHECKING:
    from pathlib import Path

#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest
#: whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
CustomSchemas = dict[tuple[str, str, str], dict[str, Any]]


def gvk(obj: dict[str, Any]) -> tuple[str, str, str]:
    group, _, version = obj["apiVersion"].rpartition("/")
    return group, version, obj["kind"]


def check_custom(obj: dict[str, Any], schemas: CustomSchemas) -> None:
    schema = schemas.get(gvk(obj))
    assert schema is not None, f"no CRD schema for {obj['apiVersion']} {obj['kind']}"
    jsonschema.validate(obj, strict(schema))


@pytest.mark.parametrize("values", [None, PRODUCTION_VALUES], ids=["default", "production"])
def test_helm_lint_passes_strictly(helm: Path, values: Path | None) -> None:
    command = [str(helm), "lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION]
    if values is not None:
        command += ["--values", str(values)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_object_is_valid(chart: Rendered, version: str) -> None:
    built_in = [
        obj for obj in chart.objects if "." not in gvk(obj)[0] or gvk(obj)[0].endswith(".k8s.io")
    ]
    assert {obj["kind"] for obj in built_in} >= {"Deployment", "Service", "ConfigMap"}
    for obj in built_in:
        kubernetes_validate.validate(obj, version, strict=True)


def test_custom_resources_are_valid_against_their_crds(
    chart: Rendered, crd_schemas: CustomSchemas
) -> None:
    custom = [obj for obj in chart.objects if gvk(obj) in crd_schemas]
    others = [obj for obj in chart.objects if obj not in custom]
    for obj in others:  # nothing is left unchecked: it is a built-in kind
        group = gvk(obj)[0]
        assert "." not in group or group.endswith(".k8s.io"), obj["kind"]
    for obj in custom:
        check_custom(obj, crd_schemas)


def test_the_production_values_render_every_custom_resource(production_chart: Rendered) -> None:
    kinds = {obj["kind"] for obj in production_chart.objects}
    assert {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"} <= kinds


def test_a_misspelt_field_fails_validation(
    default_chart: Rendered, crd_schemas: CustomSchemas
) -> None:
    scaled = default_chart.of_kind("ScaledObject")[0]
    broken = {**scaled, "spec": {**scaled["spec"], "maxReplicasCount": 3}}
    with pytest.raises(jsonschema.ValidationError, match="maxReplicasCount"):
        check_custom(broken, crd_schemas)
    deployment = default_chart.deployment("api")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {**deployment, "spec": {**deployment["spec"], "replica": 2}},
            KUBERNETES_VERSIONS[-1],
            strict=True,
        )


@pytest.mark.parametrize("example", ["strimzi-kafka.yaml", "cnpg-cluster.yaml"])
def test_the_examples_are_valid_against_their_crds(
    example: str, crd_schemas: CustomSchemas
) -> None:
    objects = load_all((EXAMPLES / example).read_text())
    assert objects
    for obj in objects:
        check_custom(obj, crd_schemas)


def test_the_strimzi_example_has_every_topic_with_the_chart_partitions() -> None:
    from shared.topics import Topics

    values = load_values(CHART / "values.yaml")
    production = load_values(PRODUCTION_VALUES)
    objects = load_all((EXAMPLES / "strimzi-kafka.yaml").read_text())
    topics = {
        obj["metadata"]["name"]: obj["spec"] for obj in objects if obj["kind"] == "KafkaTopic"
    }
    expected = Topics(retry_tiers=len(values["retryDelaysSeconds"])).all()
    assert sorted(topics) == sorted(expected)
    assert {spec["partitions"] for spec in topics.values()} == {production["kafka"]["partitions"]}


def test_the_cnpg_example_is_the_database_the_production_values_name() -> None:
    (cluster,) = load_all((EXAMPLES / "cnpg-cluster.yaml").read_text())
    production = load_values(PRODUCTION_VALUES)
    name = cluster["metadata"]["name"]
    assert production["database"]["urlSecret"] == {"name": f"{name}-app", "key": "uri"}
    peers = production["networkPolicy"]["postgres"]["to"]
    assert peers == [{"podSelector": {"matchLabels": {"cnpg.io/cluster": name}}}]


def test_no_secret_is_rendered_or_inline(chart: Rendered) -> None:
    assert not chart.of_kind("Secret")
    secretish = re.compile("TOKEN|PASSWORD|SECRET|DATABASE_URL")
    for config_map in chart.of_kind("ConfigMap"):
        assert not [key for key in config_map["data"] if secretish.search(key)]
    for workload in chart.of_kind("Deployment") + chart.of_kind("Job"):
        for entry in container(workload).get("env", []):
            if secretish.search(entry["name"]):
                assert "value" not in entry, entry["name"]
                assert entry["valueFrom"]["secretKeyRef"]["name"], entry["name"]


def test_images_are_pinned_to_the_chart_version(chart: Rendered, helm: Path) -> None:
    app_version = load_values(CHART / "Chart.yaml")["appVersion"]
    for workload in chart.of_kind("Deployment") + chart.of_kind("Job"):
        image = container(workload)["image"]
        assert f":{app_version}" in image, image
        assert not image.endswith(":latest"), image
    refused = helm_template(helm, sets=["image.tag=latest"], check=False)
    assert refused.returncode != 0
    assert "latest" in refused.stderr


def test_the_chart_version_is_the_project_version() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert load_values(CHART / "Chart.yaml")["appVersion"] == project


def test_pods_run_unprivileged_on_a_read_only_root(chart: Rendered) -> None:
    for workload in chart.of_kind("Deployment") + chart.of_kind("Job"):
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's `app`
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        security = container(workload)["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        mounts = {mount["mountPath"] for mount in container(workload)["volumeMounts"]}
        assert "/tmp" in mounts  # noqa: S108 (a writable emptyDir for the read-only root)


def peak_rss_mb() -> dict[str, int]:
    """Peak RSS per service at a million messages, from docs/benchmarks.md."""
    text = (REPO / "docs" / "benchmarks.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| peak RSS, 100k / 1M"))
    return {name: int(peak) for name, peak in re.findall(r"(\w+) \d+ / (\d+) MB", row)}


def mebibytes(quantity: str) -> float:
    units = {"Mi": 1.0, "Gi": 1024.0}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_memory_requests_cover_the_measured_peak(default_chart: Rendered) -> None:
    measured = peak_rss_mb()
    assert set(SERVICES) <= set(measured)
    for service in SERVICES:
        resources = container(default_chart.deployment(service))["resources"]
        peak_mib = measured[service] * 1e6 / 2**20
        assert mebibytes(resources["requests"]["memory"]) >= peak_mib, service
        assert mebibytes(resources["limits"]["memory"]) >= 2 * peak_mib, service
        assert {"cpu", "memory"} <= set(resources["requests"]) & set(resources["limits"])


def test_the_dashboards_are_the_files_of_deploy_grafana(default_chart: Rendered) -> None:
    source = REPO / "deploy" / "grafana" / "dashboards"
    copies = CHART / "dashboards"
    names = sorted(path.name for path in source.glob("*.json"))
    assert names
    assert names == sorted(path.name for path in copies.glob("*.json"))
    for name in names:
        assert (copies / name).read_bytes() == (source / name).read_bytes(), (
            f"{name}: copy deploy/grafana/dashboards/{name} to {copies.relative_to(REPO)}"
        )
    (config_map,) = [
        obj
        for obj in default_chart.of_kind("ConfigMap")
        if obj["metadata"]["name"].endswith("-dashboards")
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"] == {name: (source / name).read_text() for name in names}


def test_service_monitor_scrapes_every_service(production_chart: Rendered) -> None:
    (monitor,) = production_chart.of_kind("ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    port_name = monitor["spec"]["endpoints"][0]["port"]
    selector = monitor["spec"]["selector"]
    from tests.deploy.netpol import selects

    scraped = {
        svc["metadata"]["labels"]["app.kubernetes.io/component"]
        for svc in production_chart.of_kind("Service")
        if selects(selector, svc["metadata"]["labels"])
        and port_name in {port["name"] for port in svc["spec"]["ports"]}
    }
    assert scraped == set(SERVICES)


def test_every_service_has_a_disruption_budget(chart: Rendered) -> None:
    from tests.deploy.netpol import selects

    for service in SERVICES:
        labels = chart.deployment(service)["spec"]["template"]["metadata"]["labels"]
        budgets = [
            pdb
            for pdb in chart.of_kind("PodDisruptionBudget")
            if selects(pdb["spec"]["selector"], labels)
        ]
        assert len(budgets) == 1, service
        assert (
            budgets[0]["spec"].get("maxUnavailable", 0) >= 1
            or budgets[0]["spec"].get("minAvailable") is not None
        )


def test_migrations_run_before_install_and_upgrade_as_compose_runs_them(chart: Rendered) -> None:
    from tests.support.deploy import load_yaml

    (job,) = chart.of_kind("Job")
    assert set(job["metadata"]["annotations"]["helm.sh/hook"].split(",")) == {
        "pre-install",
        "pre-upgrade",
    }
    compose = load_yaml(REPO / "deploy" / "docker-compose.yml")
    assert container(job)["command"] == compose["services"]["migrate"]["command"]
    names = {entry["name"] for entry in container(job)["env"]}
    assert "DATABASE_URL" in names
    # a hook runs before the release's ConfigMap and ServiceAccount exist
    assert "envFrom" not in container(job)
    assert "serviceAccountName" not in pod_spec(job)


def test_the_sandbox_only_when_asked_for(default_chart: Rendered, sandbox_chart: Rendered) -> None:
    def components(rendered: Rendered) -> set[str]:
        return {
            obj["metadata"]["labels"]["app.kubernetes.io/component"]
            for obj in rendered.of_kind("Deployment")
        }

    assert components(default_chart) == set(SERVICES)
    assert components(sandbox_chart) == {*SERVICES, "sandbox"}
    assert sandbox_chart.settings()["PROVIDER_URL"] == "http://notifications-sandbox:8090/v1"
