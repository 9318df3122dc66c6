"""The rendered objects, checked against the LWS CRDs, Kubernetes' schemas and the sizing rules."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from domain.deployment import DeploymentSpec
from domain.presets import SUPPORTED_RESOURCE_TYPES, Preset, load_presets
from domain.records import Pvc
from domain.settings import ClusterConfig, Settings
from infra.engine_launch import ASCEND_PRELUDE, leader_script, run_section
from infra.manifests import (
    LWS_NAME_MAX_CHARS,
    WORKER_SCRIPT,
    Manifest,
    k8s_name,
    render_model,
    service_name,
)
from infra.sizing import (
    SizingError,
    check_memory,
    memory_available_gb,
    memory_required_gb,
    plan_parallelism,
)
from infra.weight_cache import CACHE_SCRIPT
from tests.conftest import register_body

LWS_FIXTURES = Path(__file__).parents[2].parent / "shared" / "fixtures" / "lws"
KUBERNETES_VERSIONS = ("1.28", "1.29", "1.30", "1.31")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
PRESETS = load_presets()
CASES = [(name, rt) for name in PRESETS for rt in SUPPORTED_RESOURCE_TYPES]
CLUSTERS = {
    "default": ClusterConfig(),
    "everything": ClusterConfig(
        namespace="inference",
        engine_image="registry.example/vllm:custom",
        scheduler_name="volcano",
        volcano_queue="llm",
        cache_pvc="sfs-turbo-cache",
        pod_monitor=True,
    ),
    "two-cards-per-node": ClusterConfig(max_accelerators_per_node=2, cache_pvc="sfs-turbo-cache"),
}
MODEL_ID = "d97051120764490daf846053e16d4f25"


def make_spec(preset: Preset, resource_type: str, **overrides: Any) -> DeploymentSpec:
    fields: dict[str, Any] = {
        "model_id": MODEL_ID,
        "name": preset.name,
        "type": preset.name,
        "resource_type": resource_type,
        "version": "1.0.0",
        "replicas": 2,
        "pvc": Pvc(name="release-models", path=preset.hf_repo),
        "generation": 1,
    }
    return DeploymentSpec(**(fields | overrides))


def register_json(**overrides: Any) -> str:
    """The walkthrough's register body as ``aif render`` reads it: JSON text."""
    return json.dumps(register_body(**overrides))


def by_kind(objects: list[Manifest]) -> dict[str, Manifest]:
    return {obj["kind"]: obj for obj in objects}


def templates(lws: Manifest) -> dict[str, Manifest]:
    lwt = lws["spec"]["leaderWorkerTemplate"]
    found = {"leader": lwt["leaderTemplate"]}
    if lwt["size"] > 1:
        found["worker"] = lwt["workerTemplate"]
    return found


def engine_args(lws: Manifest) -> list[str]:
    """The leader's vLLM arguments, from ``args`` or from the Ray launch script."""
    container = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
    if "args" in container:
        return list(container["args"])
    script: str = container["command"][-1]
    return script.split("exec ", 1)[1].split()


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# --- schemas -----------------------------------------------------------------------------------


