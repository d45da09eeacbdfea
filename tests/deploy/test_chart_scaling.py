"""The dispatchers scale: KEDA on the lag of the consumer groups the dispatcher really
uses (message.send and each retry tier), or an HPA on CPU without KEDA, never both, and
never above the partition count."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from shared.topics import Topics
from tests.deploy.chart import Rendered, environment, render, secret_refs

if TYPE_CHECKING:
    from pathlib import Path


def dispatcher_groups(rendered: Rendered) -> set[tuple[str, str]]:
    """(topic, consumer group) of each dispatcher subscription, as
    services/dispatcher/handlers.py names them, for the rendered settings."""
    settings = rendered.settings()
    topics = Topics(
        prefix=settings["KAFKA_TOPIC_PREFIX"],
        retry_tiers=len(settings["RETRY_DELAYS_S"].split(",")),
    )
    return {(topics.message_send, topics.group("dispatcher"))} | {
        (topics.message_send_retry(tier), topics.group(f"dispatcher-retry-{tier}"))
        for tier in range(1, topics.retry_tiers + 1)
    }


@pytest.mark.parametrize("which", ["default", "production"])
def test_keda_scales_the_dispatchers_on_their_consumer_lag(
    which: str, request: pytest.FixtureRequest
) -> None:
    rendered: Rendered = request.getfixturevalue(f"{which}_chart")
    (scaled,) = rendered.of_kind("ScaledObject")
    assert not rendered.of_kind("HorizontalPodAutoscaler")
    target = scaled["spec"]["scaleTargetRef"]
    dispatcher = rendered.deployment("dispatcher")
    assert (target["kind"], target["name"]) == ("Deployment", dispatcher["metadata"]["name"])
    # the scaler owns the replica count: an upgrade must not reset it
    assert "replicas" not in dispatcher["spec"]
    triggers = scaled["spec"]["triggers"]
    assert {trigger["type"] for trigger in triggers} == {"kafka"}
    pairs = {(t["metadata"]["topic"], t["metadata"]["consumerGroup"]) for t in triggers}
    assert pairs == dispatcher_groups(rendered)
    bootstrap = rendered.settings()["KAFKA_BOOTSTRAP"]
    assert {t["metadata"]["bootstrapServers"] for t in triggers} == {bootstrap}
    partitions = int(rendered.settings()["KAFKA_PARTITIONS"])
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= partitions


def test_the_replicas_are_capped_at_the_partitions(helm: Path) -> None:
    rendered = render(helm, sets=["kafka.partitions=4", "autoscaling.maxReplicas=50"])
    (scaled,) = rendered.of_kind("ScaledObject")
    assert scaled["spec"]["maxReplicaCount"] == 4
    hpa_rendered = render(
        helm, sets=["kafka.partitions=4", "autoscaling.maxReplicas=50", "autoscaling.mode=hpa"]
    )
    (hpa,) = hpa_rendered.of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["maxReplicas"] == 4


def test_without_keda_an_hpa_scales_on_cpu(sandbox_chart: Rendered) -> None:
    assert not sandbox_chart.of_kind("ScaledObject")
    (hpa,) = sandbox_chart.of_kind("HorizontalPodAutoscaler")
    assert (
        hpa["spec"]["scaleTargetRef"]["name"]
        == sandbox_chart.deployment("dispatcher")["metadata"]["name"]
    )
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["spec"]["maxReplicas"] <= int(sandbox_chart.settings()["KAFKA_PARTITIONS"])


def test_without_autoscaling_the_replicas_are_fixed(helm: Path) -> None:
    rendered = render(helm, sets=["autoscaling.enabled=false", "services.dispatcher.replicas=3"])
    assert not rendered.of_kind("ScaledObject")
    assert not rendered.of_kind("HorizontalPodAutoscaler")
    assert rendered.deployment("dispatcher")["spec"]["replicas"] == 3


def test_keda_logs_in_to_kafka_as_the_dispatchers_do(production_chart: Rendered) -> None:
    (scaled,) = production_chart.of_kind("ScaledObject")
    (auth,) = production_chart.of_kind("TriggerAuthentication")
    dispatcher = production_chart.deployment("dispatcher")
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        assert trigger["metadata"]["sasl"] == "scram_sha512"
        assert trigger["metadata"]["tls"] == "enable"
    secrets = {
        ref["parameter"]: (ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]
    }
    assert secrets["password"] == secret_refs(dispatcher)["KAFKA_SASL_PASSWORD"]
    ca_volume = next(
        v for v in dispatcher["spec"]["template"]["spec"]["volumes"] if v["name"] == "kafka-ca"
    )
    assert secrets["ca"] == (
        ca_volume["secret"]["secretName"],
        ca_volume["secret"]["items"][0]["key"],
    )
    (username,) = auth["spec"]["env"]
    assert username["name"] in environment(dispatcher, production_chart)
    assert (
        username["containerName"] == dispatcher["spec"]["template"]["spec"]["containers"][0]["name"]
    )
