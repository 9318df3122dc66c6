"""The ModelDeployment component under Pulumi's mocks: its children, their parent, its outputs."""

from __future__ import annotations

import asyncio
from typing import Any

import pulumi
import pytest
from pulumi.runtime import MockCallArgs, MockResourceArgs

from domain.deployment import DeploymentSpec
from domain.presets import SUPPORTED_RESOURCE_TYPES, load_presets
from domain.records import Pvc
from domain.settings import ClusterConfig
from infra.manifests import k8s_name, service_name
from infra.model_deployment import COMPONENT_TYPE, ModelDeployment, ModelDeploymentArgs

FAKE_CLUSTER_IP = "10.96.0.42"
LWS_TYPE = "kubernetes:leaderworkerset.x-k8s.io/v1:LeaderWorkerSet"
SERVICE_TYPE = "kubernetes:core/v1:Service"
POD_MONITOR_TYPE = "kubernetes:monitoring.coreos.com/v1:PodMonitor"
MODEL_ID = "d97051120764490daf846053e16d4f25"
CASES = [(name, rt) for name in load_presets() for rt in SUPPORTED_RESOURCE_TYPES]


class ClusterMocks(pulumi.runtime.Mocks):
    """Echoes inputs as outputs, as the API server would, and gives Services a cluster IP."""

    def __init__(self) -> None:
        self.created: dict[str, MockResourceArgs] = {}

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
        if args.typ != COMPONENT_TYPE:
            self.created[args.typ] = args
        outputs = dict(args.inputs)
        if args.typ == SERVICE_TYPE:
            outputs["spec"] = {**outputs["spec"], "clusterIP": FAKE_CLUSTER_IP}
        return f"{args.name}-id", outputs

    def call(self, args: MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        return {}, None


@pytest.fixture
def mocks(pulumi_loop: asyncio.AbstractEventLoop) -> ClusterMocks:
    """Fresh mocks on a fresh runtime (``pulumi_loop`` in conftest resets and cleans up)."""
    mocks = ClusterMocks()
    pulumi.runtime.set_mocks(mocks, preview=False)
    return mocks


def parent_type(urn: str) -> str:
    """The parent's type in a URN (``urn:pulumi:stack::project::parent$child::name``)."""
    qualified_type = urn.split("::")[2]
    return qualified_type.split("$")[-2]


def make_args(model_type: str, resource_type: str, **cluster: Any) -> ModelDeploymentArgs:
    preset = load_presets()[model_type]
    spec = DeploymentSpec(
        model_id=MODEL_ID,
        name=model_type,
        type=model_type,
        resource_type=resource_type,
        version="1.0.0",
        replicas=2,
        pvc=Pvc(name="release-models", path=preset.hf_repo),
        generation=3,
    )
    return ModelDeploymentArgs(spec, ClusterConfig(**cluster))


@pytest.mark.parametrize(("model_type", "resource_type"), CASES)
@pulumi.runtime.test
def test_component_creates_lws_and_service_under_itself(
    mocks: ClusterMocks, model_type: str, resource_type: str
) -> pulumi.Output[None]:
    component = ModelDeployment("model", make_args(model_type, resource_type))
    expected_lws = k8s_name(model_type, MODEL_ID)

    def check(values: list[Any]) -> None:
        component_urn, lws_urn, service_urn, lws_name, svc_name, cluster_ip, port = values
        assert set(mocks.created) == {LWS_TYPE, SERVICE_TYPE}
        assert component.pod_monitor is None
        for child in (lws_urn, service_urn):
            assert parent_type(child) == COMPONENT_TYPE, child
        assert component_urn.endswith(f"${COMPONENT_TYPE}::model")
        assert lws_name == expected_lws
        assert svc_name == service_name(expected_lws)
        assert cluster_ip == FAKE_CLUSTER_IP
        assert port == 8000

        lws = mocks.created[LWS_TYPE].inputs
        assert lws["metadata"]["name"] == expected_lws
        assert lws["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"
        assert lws["spec"]["replicas"] == 2
        assert lws["spec"]["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"
        service = mocks.created[SERVICE_TYPE].inputs
        assert service["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"
        assert service["spec"]["selector"]["leaderworkerset.sigs.k8s.io/name"] == expected_lws

    return pulumi.Output.all(
        component.urn,
        component.lws.urn,
        component.service.urn,
        component.lws_name,
        component.service_name,
        component.cluster_ip,
        component.port,
    ).apply(check)


@pytest.mark.parametrize("model_type", list(load_presets()))
@pulumi.runtime.test
def test_component_adds_a_pod_monitor_when_configured(
    mocks: ClusterMocks, model_type: str
) -> pulumi.Output[None]:
    args = make_args(model_type, "huawei.com/ascend-1980", pod_monitor=True, namespace="llm")
    component = ModelDeployment("monitored", args)
    assert component.pod_monitor is not None

    def check(urns: list[str]) -> None:
        *_, monitor_urn = urns
        assert set(mocks.created) == {LWS_TYPE, SERVICE_TYPE, POD_MONITOR_TYPE}
        assert parent_type(monitor_urn) == COMPONENT_TYPE
        monitor = mocks.created[POD_MONITOR_TYPE].inputs
        assert monitor["metadata"]["namespace"] == "llm"
        assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "http", "path": "/metrics"}]

    # Waiting on every child's URN: the check reads what the mocks have seen.
    children = (component.lws, component.service, component.pod_monitor)
    return pulumi.Output.all(*(child.urn for child in children)).apply(check)


@pulumi.runtime.test
def test_a_gang_scheduled_model_applies_volcano_pods_and_the_pod_groups_queue(
    mocks: ClusterMocks,
) -> pulumi.Output[None]:
    # The 70B model over nodes of 2 cards: a group of two pods, one PodGroup made by LWS.
    args = make_args(
        "DeepSeek-R1-Distill-Llama-70B",
        "huawei.com/ascend-1980",
        gang_scheduling="volcano",
        volcano_queue="llm",
        max_accelerators_per_node=2,
    )
    component = ModelDeployment("gang", args)

    def check(_: str) -> None:
        lws = mocks.created[LWS_TYPE].inputs
        annotations = lws["metadata"]["annotations"]
        assert annotations["scheduling.volcano.sh/queue-name"] == "llm"
        assert annotations["pulumi.com/skipAwait"] == "true"
        lwt = lws["spec"]["leaderWorkerTemplate"]
        assert lwt["size"] == 2
        for role in ("leaderTemplate", "workerTemplate"):
            assert lwt[role]["spec"]["schedulerName"] == "volcano", role

    return component.lws.urn.apply(check)