def _no_unknown_fields(schema: Any) -> Any:
    """The CRD schema, refusing fields it does not declare (the API server would prune them)."""
    if isinstance(schema, dict):
        schema = {k: _no_unknown_fields(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_no_unknown_fields(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def lws_validators() -> dict[str, jsonschema.Draft7Validator]:
    return load_lws_validators()


def load_lws_validators() -> dict[str, jsonschema.Draft7Validator]:
    """A validator per LWS CRD fixture, by file name (the test skips without the fixtures)."""
    if not LWS_FIXTURES.is_dir():
        pytest.skip(f"LWS CRD fixtures not found at {LWS_FIXTURES}")
    validators = {}
    for path in sorted(LWS_FIXTURES.glob("*.yaml")):
        # The C loader: the CRDs are over a megabyte each.
        crd = next(d for d in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader) if d)
        (v1,) = (v for v in crd["spec"]["versions"] if v["name"] == "v1")
        schema = _no_unknown_fields(v1["schema"]["openAPIV3Schema"])
        validators[path.name] = jsonschema.Draft7Validator(schema)
    assert any("v0.8.0" in name for name in validators), "the v0.8.0 CRD is the contract"
    return validators


def as_pod(template: Manifest, name: str) -> Manifest:
    metadata = {"name": name, **copy.deepcopy(template.get("metadata", {}))}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


@pytest.mark.parametrize("cluster_name", list(CLUSTERS))
@pytest.mark.parametrize(("preset_name", "resource_type"), CASES)
def test_objects_validate_against_crds_and_kubernetes_schemas(
    preset_name: str,
    resource_type: str,
    cluster_name: str,
    lws_validators: dict[str, jsonschema.Draft7Validator],
) -> None:
    preset = PRESETS[preset_name]
    objects = by_kind(
        render_model(make_spec(preset, resource_type), preset, CLUSTERS[cluster_name])
    )
    lws = objects["LeaderWorkerSet"]
    for crd, validator in lws_validators.items():
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(lws)]
        assert not errors, f"{crd}: {errors}"
    checked = [objects["Service"]]
    checked += [as_pod(t, f"{role}-0") for role, t in templates(lws).items()]
    for version in KUBERNETES_VERSIONS:
        for obj in checked:
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("resource_type", SUPPORTED_RESOURCE_TYPES)
def test_quarantined_nodes_are_kept_off_by_every_pod_template_and_still_validate(
    resource_type: str, lws_validators: dict[str, jsonschema.Draft7Validator]
) -> None:
    preset = PRESETS["Qwen2.5-72B-Instruct"]
    cluster = CLUSTERS["two-cards-per-node"]
    lws = render_model(
        make_spec(preset, resource_type), preset, cluster, avoid_nodes={"npu-7", "npu-2"}
    )[0]

    found = templates(lws)
    assert set(found) == {"leader", "worker"}
    for template in found.values():
        required = template["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        assert required == {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "NotIn",
                 "values": ["npu-2", "npu-7"]}]}]
        }  # fmt: skip
        # A failed engine's log tail is its termination message: device errors are read there.
        (container,) = template["spec"]["containers"]
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    for crd, validator in lws_validators.items():
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(lws)]
        assert not errors, f"{crd}: {errors}"
    for version in KUBERNETES_VERSIONS:
        for role, template in found.items():
            kubernetes_validate.validate(as_pod(template, f"{role}-0"), version, strict=True)
    # No quarantined node: no affinity at all.
    plain = render_model(make_spec(preset, resource_type), preset, cluster)[0]
    assert all("affinity" not in t["spec"] for t in templates(plain).values())


def test_single_node_worker_template_is_the_products_empty_one() -> None:
    preset = PRESETS["DeepSeek-R1-Distill-Qwen-7B"]
    lws = render_model(make_spec(preset, "huawei.com/ascend-1980"), preset, ClusterConfig())[0]
    lwt = lws["spec"]["leaderWorkerTemplate"]
    assert lwt["size"] == 1
    assert lwt["workerTemplate"] == {"spec": {"containers": []}}
    assert lwt["restartPolicy"] == "RecreateGroupOnPodRestart"


# --- sizing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("preset_name", "resource_type"), CASES)
def test_every_preset_obeys_the_sizing_rules(preset_name: str, resource_type: str) -> None:
    preset = PRESETS[preset_name]
    par = plan_parallelism(preset, resource_type, ClusterConfig())
    assert preset.architecture.num_attention_heads % par.tensor_parallel == 0
    cards = preset.profile(resource_type).accelerators
    assert memory_required_gb(preset, cards) <= memory_available_gb(
        resource_type, cards, preset.vllm
    )
    lws = render_model(make_spec(preset, resource_type), preset, ClusterConfig())[0]
    args = engine_args(lws)
    assert flag(args, "--max-model-len") == str(preset.vllm.max_model_len)
    assert flag(args, "--tensor-parallel-size") == str(par.tensor_parallel)


@pytest.mark.parametrize(
    ("preset_name", "cards"),
    [
        ("DeepSeek-R1-Distill-Qwen-7B", 1),
        ("DeepSeek-R1-Distill-Llama-8B", 1),
        ("DeepSeek-R1-Distill-Qwen-14B", 2),
        ("DeepSeek-R1-Distill-Qwen-32B", 4),
        ("QwQ-32B", 4),
        ("Qwen2.5-32B-Instruct", 4),
        ("Qwen2.5-Coder-32B-Instruct", 4),
        ("DeepSeek-R1-Distill-Llama-70B", 4),
        ("Qwen2.5-72B-Instruct", 4),
    ],
)
def test_ascend_presets_use_the_documented_card_counts(preset_name: str, cards: int) -> None:
    assert PRESETS[preset_name].profile("huawei.com/ascend-1980").accelerators == cards


