"""Kubernetes deployment of aif and of the models it serves.

- :mod:`infra.models`: the preset templates, as data (no Pulumi import).
- :mod:`infra.sizing`: tensor/pipeline parallelism and memory checks of a preset on a card.
- :mod:`infra.vllm_args`: vLLM's engine arguments from a preset, shared by every runtime.
- :mod:`infra.manifests`: one pure function from a model to its Kubernetes objects, with
  :mod:`infra.weight_cache` (the init container copying weights to fast storage).
- :mod:`infra.cluster_settings`: how ``ClusterConfig`` travels (stack config, ``AIF_*``
  environment, ``aif:*`` keys), generated from its fields.
- :mod:`infra.model_deployment`: the ``ModelDeployment`` Pulumi component that applies them.
- :mod:`infra.pulumi_deployer`: the Automation API deployer, one stack per model, on
  :mod:`infra.stacks` (workspaces, locks, progress) and :mod:`infra.cluster_observer`
  (readiness and actionable failures read from the cluster).
- :mod:`infra.install` and ``infra/__main__.py``: the install program of aif itself (the root
  ``Pulumi.yaml``).

This package's ``__init__`` imports nothing heavy, so the API can load presets without Pulumi.
"""
