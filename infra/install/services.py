"""The ClusterIP Services of an installation, and how inference flows through them.

Users reach ``frontend-service`` (port 80), which selects the frontend pods: the model API and
the OpenAI endpoints. The frontend forwards ``/v1/chat/completions`` and ``/v1/completions`` to
the ``chat-job-executor`` Service (:func:`chat_executor_url`, given to the frontend as
``AIF_CHAT_EXECUTOR_URL``), which spreads them over the chat-job-executor pods; those route
each request to a model's instances. So the chat path scales with its own replicas, apart from
the frontend. The chat-job-executors report models at capacity to the
``task-executor-manager`` Service (:func:`scaler_url`, given to them as ``AIF_SCALER_URL``),
so a burst is decided for within a fraction of the scaling interval, as in one process. The
pods behind the Services are left to :mod:`infra.install.roles`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.install.objects import meta, selector

FRONTEND_SERVICE_NAME = "frontend-service"
FRONTEND_SERVICE_PORT = 80
CHAT_EXECUTOR_SERVICE_NAME = "chat-job-executor"
SCALER_SERVICE_NAME = "task-executor-manager"
# Every role serves HTTP on this port, named ``http`` in its container.
HTTP_PORT = 8080
HTTP_PORT_NAME = "http"


def chat_executor_url(namespace: str) -> str:
    """Where the frontend forwards inference: the chat-job-executor Service, in-cluster."""
    return f"http://{CHAT_EXECUTOR_SERVICE_NAME}.{namespace}.svc:{HTTP_PORT}"


def scaler_url(namespace: str) -> str:
    """Where the chat-job-executors report pressure: the task-executor-manager Service."""
    return f"http://{SCALER_SERVICE_NAME}.{namespace}.svc:{HTTP_PORT}"


def frontend_endpoint(namespace: str) -> str:
    """The address of the whole installation, as other workloads of the cluster reach it."""
    return f"http://{FRONTEND_SERVICE_NAME}.{namespace}.svc.cluster.local"


@dataclass(frozen=True)
class Services:
    frontend: k8s.core.v1.Service
    chat_executor: k8s.core.v1.Service
    task_executor_manager: k8s.core.v1.Service


def _cluster_ip_service(
    name: str, namespace: str, component: str, port: int, opts: pulumi.ResourceOptions
) -> k8s.core.v1.Service:
    return k8s.core.v1.Service(
        name,
        metadata=meta(name, namespace, component),
        spec=k8s.core.v1.ServiceSpecArgs(
            type="ClusterIP",
            selector=selector(component),
            ports=[
                k8s.core.v1.ServicePortArgs(
                    name=HTTP_PORT_NAME, port=port, target_port=HTTP_PORT, protocol="TCP"
                )
            ],
        ),
        opts=opts,
    )


def build_services(namespace: str, opts: pulumi.ResourceOptions) -> Services:
    """``frontend-service`` (80 → the frontends), ``chat-job-executor`` and
    ``task-executor-manager`` (8080 → their pods)."""
    return Services(
        frontend=_cluster_ip_service(
            FRONTEND_SERVICE_NAME, namespace, "frontend", FRONTEND_SERVICE_PORT, opts
        ),
        chat_executor=_cluster_ip_service(
            CHAT_EXECUTOR_SERVICE_NAME, namespace, "chat-job-executor", HTTP_PORT, opts
        ),
        task_executor_manager=_cluster_ip_service(
            SCALER_SERVICE_NAME, namespace, "task-executor-manager", HTTP_PORT, opts
        ),
    )


__all__ = [
    "CHAT_EXECUTOR_SERVICE_NAME",
    "FRONTEND_SERVICE_NAME",
    "FRONTEND_SERVICE_PORT",
    "HTTP_PORT",
    "HTTP_PORT_NAME",
    "SCALER_SERVICE_NAME",
    "Services",
    "build_services",
    "chat_executor_url",
    "frontend_endpoint",
    "scaler_url",
]