def test_a_large_model_splits_over_nodes_when_one_node_has_too_few_cards() -> None:
    preset = PRESETS["Qwen2.5-72B-Instruct"]
    cluster = ClusterConfig(max_accelerators_per_node=2)
    par = plan_parallelism(preset, "nvidia.com/gpu", cluster)
    assert (par.nodes, par.tensor_parallel, par.pipeline_parallel) == (2, 2, 2)

    lws = render_model(make_spec(preset, "nvidia.com/gpu"), preset, cluster)[0]
    lwt = lws["spec"]["leaderWorkerTemplate"]
    assert lwt["size"] == 2
    leader = lwt["leaderTemplate"]["spec"]["containers"][0]
    worker = lwt["workerTemplate"]["spec"]["containers"][0]
    assert leader["command"][:2] == ["bash", "-c"]
    assert "ray start --head" in leader["command"][2]
    args = engine_args(lws)
    assert flag(args, "--tensor-parallel-size") == "2"
    assert flag(args, "--pipeline-parallel-size") == "2"
    assert flag(args, "--distributed-executor-backend") == "ray"
    assert worker["command"] == ["bash", "-c", WORKER_SCRIPT]
    assert "LWS_LEADER_ADDRESS" in WORKER_SCRIPT
    assert "--block" in WORKER_SCRIPT
    for container in (leader, worker):
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert "readinessProbe" in leader
    assert "livenessProbe" in leader
    assert not any(key.endswith("Probe") for key in worker)
    assert "ports" not in worker


def test_a_profile_can_ask_for_several_nodes_itself() -> None:
    preset = PRESETS["DeepSeek-R1-Distill-Llama-70B"]
    profile = preset.profile("nvidia.com/gpu").model_copy(update={"accelerators": 8, "nodes": 2})
    wide = preset.model_copy(update={"resources": {"nvidia.com/gpu": profile}})
    par = plan_parallelism(wide, "nvidia.com/gpu", ClusterConfig())
    assert (par.nodes, par.accelerators_per_node, par.pipeline_parallel) == (2, 4, 2)


def test_tensor_parallel_that_does_not_divide_the_heads_is_refused() -> None:
    preset = PRESETS["Qwen2.5-72B-Instruct"]  # 64 heads
    profile = preset.profile("nvidia.com/gpu").model_copy(update={"accelerators": 6})
    odd = preset.model_copy(update={"resources": {"nvidia.com/gpu": profile}})
    with pytest.raises(SizingError, match="does not divide num_attention_heads=64"):
        plan_parallelism(odd, "nvidia.com/gpu", ClusterConfig())


def test_a_model_that_does_not_fit_its_cards_is_refused() -> None:
    preset = PRESETS["Qwen2.5-72B-Instruct"]
    profile = preset.profile("huawei.com/ascend-1980").model_copy(update={"accelerators": 1})
    small = preset.model_copy(update={"resources": {"huawei.com/ascend-1980": profile}})
    with pytest.raises(SizingError, match="needs"):
        check_memory(small, "huawei.com/ascend-1980")
    spec = make_spec(small, "huawei.com/ascend-1980")
    with pytest.raises(SizingError):
        render_model(spec, small, ClusterConfig())


def test_a_long_context_needs_room_for_its_kv_cache() -> None:
    preset = PRESETS["Qwen2.5-72B-Instruct"]
    long = preset.model_copy(
        update={"vllm": preset.vllm.model_copy(update={"max_model_len": 262144})}
    )
    with pytest.raises(SizingError, match="max_model_len=262144"):
        check_memory(long, "huawei.com/ascend-1980")


# --- names -------------------------------------------------------------------------------------


def test_name_follows_the_products_example() -> None:
    assert (
        k8s_name("DeepSeek-R1-Distill-Qwen-7B", MODEL_ID) == "deepseek-r1-distill-qwen-7b-d9705112"
    )


@pytest.mark.parametrize(
    "model_name",
    [
        "DeepSeek-R1-Distill-Qwen-7B",
        "Qwen2.5-72B-Instruct",
        "my_model.v2",
        "7B-chat",
        "A" * 63,
        "x",
        "Qwen2.5-Coder-32B-Instruct-with-a-very-long-suffix.and.dots_and_underscores",
        "---",
    ],
)
def test_names_are_dns_1035_labels_with_room_for_lws_suffixes(model_name: str) -> None:
    name = k8s_name(model_name, MODEL_ID)
    assert DNS_1035.match(name), name
    assert len(name) <= LWS_NAME_MAX_CHARS
    assert name.endswith("-d9705112")
    assert DNS_1035.match(service_name(name))
    assert len(service_name(name)) <= 63


