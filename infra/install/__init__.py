"""The installation of aif itself on a cluster, as a Pulumi component.

:class:`InstallConfig` is the typed form of the ``aif:*`` stack config (read by
:meth:`InstallConfig.from_pulumi_config`); :func:`build_install` turns it into the objects of
an installation: the namespace, a service account with least-privilege RBAC, the settings as a
ConfigMap and a Secret, the four role Deployments of one image, the ``frontend-service``
ClusterIP Service and, with ``enableLocalStorage``, an in-cluster MongoDB. The models
themselves are left to the model-job-executor (:mod:`infra.pulumi_deployer`), which deploys
each one as its own stack into ``modelsNamespace``; ``infra/__main__.py`` only reads the
config and calls :func:`build_install`.

The names below are the public surface; the modules behind them:

- :mod:`infra.install.config`: ``InstallConfig``, its ``aif:*`` keys and its checks.
- :mod:`infra.install.installation`: the ``Installation`` component and :func:`build_install`.
- :mod:`infra.install.roles`: the four roles, their settings and Deployments.
- :mod:`infra.install.rbac`: the service account's Role and ClusterRole.
- :mod:`infra.install.mongodb`: the in-cluster MongoDB of ``enableLocalStorage``.
- :mod:`infra.install.objects`: labels, metadata and ordering shared by all of them.
"""

from infra.install.config import InstallConfig, InstallConfigError, RoleReplicas
from infra.install.installation import FRONTEND_SERVICE_NAME, Installation, build_install
from infra.install.mongodb import mongodb_service_url
from infra.install.roles import settings_env

__all__ = [
    "FRONTEND_SERVICE_NAME",
    "InstallConfig",
    "InstallConfigError",
    "Installation",
    "RoleReplicas",
    "build_install",
    "mongodb_service_url",
    "settings_env",
]
