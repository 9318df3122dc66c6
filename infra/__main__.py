"""The install program of aif itself, run by ``pulumi up`` (root ``Pulumi.yaml``, ``main: infra/``).

It only reads the ``aif:*`` stack config and hands it to :func:`infra.install.build_install`,
where the objects are made (and tested under mocks); the models are not here but in their own
stacks of the project ``aif-models``, driven by the model-job-executor.
"""

import sys
from pathlib import Path

import pulumi

# Pulumi runs this directory as a script: make the repository's packages importable from a
# checkout too, not only from an installed aif.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.install import InstallConfig, build_install

installation = build_install(InstallConfig.from_pulumi_config(pulumi.Config("aif")))
pulumi.export("namespace", installation.namespace)
pulumi.export("frontendService", installation.frontend_service_name)
pulumi.export("endpoint", installation.endpoint)
pulumi.export("chatExecutorUrl", installation.chat_executor_url)