def test_names_differ_by_id_and_work_with_ids_that_are_not_hex() -> None:
    a = k8s_name("Qwen2.5-72B-Instruct", MODEL_ID)
    b = k8s_name("Qwen2.5-72B-Instruct", "0" * 32)
    c = k8s_name("Qwen2.5-72B-Instruct", "Not_Hex!")
    assert len({a, b, c}) == 3
    assert DNS_1035.match(c)
    assert c == k8s_name("Qwen2.5-72B-Instruct", "Not_Hex!")


def test_service_is_not_named_like_lws_headless_service() -> None:
    preset = PRESETS["DeepSeek-R1-Distill-Qwen-7B"]
    objects = by_kind(render_model(make_spec(preset, "nvidia.com/gpu"), preset, ClusterConfig()))
    lws_name = objects["LeaderWorkerSet"]["metadata"]["name"]
    service = objects["Service"]
    assert service["metadata"]["name"] != lws_name
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == {
        "leaderworkerset.sigs.k8s.io/name": lws_name,
        "role": "leader",
    }
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": 8000, "protocol": "TCP"}
    ]
    leader_labels = objects["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]["leaderTemplate"][
        "metadata"
    ]["labels"]
    assert leader_labels["role"] == "leader"


# --- the product's template --------------------------------------------------------------------


def test_lws_follows_the_products_template() -> None:
    preset = PRESETS["DeepSeek-R1-Distill-Qwen-7B"]
    spec = make_spec(preset, "huawei.com/ascend-1980", pvc=Pvc(name="release-models", path="w/7b"))
    lws = render_model(spec, preset, ClusterConfig())[0]
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    assert lws["metadata"]["namespace"] == "aif-models"
    assert lws["metadata"]["labels"]["xds/version"] == "1.0.0"
    assert lws["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "aif"
    assert lws["metadata"]["labels"]["aif/model-id"] == MODEL_ID
    assert "pulumi.com/waitFor" not in lws["metadata"].get("annotations", {})
    assert lws["spec"]["replicas"] == 2
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
    assert (
        leader["metadata"]["labels"].items()
        >= {
            "xds/instanceType": "head",
            "xds/modelId": MODEL_ID,
            "xds/teGroupId": lws["metadata"]["name"],
            "xds/teGroupType": "DeepSeek-R1-Distill-Qwen-7B",
            "xds/version": "1.0.0",
        }.items()
    )
    pod = leader["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "ascend-vllm-arm64"
    assert container["image"] == preset.profile("huawei.com/ascend-1980").image
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {
        "HF_HUB_OFFLINE": "1",
        "INFER_MODE": "DEFAULT",
        "USE_MASKFREE_ATTN": "1",
        "MASKFREE_ATTN_THRESHOLD": "16384",
    }
    args = container["args"]
    assert flag(args, "--model") == "/workspace/deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    assert flag(args, "--served-model-name") == "DeepSeek-R1-Distill-Qwen-7B"
    assert flag(args, "--port") == "8000"
    for name in ("--max-num-seqs", "--max-num-batched-tokens", "--block-size"):
        assert name in args
    assert flag(args, "--gpu-memory-utilization") == "0.9"
    assert "--trust-remote-code" in args
    assert "--pipeline-parallel-size" not in args
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "64Gi", "huawei.com/ascend-1980": "1"},
        "limits": {"cpu": "8", "memory": "72Gi", "huawei.com/ascend-1980": "1"},
    }
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"] == {
        "name": "models",
        "mountPath": "/workspace/deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        "readOnly": True,
        "subPath": "w/7b",
    }
    assert mounts["dshm"]["mountPath"] == "/dev/shm"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "release-models"}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": 8000}
    startup = container["startupProbe"]
    # A model may load for a long time before liveness starts counting.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800


def test_missing_version_is_labelled_1_and_image_can_be_overridden() -> None:
    preset = PRESETS["QwQ-32B"]
    cluster = ClusterConfig(engine_image="registry.example/vllm:mine")
    lws = render_model(make_spec(preset, "nvidia.com/gpu", version=""), preset, cluster)[0]
    assert lws["metadata"]["labels"]["xds/version"] == "1"
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
    assert leader["metadata"]["labels"]["xds/version"] == "1"
    assert leader["spec"]["containers"][0]["image"] == "registry.example/vllm:mine"


