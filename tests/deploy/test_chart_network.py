"""The NetworkPolicies let through exactly the connections the services make, and no
other: each source against each destination, by the Kubernetes semantics
(tests/deploy/netpol.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.deploy.chart import NAMESPACE, SERVICES, Rendered, render
from tests.deploy.netpol import Endpoint, allows

if TYPE_CHECKING:
    from pathlib import Path

#: Outside the release: (endpoint, port, protocol), placed where the values expect them.
DNS = (Endpoint("dns", "kube-system", {"k8s-app": "kube-dns"}), 53, "UDP")
POSTGRES = (Endpoint("postgres", NAMESPACE, {"cnpg.io/cluster": "notifications-db"}), 5432, "TCP")
GATEWAY_IP, SMTP_IP, OIDC_IP = "203.0.113.10", "198.51.100.25", "198.51.100.80"
INGRESS = Endpoint("ingress", "ingress-nginx", {"app": "ingress-nginx"})
PROMETHEUS = Endpoint("prometheus", "monitoring", {"app": "prometheus"})
NEIGHBOUR = Endpoint("neighbour", NAMESPACE, {"app": "something-else"})
INTERNAL_HOST = Endpoint("internal-host", ip="10.1.2.3")


def pod(rendered: Rendered, component: str) -> Endpoint:
    kind = "Job" if component == "migrations" else "Deployment"
    workload = rendered.component(kind, component)
    return Endpoint(component, NAMESPACE, workload["spec"]["template"]["metadata"]["labels"])


def destinations(rendered: Rendered, kafka_port: int) -> dict[str, tuple[Endpoint, int, str]]:
    ports = {service: int(rendered.settings()[f"{service.upper()}_PORT"]) for service in SERVICES}
    result = {
        "dns": DNS,
        "postgres": POSTGRES,
        "kafka": (
            Endpoint("kafka", "kafka", {"strimzi.io/cluster": "notifications"}),
            kafka_port,
            "TCP",
        ),
        "gateway": (Endpoint("gateway", ip=GATEWAY_IP), 443, "TCP"),
        "smtp": (Endpoint("smtp", ip=SMTP_IP), 587, "TCP"),
        "oidc": (Endpoint("oidc", ip=OIDC_IP), 443, "TCP"),
        "internal-host": (INTERNAL_HOST, 443, "TCP"),
        "neighbour": (NEIGHBOUR, 8080, "TCP"),
    }
    for service in SERVICES:
        result[service] = (pod(rendered, service), ports[service], "TCP")
    return result


def flows(rendered: Rendered, kafka_port: int) -> set[tuple[str, str]]:
    """Every (source, destination) pair with a pod of the release at one end that the
    policies let through (between two others, the policies of their owners decide)."""
    policies = rendered.of_kind("NetworkPolicy")
    targets = destinations(rendered, kafka_port)
    sources = {name: pod(rendered, name) for name in (*SERVICES, "migrations")}
    sources |= {"ingress": INGRESS, "prometheus": PROMETHEUS, "neighbour": NEIGHBOUR}
    return {
        (source_name, target_name)
        for source_name, source in sources.items()
        for target_name, (target, port, protocol) in targets.items()
        if source_name != target_name
        and (source_name in RELEASE_PODS or target_name in RELEASE_PODS)
        and allows(policies, source, target, port, protocol)
    }


RELEASE_PODS = {*SERVICES, "migrations"}
INFRA = {"dns", "postgres", "kafka"}
EXPECTED_PRODUCTION = {
    *(("api", dest) for dest in (*INFRA, "oidc", "reporter")),
    *(("scheduler", dest) for dest in INFRA),
    *(("dispatcher", dest) for dest in (*INFRA, "gateway")),
    *(("reporter", dest) for dest in (*INFRA, "smtp", "oidc")),
    ("migrations", "dns"),
    ("migrations", "postgres"),
    ("ingress", "api"),
    ("ingress", "reporter"),
    *(("prometheus", service) for service in SERVICES),
}


def test_production_allows_exactly_the_flows_the_services_use(production_chart: Rendered) -> None:
    assert flows(production_chart, kafka_port=9093) == EXPECTED_PRODUCTION


def test_defaults_allow_the_same_flows_without_a_provider_or_to_private_addresses(
    default_chart: Rendered,
) -> None:
    # No issuer: no one asks a provider. The default gateway peer is any public address
    # on 443, so the dispatcher reaches the provider's address too, and nothing private.
    expected = {flow for flow in EXPECTED_PRODUCTION if "oidc" not in flow}
    assert flows(default_chart, kafka_port=9092) == expected | {("dispatcher", "oidc")}


def test_with_the_sandbox_the_dispatchers_send_to_it_and_nowhere_else(
    sandbox_chart: Rendered,
) -> None:
    policies = sandbox_chart.of_kind("NetworkPolicy")
    dispatcher, sandbox = pod(sandbox_chart, "dispatcher"), pod(sandbox_chart, "sandbox")
    assert allows(policies, dispatcher, sandbox, 8090)
    assert not allows(policies, dispatcher, sandbox, 8091)
    assert not allows(policies, dispatcher, Endpoint("gateway", ip=GATEWAY_IP), 443)
    for other in ("api", "scheduler", "reporter"):
        assert not allows(policies, pod(sandbox_chart, other), sandbox, 8090)
    assert not allows(policies, sandbox, Endpoint("gateway", ip=GATEWAY_IP), 443)


def test_every_pod_of_the_release_is_isolated(chart: Rendered) -> None:
    (deny,) = [
        p for p in chart.of_kind("NetworkPolicy") if p["metadata"]["name"].endswith("default-deny")
    ]
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny["spec"]
    assert "egress" not in deny["spec"]
    from tests.deploy.netpol import selects

    for workload in chart.of_kind("Deployment") + chart.of_kind("Job"):
        assert selects(
            deny["spec"]["podSelector"], workload["spec"]["template"]["metadata"]["labels"]
        )


@pytest.mark.parametrize("destination", ["postgres", "kafka", "gateway", "dns"])
def test_an_empty_destination_is_refused_not_opened(helm: Path, destination: str) -> None:
    from tests.deploy.chart import helm_template

    result = helm_template(helm, sets=[f"networkPolicy.{destination}.to=null"], check=False)
    assert result.returncode != 0
    assert f"networkPolicy.{destination}.to is empty" in result.stderr


def test_policies_can_be_left_to_the_cluster(helm: Path) -> None:
    rendered: Any = render(helm, sets=["networkPolicy.enabled=false"])
    assert not rendered.of_kind("NetworkPolicy")
