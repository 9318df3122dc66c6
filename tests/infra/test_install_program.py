"""The install program of aif (``infra/install/``) under Pulumi's mocks.

Every test builds a whole installation from an :class:`InstallConfig`, lets the mock monitor
record what would be registered, and checks those objects as the API server would get them.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from domain.settings import ClusterConfig
from infra.install import (
    CHAT_EXECUTOR_SERVICE_NAME,
    EXECUTOR_SERVICE_ACCOUNT,
    FRONTEND_SERVICE_ACCOUNT,
    FRONTEND_SERVICE_NAME,
    NODE_READER_ROLE,
    NODE_TAINTER_ROLE,
    SCALER_SERVICE_NAME,
    SERVICE_ACCOUNT,
    InstallConfig,
    InstallConfigError,
    RoleReplicas,
    build_install,
    chat_executor_url,
    mongodb_service_url,
)

pytestmark = pytest.mark.usefixtures("pulumi_loop")

DDS_URL = "mongodb://rwuser:s3cret@192.168.0.12:8635/?authSource=admin"
ROLES = ("frontend", "model-job-executor", "chat-job-executor", "task-executor-manager")


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.created: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.created.append(args)
        state = dict(args.inputs)
        metadata = dict(state.get("metadata") or {})
        # Pulumi auto-names objects without a name, with a random suffix.
        metadata.setdefault("name", f"{args.name}-x1y2z3")
        state["metadata"] = metadata
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        return {}, []


class Installed:
    def __init__(self, created: list[pulumi.runtime.MockResourceArgs]) -> None:
        self.created = created

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r.inputs for r in self.created if r.typ == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        [found] = [r for r in self.of_type(kind) if r["metadata"].get("name") == name]
        return found

    def named(self, kind: str, resource_name: str) -> dict[str, Any]:
        [found] = [r.inputs for r in self.created if r.typ == kind and r.name == resource_name]
        return found

    @property
    def deployments(self) -> dict[str, dict[str, Any]]:
        return {d["metadata"]["name"]: d for d in self.of_type("kubernetes:apps/v1:Deployment")}


def install(config: InstallConfig) -> Installed:
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="aif", stack="test", preview=False)

    # The decorator awaits the returned output and every registration the program started.
    @pulumi.runtime.test
    def program() -> pulumi.Output[str]:
        return build_install(config).urn

    program()
    return Installed(mocks.created)


SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's wire marker of a secret value


def string_data(secret: dict[str, Any]) -> dict[str, str]:
    """A Secret's ``stringData`` as the mock monitor hands it over: marked secret, unwrapped."""
    data = secret["stringData"]
    assert SECRET_SIG in data, "the Secret's data must be a Pulumi secret"
    return dict(data["value"])


def local_storage(**overrides: Any) -> InstallConfig:
    return InstallConfig(enable_local_storage=True, environment="development", **overrides)


def test_local_storage_runs_mongodb_in_the_cluster_and_points_aif_at_it() -> None:
    installed = install(local_storage(namespace="aif-system"))

    statefulset = installed.one("kubernetes:apps/v1:StatefulSet", "aif-mongodb")
    assert statefulset["spec"]["serviceName"] == "aif-mongodb"
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    headless = installed.one("kubernetes:core/v1:Service", "aif-mongodb")
    assert headless["spec"]["clusterIP"] == "None"
    [secret] = installed.of_type("kubernetes:core/v1:Secret")
    url = string_data(secret)["AIF_MONGODB_URL"]
    assert url == "mongodb://aif-mongodb.aif-system.svc.cluster.local:27017/"
    assert url == mongodb_service_url("aif-system")


def test_dds_needs_no_mongodb_and_the_secret_holds_its_url() -> None:
    installed = install(InstallConfig(mongodb_url=DDS_URL, pulumi_passphrase="p" * 32))

    assert installed.of_type("kubernetes:apps/v1:StatefulSet") == []
    [secret] = installed.of_type("kubernetes:core/v1:Secret")
    assert string_data(secret) == {"AIF_MONGODB_URL": DDS_URL, "AIF_PULUMI_PASSPHRASE": "p" * 32}
    [config_map] = installed.of_type("kubernetes:core/v1:ConfigMap")
    assert "AIF_MONGODB_URL" not in config_map["data"]
    assert "AIF_PULUMI_PASSPHRASE" not in config_map["data"]