def test_dollar_signs_reach_the_container_literally() -> None:
    preset = PRESETS["QwQ-32B"]
    spec = make_spec(preset, "nvidia.com/gpu", pvc=Pvc(name="models", path="a/$(HOME)"))
    cluster = ClusterConfig(cache_pvc="cache")
    lws = render_model(spec, preset, cluster)[0]
    pod = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]
    env = {e["name"]: e["value"] for e in pod["initContainers"][0]["env"]}
    assert env["AIF_CACHE_SOURCE"].endswith("a/$$(HOME)")


# --- optional parts ----------------------------------------------------------------------------


def test_optional_parts_are_absent_by_default() -> None:
    preset = PRESETS["Qwen2.5-72B-Instruct"]
    cluster = ClusterConfig(max_accelerators_per_node=2)
    objects = render_model(make_spec(preset, "nvidia.com/gpu"), preset, cluster)
    assert [o["kind"] for o in objects] == ["LeaderWorkerSet", "Service"]
    for template in templates(objects[0]).values():
        assert "annotations" not in template["metadata"]
        assert "schedulerName" not in template["spec"]
        assert "initContainers" not in template["spec"]
        assert {v["name"] for v in template["spec"]["volumes"]} == {"models", "dshm"}


def test_optional_parts_appear_when_configured() -> None:
    preset = PRESETS["Qwen2.5-72B-Instruct"]
    cluster = ClusterConfig(
        namespace="inference",
        scheduler_name="volcano",
        volcano_queue="llm",
        cache_pvc="sfs-turbo-cache",
        pod_monitor=True,
        max_accelerators_per_node=2,
    )
    spec = make_spec(preset, "nvidia.com/gpu")
    objects = render_model(spec, preset, cluster)
    assert [o["kind"] for o in objects] == ["LeaderWorkerSet", "Service", "PodMonitor"]
    assert {o["metadata"]["namespace"] for o in objects} == {"inference"}
    lws_name = objects[0]["metadata"]["name"]
    for template in templates(objects[0]).values():
        assert template["metadata"]["annotations"] == {"scheduling.volcano.sh/queue-name": "llm"}
        pod = template["spec"]
        assert pod["schedulerName"] == "volcano"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": "sfs-turbo-cache"}
        (init,) = pod["initContainers"]
        assert init["command"] == ["bash", "-c", CACHE_SCRIPT]
        env = {e["name"]: e["value"] for e in init["env"]}
        assert env["AIF_CACHE_SOURCE"].endswith(f"/{spec.pvc.path}")
        assert env["AIF_CACHE_TARGET"].endswith(f"/{spec.pvc.name}/{spec.pvc.path}")
        init_mounts = {m["name"]: m for m in init["volumeMounts"]}
        assert init_mounts["models"]["readOnly"] is True
        assert "subPath" not in init_mounts["models"]
        (engine,) = pod["containers"]
        weights = next(m for m in engine["volumeMounts"] if m["mountPath"].startswith("/workspace"))
        assert weights["name"] == "cache"
        assert weights["subPath"] == f"{spec.pvc.name}/{spec.pvc.path}"
        assert weights["readOnly"] is True
    monitor = objects[2]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "leaderworkerset.sigs.k8s.io/name": lws_name,
        "role": "leader",
    }
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "http", "path": "/metrics"}]


def test_cluster_config_from_settings() -> None:
    settings = Settings(
        namespace="llm",
        engine_image="registry.example/vllm:1",
        scheduler_name="volcano",
        volcano_queue="q1",
        cache_pvc="turbo",
        pod_monitor=True,
        max_accelerators_per_node=4,
    )
    assert settings.cluster == ClusterConfig(
        namespace="llm",
        engine_image="registry.example/vllm:1",
        scheduler_name="volcano",
        volcano_queue="q1",
        cache_pvc="turbo",
        pod_monitor=True,
        max_accelerators_per_node=4,
    )


# --- the pods' scripts -------------------------------------------------------------------------


ASCEND = "huawei.com/ascend-1980"
SCRIPTS = {
    "cache": CACHE_SCRIPT,
    "worker": WORKER_SCRIPT,
    "leader": leader_script(["--model", "/m"], 2),
    "ascend-prelude": ASCEND_PRELUDE,
    "ascend-single-node": run_section(ASCEND, ["-m"], nodes=1, leader=True)["command"][2],
    "ascend-worker": run_section(ASCEND, [], nodes=2, leader=False)["command"][2],
}


