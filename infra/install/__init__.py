"""The installation of aif itself on a cluster, as a Pulumi component.

:class:`InstallConfig` is the typed form of the ``aif:*`` stack config (read by
:meth:`InstallConfig.from_pulumi_config`); :func:`build_install` turns it into the objects of
an installation: the namespaces, service accounts with least-privilege RBAC (tokens and grants
for the model-job-executor, and read-only ones on nodes and pods for the frontend's accelerator
inventory), the settings as a ConfigMap and a Secret, the four role
Deployments of one image, the ``frontend-service`` and ``chat-job-executor`` ClusterIP
Services (user inference enters through the first and is forwarded to the second) and, with
``enableLocalStorage``, an in-cluster MongoDB. The models
themselves are left to the model-job-executor (:mod:`infra.pulumi_deployer`), which deploys
each one as its own stack into ``modelsNamespace``; ``infra/__main__.py`` only reads the
config and calls :func:`build_install`.

The names below are the public surface; the modules behind them:

- :mod:`infra.install.config`: ``InstallConfig``, its ``aif:*`` keys and its checks.
- :mod:`infra.install.installation`: the ``Installation`` component and :func:`build_install`.
- :mod:`infra.install.roles`: the four roles, their settings and Deployments.
- :mod:`infra.install.rbac`: the service accounts, the model-job-executor's Roles and the
  ClusterRoles of the accelerator inventory.
- :mod:`infra.install.services`: the two Services and the address the frontend forwards to.
- :mod:`infra.install.mongodb`: the in-cluster MongoDB of ``enableLocalStorage``.
- :mod:`infra.install.objects`: labels, metadata and ordering shared by all of them.
"""

from infra.install.config import InstallConfig, InstallConfigError, RoleReplicas
from infra.install.installation import Installation, build_install
from infra.install.mongodb import mongodb_service_url
from infra.install.rbac import (
    EXECUTOR_SERVICE_ACCOUNT,
    FRONTEND_SERVICE_ACCOUNT,
    NODE_READER_ROLE,
    NODE_TAINTER_ROLE,
    SERVICE_ACCOUNT,
)
from infra.install.roles import ROLES, role_env, settings_env
from infra.install.services import (
    CHAT_EXECUTOR_SERVICE_NAME,
    FRONTEND_SERVICE_NAME,
    SCALER_SERVICE_NAME,
    chat_executor_url,
)

__all__ = [
    "CHAT_EXECUTOR_SERVICE_NAME",
    "EXECUTOR_SERVICE_ACCOUNT",
    "FRONTEND_SERVICE_ACCOUNT",
    "FRONTEND_SERVICE_NAME",
    "NODE_READER_ROLE",
    "NODE_TAINTER_ROLE",
    "ROLES",
    "SCALER_SERVICE_NAME",
    "SERVICE_ACCOUNT",
    "InstallConfig",
    "InstallConfigError",
    "Installation",
    "RoleReplicas",
    "build_install",
    "chat_executor_url",
    "mongodb_service_url",
    "role_env",
    "settings_env",
]
