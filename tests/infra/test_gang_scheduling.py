"""Gang scheduling with Volcano: the rendered objects, the PodGroup LWS makes of them, the install.

The LeaderWorkerSets are checked against the real LWS CRDs and the pods against Kubernetes'
schemas, gang scheduling on and off, for a single-node and a multi-node instance; the PodGroup
``aif render`` previews against a schema of Volcano's PodGroup (``schemas/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from domain.presets import load_presets
from domain.settings import ClusterConfig
from infra.gang_scheduling import POD_GROUP_API_VERSION, pod_group_preview
from infra.install import InstallConfigError
from infra.manifests import Manifest, render_model, render_spec_documents
from tests.infra.test_install_program import from_config, install, local_storage, stack_file
from tests.infra.test_manifests import (
    KUBERNETES_VERSIONS,
    as_pod,
    by_kind,
    load_lws_validators,
    make_spec,
    templates,
)

PRESETS = load_presets()
ASCEND = "huawei.com/ascend-1980"
QUEUE_ANNOTATION = "scheduling.volcano.sh/queue-name"
SCHEMAS = Path(__file__).parent / "schemas"
# (preset, cards one node offers, pods per instance): the 70B model's 4 cards over two nodes.
SINGLE_NODE = ("DeepSeek-R1-Distill-Qwen-7B", 8, 1)
MULTI_NODE = ("DeepSeek-R1-Distill-Llama-70B", 2, 2)
GANG = {"gang_scheduling": "volcano"}
DEVELOPMENT = {"enableLocalStorage": "true", "environment": "development"}


def cluster(cards_per_node: int, **settings: Any) -> ClusterConfig:
    return ClusterConfig(max_accelerators_per_node=cards_per_node, **settings)


def render(preset_name: str, config: ClusterConfig) -> dict[str, Manifest]:
    preset = PRESETS[preset_name]
    return by_kind(render_model(make_spec(preset, ASCEND), preset, config))


@pytest.fixture(scope="module")
def lws_schemas() -> dict[str, jsonschema.Draft7Validator]:
    validators = load_lws_validators()
    assert len(validators) >= 2, "v0.8.0 and v0.10"
    return validators


@pytest.fixture(scope="module")
def pod_group_schema() -> jsonschema.Draft7Validator:
    schema = yaml.safe_load((SCHEMAS / "volcano-podgroup-v1beta1.yaml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator: jsonschema.Draft7Validator, obj: Manifest) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]


# --- the rendered objects ------------------------------------------------------------------------


def test_gang_scheduling_is_off_unless_asked_for() -> None:
    assert ClusterConfig().gang_scheduling == "none"


@pytest.mark.parametrize("gang", [False, True], ids=["off", "on"])
@pytest.mark.parametrize(("preset_name", "cards", "size"), [SINGLE_NODE, MULTI_NODE])
def test_groups_validate_against_the_lws_crds_with_gang_scheduling_on_and_off(
    preset_name: str,
    cards: int,
    size: int,
    gang: bool,
    lws_schemas: dict[str, jsonschema.Draft7Validator],
) -> None:
    objects = render(preset_name, cluster(cards, **(GANG if gang else {})))
    lws = objects["LeaderWorkerSet"]

    for crd, validator in lws_schemas.items():
        assert not schema_errors(validator, lws), crd
    pods = {role: as_pod(t, f"{role}-0") for role, t in templates(lws).items()}
    for version in KUBERNETES_VERSIONS:
        for pod in pods.values():
            kubernetes_validate.validate(pod, version, strict=True)
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == size
    assert set(pods) == ({"leader", "worker"} if size > 1 else {"leader"})
    # minMember is the group size only while workers start with their leader.
    assert lws["spec"]["startupPolicy"] == "LeaderCreated"
    schedulers = {role: pod["spec"].get("schedulerName") for role, pod in pods.items()}
    annotations = lws["metadata"]["annotations"]
    if gang:
        assert set(schedulers.values()) == {"volcano"}
        assert annotations[QUEUE_ANNOTATION] == "default"
    else:
        assert set(schedulers.values()) == {None}
        assert QUEUE_ANNOTATION not in annotations


def test_the_queue_and_a_scheduler_name_of_the_cluster_are_kept() -> None:
    config = cluster(2, scheduler_name="volcano-npu", volcano_queue="llm", **GANG)
    lws = render(MULTI_NODE[0], config)["LeaderWorkerSet"]

    assert lws["metadata"]["annotations"][QUEUE_ANNOTATION] == "llm"
    for template in templates(lws).values():
        assert template["spec"]["schedulerName"] == "volcano-npu"
        # The pods' own queue annotation is the one aif:volcanoQueue always gave.
        assert template["metadata"]["annotations"] == {QUEUE_ANNOTATION: "llm"}


# --- the PodGroup LWS creates per group ----------------------------------------------------------


def test_a_multi_node_group_is_one_pod_group_of_all_its_pods_and_cards(
    pod_group_schema: jsonschema.Draft7Validator,
) -> None:
    name, cards, size = MULTI_NODE
    config = cluster(cards, volcano_queue="llm", **GANG)
    lws = render(name, config)["LeaderWorkerSet"]

    pod_group = pod_group_preview(lws, config)

    assert pod_group is not None
    assert not schema_errors(pod_group_schema, pod_group)
    assert pod_group["apiVersion"] == POD_GROUP_API_VERSION
    # Two pods of 2 cards, 4 CPUs and 256Gi each (the preset's requests per pod).
    assert pod_group["spec"] == {
        "minMember": size,
        "minResources": {"cpu": "8", "memory": "512Gi", ASCEND: "4"},
        "queue": "llm",
    }


def test_a_single_node_group_is_a_pod_group_of_one(
    pod_group_schema: jsonschema.Draft7Validator,
) -> None:
    name, cards, _ = SINGLE_NODE
    config = cluster(cards, **GANG)
    lws = render(name, config)["LeaderWorkerSet"]

    pod_group = pod_group_preview(lws, config)

    assert pod_group is not None
    assert not schema_errors(pod_group_schema, pod_group)
    profile = PRESETS[name].profile(ASCEND)
    assert pod_group["spec"] == {
        "minMember": 1,
        "minResources": {
            "cpu": profile.cpu_request,
            "memory": profile.memory_request,
            ASCEND: str(profile.accelerators),
        },
        "queue": "default",
    }


def test_no_pod_group_without_gang_scheduling() -> None:
    name, cards, _ = MULTI_NODE
    config = cluster(cards)

    assert pod_group_preview(render(name, config)["LeaderWorkerSet"], config) is None


def _pod(requests: list[dict[str, str]], init: list[dict[str, str]] | None = None) -> Manifest:
    spec: Manifest = {"containers": [{"resources": {"requests": r}} for r in requests]}
    if init:
        spec["initContainers"] = [{"resources": {"requests": r}} for r in init]
    return {"spec": spec}


def test_group_resources_are_counted_as_kubernetes_counts_a_pods_requests() -> None:
    leader = _pod(
        [{"cpu": "500m", "memory": "1Gi"}, {"cpu": "1500m", "memory": "512Mi"}],
        init=[{"cpu": "4", "memory": "1Gi"}],  # more CPU than the containers: it counts
    )
    worker = _pod([{"cpu": "250m", "memory": "2Gi", "nvidia.com/gpu": "8"}])
    lws = {
        "metadata": {"namespace": "llm", "annotations": {QUEUE_ANNOTATION: "q"}},
        "spec": {
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {"size": 3, "leaderTemplate": leader, "workerTemplate": worker},
        },
    }

    pod_group = pod_group_preview(lws, ClusterConfig(**GANG))

    assert pod_group is not None
    assert pod_group["spec"]["minMember"] == 3
    # cpu: max(0.5 + 1.5, 4) + 2 * 0.25; memory: 1.5Gi + 2 * 2Gi in plain bytes (mixed units).
    assert pod_group["spec"]["minResources"] == {
        "cpu": "4500m",
        "memory": str(int(5.5 * 2**30)),
        "nvidia.com/gpu": "16",
    }


# --- aif render ----------------------------------------------------------------------------------


def _commented_pod_group(text: str) -> Manifest:
    lines = [line.removeprefix("# ") for line in text.splitlines() if line.startswith("# ")]
    start = lines.index(f"apiVersion: {POD_GROUP_API_VERSION}")
    found: Manifest = yaml.safe_load("\n".join(lines[start:]))
    return found


@pytest.mark.parametrize(("preset_name", "cards", "size"), [SINGLE_NODE, MULTI_NODE])
def test_aif_render_shows_the_pod_group_as_a_comment_when_gang_scheduled(
    preset_name: str, cards: int, size: int, pod_group_schema: jsonschema.Draft7Validator
) -> None:
    config = cluster(cards, **GANG)
    preset = PRESETS[preset_name]
    spec = make_spec(preset, ASCEND)

    text = render_spec_documents(spec, config)

    # The comment is no document: what is applied is exactly render_model's objects.
    assert list(yaml.safe_load_all(text)) == render_model(spec, preset, config)
    pod_group = _commented_pod_group(text)
    assert not schema_errors(pod_group_schema, pod_group)
    assert pod_group["spec"]["minMember"] == size
    lws_name = render_model(spec, preset, config)[0]["metadata"]["name"]
    assert f"# scheduling.k8s.io/group-name: {lws_name}-<group index>-<revision>." in text


def test_aif_render_shows_no_pod_group_without_gang_scheduling() -> None:
    name, cards, _ = MULTI_NODE
    preset = PRESETS[name]

    text = render_spec_documents(make_spec(preset, ASCEND), cluster(cards))

    assert "PodGroup" not in text
    assert "schedulerName" not in text


# --- the install program -------------------------------------------------------------------------


@pytest.mark.usefixtures("pulumi_loop")
def test_the_install_reads_gang_scheduling_and_hands_it_to_the_roles() -> None:
    config = from_config({**DEVELOPMENT, "gangScheduling": "volcano", "volcanoQueue": "llm"}, [])

    assert config.cluster.gang_scheduling == "volcano"
    assert config.cluster.volcano_queue == "llm"
    installed = install(config)
    [config_map] = installed.of_type("kubernetes:core/v1:ConfigMap")
    assert config_map["data"]["AIF_GANG_SCHEDULING"] == "volcano"
    assert config_map["data"]["AIF_VOLCANO_QUEUE"] == "llm"


@pytest.mark.usefixtures("pulumi_loop")
def test_the_install_without_the_key_does_not_gang_schedule() -> None:
    installed = install(local_storage())

    [config_map] = installed.of_type("kubernetes:core/v1:ConfigMap")
    assert config_map["data"]["AIF_GANG_SCHEDULING"] == "none"


@pytest.mark.usefixtures("pulumi_loop")
def test_an_unknown_gang_scheduler_is_refused_with_its_key() -> None:
    with pytest.raises(InstallConfigError, match=r"aif:gangScheduling") as refused:
        from_config({**DEVELOPMENT, "gangScheduling": "kueue"}, [])
    assert "gang_scheduling\n  Input should be 'none' or 'volcano'" in str(refused.value)


def test_the_prod_stack_file_gang_schedules_on_volcano() -> None:
    values = stack_file("prod")

    assert values["gangScheduling"] == "volcano"
    assert values["schedulerName"] == "volcano"
    assert ClusterConfig(gang_scheduling=values["gangScheduling"]).gang_scheduling == "volcano"