def test_without_local_storage_a_mongodb_url_is_required() -> None:
    with pytest.raises(InstallConfigError, match=r"aif:mongodbUrl is required"):
        InstallConfig(enable_local_storage=False, pulumi_passphrase="p" * 32)


def test_production_requires_a_passphrase_of_its_own() -> None:
    with pytest.raises(InstallConfigError, match=r"aif:pulumiPassphrase is required"):
        InstallConfig(mongodb_url=DDS_URL)


def test_several_executors_need_a_shared_backend() -> None:
    with pytest.raises(InstallConfigError, match=r"aif:pulumiBackendUrl is required"):
        local_storage(replicas=RoleReplicas(model_job_executor=2))


def test_four_deployments_of_one_image_run_the_four_roles() -> None:
    installed = install(local_storage(image="registry.example/aif:1.2.3"))

    deployments = installed.deployments
    assert sorted(deployments) == sorted(ROLES)
    [config_map] = installed.of_type("kubernetes:core/v1:ConfigMap")
    [secret] = installed.of_type("kubernetes:core/v1:Secret")
    for role, deployment in deployments.items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "registry.example/aif:1.2.3"
        assert container["command"] == ["aif", role]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        sources = container["envFrom"]
        assert {"configMapRef": {"name": "aif-config-x1y2z3"}} in sources
        assert {"secretRef": {"name": "aif-secrets-x1y2z3"}} in sources
    assert config_map["metadata"].get("name") is None  # auto-named: a change rolls the pods
    assert secret["metadata"].get("name") is None


def test_roles_listen_on_all_interfaces_and_drive_kubernetes() -> None:
    installed = install(
        local_storage(cluster=ClusterConfig(namespace="llm", scheduler_name="volcano"))
    )

    [config_map] = installed.of_type("kubernetes:core/v1:ConfigMap")
    data = config_map["data"]
    assert data["AIF_HOST"] == "0.0.0.0"
    assert data["AIF_PORT"] == "8080"
    assert data["AIF_RUNTIME"] == "kubernetes"
    assert data["AIF_NAMESPACE"] == "llm"
    assert data["AIF_SCHEDULER_NAME"] == "volcano"


def test_replicas_per_role() -> None:
    replicas = RoleReplicas(frontend=3, chat_job_executor=2, task_executor_manager=0)
    installed = install(local_storage(replicas=replicas))

    counts = {name: d["spec"]["replicas"] for name, d in installed.deployments.items()}
    assert counts == {
        "frontend": 3,
        "model-job-executor": 1,
        "chat-job-executor": 2,
        "task-executor-manager": 0,
    }


