"""``ClusterConfig`` is the one source of the cluster settings: every field travels everywhere.

A field added to ``ClusterConfig`` must be given a non-default value in :data:`EVERY_FIELD`
(the first test fails until it is); the others then prove it reaches a model stack's config
and hash, the install program's ``aif:*`` keys and the roles' environment with no other change.
"""

from __future__ import annotations

from typing import Any

import pytest

from domain.deployment import DeploymentSpec
from domain.records import Pvc
from domain.settings import ClusterConfig, Settings
from infra import cluster_settings
from infra.install import InstallConfigError, settings_env
from infra.model_deployment import ModelDeploymentArgs
from infra.model_stack import args_from_config, desired_stack, stack_config
from tests.infra.test_install_program import from_config, install, local_storage

EVERY_FIELD = ClusterConfig(
    namespace="llm",
    engine_image="registry.example/vllm:1",
    scheduler_name="volcano",
    volcano_queue="q",
    gang_scheduling="volcano",
    cache_pvc="turbo",
    pod_monitor=True,
    max_accelerators_per_node=4,
)
SPEC = DeploymentSpec(
    model_id="d97051120764490daf846053e16d4f25",
    name="DeepSeek-R1-Distill-Qwen-7B",
    type="DeepSeek-R1-Distill-Qwen-7B",
    resource_type="huawei.com/ascend-1980",
    version="1.0.0",
    replicas=2,
    pvc=Pvc(name="release-models", path="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"),
    generation=3,
)
DEVELOPMENT = {"enableLocalStorage": "true", "environment": "development"}


def test_every_field_has_a_non_default_value_here() -> None:
    defaults = ClusterConfig()
    same = [
        n for n in ClusterConfig.model_fields if getattr(EVERY_FIELD, n) == getattr(defaults, n)
    ]
    assert same == [], f"give {same} a non-default value in EVERY_FIELD"


def test_the_stack_config_round_trips_the_spec_and_every_cluster_setting() -> None:
    config = stack_config(ModelDeploymentArgs(SPEC, EVERY_FIELD))

    restored = args_from_config(config)
    assert restored.cluster == EVERY_FIELD
    assert restored.spec == SPEC.__class__(**{**SPEC.__dict__, "generation": 0})
    for name in ClusterConfig.model_fields:
        assert cluster_settings.camel(name) in config, name


@pytest.mark.parametrize("name", list(ClusterConfig.model_fields))
def test_a_changed_cluster_setting_changes_the_stack_hash(name: str) -> None:
    changed = ClusterConfig(**{name: getattr(EVERY_FIELD, name)})

    assert desired_stack(SPEC, changed).spec_hash != desired_stack(SPEC, ClusterConfig()).spec_hash
    assert desired_stack(SPEC, changed) == desired_stack(SPEC, changed)


def test_the_generation_does_not_change_the_stack_hash() -> None:
    later = SPEC.__class__(**{**SPEC.__dict__, "generation": 9})

    assert desired_stack(later, EVERY_FIELD) == desired_stack(SPEC, EVERY_FIELD)


def test_the_install_env_makes_the_roles_settings_equal_the_cluster_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = settings_env(local_storage(cluster=EVERY_FIELD))

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings().cluster == EVERY_FIELD


@pytest.mark.usefixtures("pulumi_loop")
def test_the_install_config_map_carries_every_cluster_setting() -> None:
    installed = install(local_storage(cluster=EVERY_FIELD))

    [config_map] = installed.of_type("kubernetes:core/v1:ConfigMap")
    for name in ClusterConfig.model_fields:
        assert f"AIF_{name.upper()}" in config_map["data"], name


@pytest.mark.usefixtures("pulumi_loop")
def test_every_cluster_setting_is_read_from_its_install_key() -> None:
    values: dict[str, Any] = {
        cluster_settings.install_key(name): cluster_settings.encode(getattr(EVERY_FIELD, name))
        for name in ClusterConfig.model_fields
    }

    config = from_config({**DEVELOPMENT, **values}, [])

    assert config.cluster == EVERY_FIELD
    assert config.models_namespace == "llm"


@pytest.mark.usefixtures("pulumi_loop")
def test_a_cluster_setting_that_cannot_be_read_is_refused_with_its_key() -> None:
    with pytest.raises(InstallConfigError, match=r"aif:maxAcceleratorsPerNode"):
        from_config(
            {
                "enableLocalStorage": "true",
                "environment": "development",
                "maxAcceleratorsPerNode": "0",
            },
            [],
        )