@pytest.mark.parametrize("script", list(SCRIPTS.values()), ids=list(SCRIPTS))
def test_scripts_are_valid_bash_without_kubelet_expansions(script: str) -> None:
    subprocess.run(["bash", "-n", "-c", script], check=True)
    assert "$(" not in script  # the kubelet would try to expand $(...) itself


# --- per accelerator -----------------------------------------------------------------------------


@pytest.mark.parametrize("preset_name", list(PRESETS))
def test_nvidia_renders_a_block_size_cuda_supports(preset_name: str) -> None:
    preset = PRESETS[preset_name]
    for cluster in CLUSTERS.values():
        lws = render_model(make_spec(preset, "nvidia.com/gpu"), preset, cluster)[0]
        assert int(flag(engine_args(lws), "--block-size")) <= 32
    ascend = render_model(make_spec(preset, ASCEND), preset, ClusterConfig())[0]
    assert flag(engine_args(ascend), "--block-size") == str(preset.vllm.block_size)


def test_single_node_ascend_sources_canns_environment_and_keeps_the_flags_as_args() -> None:
    preset = PRESETS["DeepSeek-R1-Distill-Qwen-7B"]
    lws = render_model(make_spec(preset, ASCEND), preset, ClusterConfig())[0]
    container = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
    bash, dash_c, script, dashes = container["command"]
    assert (bash, dash_c, dashes) == ("bash", "-c", "--")
    assert '. "$f"' in script and "ascend-toolkit/set_env.sh" in script
    assert script.rstrip().endswith('exec python3 -m vllm.entrypoints.openai.api_server "$@"')
    assert flag(container["args"], "--served-model-name") == preset.name
    nvidia = render_model(make_spec(preset, "nvidia.com/gpu"), preset, ClusterConfig())[0]
    gpu = nvidia["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
    assert gpu["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]


def test_multi_node_ascend_renders_vllm_ascends_ray_recipe() -> None:
    preset = PRESETS["Qwen2.5-72B-Instruct"]
    cluster = ClusterConfig(max_accelerators_per_node=2)
    lws = render_model(make_spec(preset, ASCEND), preset, cluster)[0]
    lwt = lws["spec"]["leaderWorkerTemplate"]
    assert lwt["size"] == 2
    for role in ("leaderTemplate", "workerTemplate"):
        (container,) = lwt[role]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES"]["value"] == "1"
        assert env["HCCL_IF_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        for name in ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME"):
            assert env[name]["value"] == "eth0"
        assert "ascend-toolkit/set_env.sh" in container["command"][2]
    script = lwt["leaderTemplate"]["spec"]["containers"][0]["command"][2]
    # The leader starts the API server only once both pods' Ray nodes have joined.
    assert (
        script.index("ray start --head")
        < script.index("ray.nodes()")
        < script.index("exec python3 -m vllm")
    )
    assert "ray.nodes()" in script and "' 2; do" in script
    args = engine_args(lws)
    assert flag(args, "--pipeline-parallel-size") == "2"
    assert "--enforce-eager" in args
    gpu = render_model(make_spec(preset, "nvidia.com/gpu"), preset, cluster)[0]
    gpu_env = gpu["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]["env"]
    assert "HCCL_IF_IP" not in {e["name"] for e in gpu_env}
    assert "--enforce-eager" not in engine_args(gpu)


def test_one_slow_health_check_does_not_recreate_a_group() -> None:
    preset = PRESETS["QwQ-32B"]
    lws = render_model(make_spec(preset, ASCEND), preset, ClusterConfig())[0]
    container = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 120
    assert live["failureThreshold"] >= 3 and live["timeoutSeconds"] >= 10


def test_card_memory_comes_from_the_preset() -> None:
    preset = PRESETS["DeepSeek-R1-Distill-Llama-70B"]
    profile = preset.profile("nvidia.com/gpu")
    assert profile.accelerator_memory_gb == 80
    small_cards = profile.model_copy(update={"accelerator_memory_gb": 40})
    on_40gb = preset.model_copy(update={"resources": {"nvidia.com/gpu": small_cards}})
    with pytest.raises(SizingError, match="of 40 GB: needs"):
        check_memory(on_40gb, "nvidia.com/gpu")