def test_the_frontend_is_behind_a_cluster_ip_service_named_frontend_service() -> None:
    installed = install(local_storage())

    service = installed.one("kubernetes:core/v1:Service", FRONTEND_SERVICE_NAME)
    assert service["spec"]["type"] == "ClusterIP"
    [port] = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (80, 8080)
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "frontend"
    frontend = installed.deployments["frontend"]
    labels = frontend["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_the_executor_keeps_file_state_on_a_volume_without_a_backend_url() -> None:
    installed = install(local_storage())

    claim = installed.one("kubernetes:core/v1:PersistentVolumeClaim", "aif-pulumi-state")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    executor = installed.deployments["model-job-executor"]
    assert executor["spec"]["strategy"]["type"] == "Recreate"
    [volume] = executor["spec"]["template"]["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == "aif-pulumi-state"


def test_an_s3_backend_needs_no_state_volume_and_gets_its_credentials() -> None:
    installed = install(
        local_storage(
            pulumi_backend_url="s3://aif-state?endpoint=obs.cn-north-4.myhuaweicloud.com",
            backend_credentials_secret="obs-credentials",
        )
    )

    assert installed.of_type("kubernetes:core/v1:PersistentVolumeClaim") == []
    [config_map] = installed.of_type("kubernetes:core/v1:ConfigMap")
    assert config_map["data"]["AIF_PULUMI_BACKEND_URL"].startswith("s3://aif-state")
    [container] = installed.deployments["model-job-executor"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert {"secretRef": {"name": "obs-credentials"}} in container["envFrom"]
    [frontend] = installed.deployments["frontend"]["spec"]["template"]["spec"]["containers"]
    assert {"secretRef": {"name": "obs-credentials"}} not in frontend["envFrom"]


def granted(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                found.setdefault((group, resource), set()).update(rule["verbs"])
    return found


ROLE = "kubernetes:rbac.authorization.k8s.io/v1:Role"


def test_rbac_covers_exactly_what_aif_touches() -> None:
    installed = install(local_storage(cluster=ClusterConfig(namespace="llm")))

    roles = {r["metadata"]["namespace"]: r for r in installed.of_type(ROLE)}
    assert set(roles) == {"llm", "kube-system"}
    role = roles["llm"]
    # In its own namespace, the executor may only look up a pod by name: a lock's holder.
    assert roles["kube-system"]["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
    ]

    namespaced = granted(role["rules"])
    assert set(namespaced) == {
        ("leaderworkerset.x-k8s.io", "leaderworkersets"),
        ("", "services"),
        ("", "persistentvolumeclaims"),
        ("", "pods"),
        ("", "events"),
        ("monitoring.coreos.com", "podmonitors"),
    }
    read = {"get", "list", "watch"}
    for resource in ("persistentvolumeclaims", "events"):
        assert namespaced[("", resource)] == read
    # Pods are deleted too: a group on a quarantined node is made again elsewhere.
    assert namespaced[("", "pods")] == {*read, "delete"}
    assert "create" in namespaced[("leaderworkerset.x-k8s.io", "leaderworkersets")]
    for rule in role["rules"]:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]

    bindings = installed.of_type("kubernetes:rbac.authorization.k8s.io/v1:RoleBinding")
    assert {b["roleRef"]["name"] for b in bindings} == {
        r["metadata"]["name"] for r in roles.values()
    }
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": EXECUTOR_SERVICE_ACCOUNT, "namespace": "kube-system"}
        ]


CLUSTER_ROLE = "kubernetes:rbac.authorization.k8s.io/v1:ClusterRole"
CLUSTER_BINDING = "kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding"


def test_the_inventory_reads_nodes_and_pods_cluster_wide_and_writes_nothing() -> None:
    installed = install(local_storage(namespace="aif-system"))

    [reader] = installed.of_type(CLUSTER_ROLE)
    assert reader["metadata"]["name"] == NODE_READER_ROLE
    assert granted(reader["rules"]) == {
        ("", "nodes"): {"get", "list", "watch"},
        ("", "pods"): {"get", "list", "watch"},
    }
    [binding] = installed.of_type(CLUSTER_BINDING)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NODE_READER_ROLE
    }  # fmt: skip
    assert sorted(binding["subjects"], key=lambda s: s["name"]) == [
        {"kind": "ServiceAccount", "name": FRONTEND_SERVICE_ACCOUNT, "namespace": "aif-system"},
        {"kind": "ServiceAccount", "name": EXECUTOR_SERVICE_ACCOUNT, "namespace": "aif-system"},
    ]
    # Namespaced roles still grant nothing on nodes or endpoint slices.
    resources = {
        resource for role in installed.of_type(ROLE) for _, resource in granted(role["rules"])
    }
    assert resources.isdisjoint({"nodes", "endpointslices", "endpoints"})
    [config_map] = installed.of_type("kubernetes:core/v1:ConfigMap")
    assert "AIF_TAINT_FAULTY_NODES" not in config_map["data"]


def test_tainting_faulty_nodes_grants_the_executor_patch_on_nodes_only() -> None:
    installed = install(local_storage(taint_faulty_nodes=True))

    roles = {r["metadata"]["name"]: r for r in installed.of_type(CLUSTER_ROLE)}
    assert set(roles) == {NODE_READER_ROLE, NODE_TAINTER_ROLE}
    assert granted(roles[NODE_TAINTER_ROLE]["rules"]) == {("", "nodes"): {"patch"}}
    bindings = {b["roleRef"]["name"]: b for b in installed.of_type(CLUSTER_BINDING)}
    assert bindings[NODE_TAINTER_ROLE]["subjects"] == [
        {"kind": "ServiceAccount", "name": EXECUTOR_SERVICE_ACCOUNT, "namespace": "kube-system"}
    ]
    [config_map] = installed.of_type("kubernetes:core/v1:ConfigMap")
    assert config_map["data"]["AIF_TAINT_FAULTY_NODES"] == "true"


def pod_spec(installed: Installed, role: str) -> dict[str, Any]:
    spec: dict[str, Any] = installed.deployments[role]["spec"]["template"]["spec"]
    return spec


def test_only_roles_that_read_the_cluster_get_a_token() -> None:
    installed = install(local_storage())

    def token(role: str) -> bool:
        return bool(pod_spec(installed, role)["automountServiceAccountToken"])

    # The frontend reads the nodes' cards for /v1/accelerators, with an account of its own.
    assert pod_spec(installed, "frontend")["serviceAccountName"] == FRONTEND_SERVICE_ACCOUNT
    assert token("frontend") is True
    assert token("chat-job-executor") is False
    assert token("task-executor-manager") is False
    assert pod_spec(installed, "model-job-executor")["serviceAccountName"] == (
        EXECUTOR_SERVICE_ACCOUNT
    )
    assert token("model-job-executor") is True


def test_only_the_executor_and_the_frontend_hold_a_token_and_an_account_with_grants() -> None:
    installed = install(local_storage())

    with_token = {
        role for role in ROLES if pod_spec(installed, role)["automountServiceAccountToken"]
    }
    assert with_token == {"model-job-executor", "frontend"}
    accounts = {role: pod_spec(installed, role)["serviceAccountName"] for role in ROLES}
    assert accounts == {
        "frontend": FRONTEND_SERVICE_ACCOUNT,
        "model-job-executor": EXECUTOR_SERVICE_ACCOUNT,
        "chat-job-executor": SERVICE_ACCOUNT,
        "task-executor-manager": SERVICE_ACCOUNT,
    }
    # The account the other roles run as is bound to nothing and mounts no token by default.
    unprivileged = installed.one("kubernetes:core/v1:ServiceAccount", SERVICE_ACCOUNT)
    assert unprivileged["automountServiceAccountToken"] is False
    subjects = [
        subject["name"]
        for kind in ("RoleBinding", "ClusterRoleBinding")
        for binding in installed.of_type(f"kubernetes:rbac.authorization.k8s.io/v1:{kind}")
        for subject in binding["subjects"]
    ]
    assert set(subjects) == {EXECUTOR_SERVICE_ACCOUNT, FRONTEND_SERVICE_ACCOUNT}


def container(installed: Installed, role: str) -> dict[str, Any]:
    [found] = pod_spec(installed, role)["containers"]
    return dict(found)


def test_the_chat_job_executor_is_behind_its_own_service() -> None:
    installed = install(local_storage(namespace="aif-system"))

    service = installed.one("kubernetes:core/v1:Service", CHAT_EXECUTOR_SERVICE_NAME)
    assert service["metadata"]["namespace"] == "aif-system"
    assert service["spec"]["type"] == "ClusterIP"
    pod_labels = installed.deployments["chat-job-executor"]["spec"]["template"]["metadata"][
        "labels"
    ]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for other in ("frontend", "model-job-executor", "task-executor-manager"):
        labels = installed.deployments[other]["spec"]["template"]["metadata"]["labels"]
        assert not service["spec"]["selector"].items() <= labels.items(), other
    [port] = service["spec"]["ports"]
    [container_port] = container(installed, "chat-job-executor")["ports"]
    assert port["port"] == 8080
    assert port["targetPort"] in (container_port["containerPort"], container_port["name"])


def test_the_frontend_forwards_inference_to_the_chat_job_executor_service() -> None:
    installed = install(local_storage(namespace="aif-system"))

    service = installed.one("kubernetes:core/v1:Service", CHAT_EXECUTOR_SERVICE_NAME)
    env = {e["name"]: e["value"] for e in container(installed, "frontend").get("env", [])}
    url = urllib.parse.urlsplit(env["AIF_CHAT_EXECUTOR_URL"])
    assert url.scheme == "http"
    assert url.hostname is not None
    name, namespace, *_ = [*url.hostname.split("."), "", ""]
    assert (name, namespace) == (service["metadata"]["name"], service["metadata"]["namespace"])
    [port] = service["spec"]["ports"]
    assert url.port == port["port"]
    assert env["AIF_CHAT_EXECUTOR_URL"] == chat_executor_url("aif-system")
    # Only the frontend forwards: not the shared settings, not the other roles.
    [config_map] = installed.of_type("kubernetes:core/v1:ConfigMap")
    assert "AIF_CHAT_EXECUTOR_URL" not in config_map["data"]
    assert "env" not in container(installed, "model-job-executor")
    for role in ("chat-job-executor", "task-executor-manager"):
        assert "AIF_CHAT_EXECUTOR_URL" not in _env(installed, role), role


def test_the_chat_job_executor_reports_pressure_to_the_task_executor_manager_service() -> None:
    installed = install(local_storage(namespace="aif-system"))

    service = installed.one("kubernetes:core/v1:Service", SCALER_SERVICE_NAME)
    url = urllib.parse.urlsplit(_env(installed, "chat-job-executor")["AIF_SCALER_URL"])
    assert url.hostname == f"{SCALER_SERVICE_NAME}.aif-system.svc"
    assert (service["metadata"]["name"], service["metadata"]["namespace"]) == (
        SCALER_SERVICE_NAME, "aif-system",
    )  # fmt: skip
    manager_labels = installed.deployments["task-executor-manager"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= manager_labels["metadata"]["labels"].items()
    [port] = service["spec"]["ports"]
    assert url.port == port["port"] == 8080
    [config_map] = installed.of_type("kubernetes:core/v1:ConfigMap")
    assert "AIF_SCALER_URL" not in config_map["data"]


def _env(installed: Installed, role: str) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(installed, role).get("env") or []}


def test_the_task_executor_manager_reads_load_from_the_configured_prometheus() -> None:
    installed = install(local_storage(prometheus_url="http://prometheus.monitoring:9090"))
    env = _env(installed, "task-executor-manager")
    assert env == {"AIF_PROMETHEUS_URL": "http://prometheus.monitoring:9090"}
    [config_map] = installed.of_type("kubernetes:core/v1:ConfigMap")
    assert "AIF_PROMETHEUS_URL" not in config_map["data"]
    for role in ("frontend", "model-job-executor", "chat-job-executor"):
        assert "AIF_PROMETHEUS_URL" not in _env(installed, role), role


def test_without_prometheus_the_manager_reads_the_one_chat_job_executor() -> None:
    one = _env(install(local_storage(namespace="aif-system")), "task-executor-manager")
    assert json.loads(one["AIF_GATEWAY_METRICS_URLS"]) == [chat_executor_url("aif-system")]
    # Behind a Service, a scrape reaches one of several gateways: only Prometheus sums them.
    several = install(local_storage(replicas=RoleReplicas(chat_job_executor=2)))
    assert _env(several, "task-executor-manager") == {}


def test_frontends_need_a_chat_job_executor() -> None:
    with pytest.raises(InstallConfigError, match=r"chatJobExecutor must be at least 1"):
        local_storage(replicas=RoleReplicas(chat_job_executor=0))
    assert local_storage(replicas=RoleReplicas(frontend=0, chat_job_executor=0))


def test_at_most_one_task_executor_manager() -> None:
    with pytest.raises(InstallConfigError, match=r"taskExecutorManager must be 0 or 1"):
        local_storage(replicas=RoleReplicas(task_executor_manager=2))


def test_namespaces_are_created_except_shared_ones() -> None:
    in_kube_system = install(local_storage())
    names = {n["metadata"]["name"] for n in in_kube_system.of_type("kubernetes:core/v1:Namespace")}
    assert names == {"aif-models"}

    own = install(local_storage(namespace="aif-system", cluster=ClusterConfig(namespace="llm")))
    names = {n["metadata"]["name"] for n in own.of_type("kubernetes:core/v1:Namespace")}
    assert names == {"aif-system", "llm"}


def from_config(values: dict[str, str], secret_keys: list[str]) -> InstallConfig:
    pulumi.runtime.set_mocks(RecordingMocks(), project="aif", stack="test", preview=False)
    pulumi.runtime.set_all_config({f"aif:{k}": v for k, v in values.items()}, secret_keys)
    read: list[InstallConfig] = []

    # Run as a program: secret config values are outputs, resolved on the runtime's loop.
    @pulumi.runtime.test
    def program() -> None:
        read.append(InstallConfig.from_pulumi_config(pulumi.Config("aif")))

    try:
        program()
    finally:
        pulumi.runtime.set_all_config({}, [])
    return read[0]


def test_config_keys_are_read_from_the_stack() -> None:
    config = from_config(
        {
            "namespace": "aif-system",
            "image": "registry.example/aif:1.2.3",
            "enableLocalStorage": "false",
            "mongodbUrl": DDS_URL,
            "pulumiPassphrase": "p" * 32,
            "pulumiBackendUrl": "s3://aif-state",
            "schedulerName": "volcano",
            "volcanoQueue": "llm",
            "modelsNamespace": "llm",
            "replicas": '{"frontend": 2, "modelJobExecutor": 1}',
            "prometheusUrl": "http://prometheus.monitoring:9090",
            "taintFaultyNodes": "true",
        },
        ["aif:mongodbUrl", "aif:pulumiPassphrase"],
    )

    assert config.namespace == "aif-system"
    assert config.image == "registry.example/aif:1.2.3"
    assert config.enable_local_storage is False
    assert isinstance(config.mongodb_url, pulumi.Output)
    assert config.replicas == RoleReplicas(frontend=2)
    assert (config.cluster.scheduler_name, config.cluster.volcano_queue) == ("volcano", "llm")
    assert config.models_namespace == "llm"
    assert config.pulumi_backend_url == "s3://aif-state"
    assert config.prometheus_url == "http://prometheus.monitoring:9090"
    assert config.taint_faulty_nodes is True


def test_missing_mongodb_url_fails_with_a_clear_message() -> None:
    with pytest.raises(InstallConfigError, match=r"pulumi config set --secret aif:mongodbUrl"):
        from_config({"enableLocalStorage": "false", "pulumiPassphrase": "p" * 32}, [])


def test_unknown_roles_in_replicas_are_refused() -> None:
    with pytest.raises(InstallConfigError, match=r"unknown roles \['web'\]"):
        from_config({"enableLocalStorage": "true", "replicas": '{"web": 2}'}, [])


def stack_file(name: str) -> dict[str, str]:
    """A root ``Pulumi.<stack>.yaml``'s config as the engine hands it over (objects as JSON)."""
    path = Path(__file__).resolve().parents[2] / f"Pulumi.{name}.yaml"
    config = yaml.safe_load(path.read_text(encoding="utf-8"))["config"]
    values = {}
    for key, value in config.items():
        text = json.dumps(value) if isinstance(value, dict | bool) else str(value)
        values[key.removeprefix("aif:")] = text
    return values


def test_the_dev_stack_file_installs_with_local_storage() -> None:
    config = from_config(stack_file("dev"), [])

    assert config.enable_local_storage is True
    assert config.environment == "development"
    installed = install(config)
    assert installed.one("kubernetes:apps/v1:StatefulSet", "aif-mongodb")
    assert sorted(installed.deployments) == sorted(ROLES)


def test_the_prod_stack_file_asks_for_its_secrets() -> None:
    values = stack_file("prod")

    assert values["enableLocalStorage"] == "false"
    assert values["pulumiBackendUrl"].startswith("s3://")
    with pytest.raises(InstallConfigError) as caught:
        from_config(values, [])
    assert "aif:mongodbUrl is required" in str(caught.value)
    assert "aif:pulumiPassphrase is required" in str(caught.value)
