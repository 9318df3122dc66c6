"""How :class:`~domain.settings.ClusterConfig` travels, generated from its fields alone.

A cluster setting is written in three places, each derived here from
``ClusterConfig.model_fields`` so that adding a field to ``ClusterConfig`` needs no change in
``infra/``:

- a model stack's config (:func:`stack_values` / :func:`from_stack_values`), camelCase keys;
- the roles' environment (:func:`cluster_env`), the ``AIF_*`` variables ``Settings`` reads;
- the install program's ``aif:*`` keys (:func:`install_key`), where ``aif:namespace`` is the
  control plane's own namespace and the models' one is ``aif:modelsNamespace``.

Values are strings everywhere: a ``str`` field (or a choice of strings) as it is, anything
else as JSON (``true``, ``8``), which pydantic and pydantic-settings read back. Using the
settings (rendering manifests) is left to :mod:`infra.manifests`; where the values are stored
to the deployer and the install program.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Protocol, get_args, get_origin

from domain.settings import ClusterConfig, Settings


class Lookup(Protocol):
    """Config read by key: a ``dict`` of strings, or a ``pulumi.Config`` inside a program."""

    def get(self, key: str, /) -> str | None: ...


# ``aif:namespace`` is where the control plane runs; the models' namespace needs its own key.
_INSTALL_KEYS = {"namespace": "modelsNamespace"}


def camel(name: str) -> str:
    """``engine_image`` → ``engineImage``: the style of Pulumi config keys."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def encode(value: Any) -> str:
    """A setting as a config or environment string: strings unchanged, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _is_text(annotation: Any) -> bool:
    """A ``str`` field, or a ``Literal`` of strings (``gang_scheduling``): kept as written."""
    if annotation is str:
        return True
    choices = get_args(annotation)
    return get_origin(annotation) is Literal and all(isinstance(c, str) for c in choices)


def _decode(name: str, raw: str) -> Any:
    return raw if _is_text(ClusterConfig.model_fields[name].annotation) else json.loads(raw)


def field_names() -> tuple[str, ...]:
    """Every cluster setting, in declaration order."""
    return tuple(ClusterConfig.model_fields)


def stack_values(cluster: ClusterConfig) -> dict[str, str]:
    """The cluster settings as a model stack's config: ``{camelCase field: string}``."""
    return {camel(name): encode(getattr(cluster, name)) for name in field_names()}


def from_stack_values(values: Lookup) -> ClusterConfig:
    """The inverse of :func:`stack_values`; absent keys keep ``ClusterConfig``'s defaults."""
    given = {}
    for name in field_names():
        raw = values.get(camel(name))
        if raw is not None:
            given[name] = _decode(name, raw)
    return ClusterConfig(**given)


def cluster_env(cluster: ClusterConfig) -> dict[str, str]:
    """The ``AIF_*`` variables that make ``Settings().cluster`` equal ``cluster``."""
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper(): encode(getattr(cluster, name)) for name in field_names()}


def install_key(name: str) -> str:
    """The ``aif:`` key (without ``aif:``) of a cluster setting in the install program."""
    return _INSTALL_KEYS.get(name, camel(name))


def from_install_values(values: Lookup) -> ClusterConfig:
    """The cluster settings from ``aif:*`` config strings, keyed by :func:`install_key`."""
    given = {}
    for name in field_names():
        raw = values.get(install_key(name))
        if raw is not None:
            given[name] = _decode(name, raw)
    return ClusterConfig(**given)


__all__ = [
    "Lookup",
    "camel",
    "cluster_env",
    "encode",
    "field_names",
    "from_install_values",
    "from_stack_values",
    "install_key",
    "stack_values",
]
