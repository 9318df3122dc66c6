"""Targets for Prometheus's HTTP service discovery (``http_sd_configs``), as a pure function.

:func:`http_sd_groups` gives the JSON Prometheus expects from an ``http_sd`` endpoint: a list
of ``{"targets": ["host:port", ...], "labels": {...}}`` groups. One group holds the gateways
(``aif_role="gateway"``): their ``aif_*`` series carry the model in label ``model``. Every
ready instance of every model is a group of its own (``aif_role="engine"``), labelled
``model_name`` and ``model`` with the model's name and ``instance_id`` with the instance's, so
PromQL finds an engine's ``vllm:*`` series by the model's name, whatever the engine calls
itself (scraped with the default ``honor_labels: false``, the target's label wins).

Targets are ``host:port``: the scheme is dropped (an ``https`` URL sets ``__scheme__``), a
missing port is the scheme's default, and a path is ignored (Prometheus scrapes
``/metrics``). The application serves this at an HTTP route for Prometheus to poll.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from domain.records import ModelRecord

DEFAULT_PORTS = {"http": 80, "https": 443}

TargetGroup = dict[str, list[str] | dict[str, str]]


def target(url: str) -> tuple[str, str]:
    """(``host:port``, scheme) of an address given as a URL or as ``host:port``."""
    parts = urlsplit(url if "//" in url else f"http://{url}")
    scheme = parts.scheme or "http"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    port = parts.port or DEFAULT_PORTS.get(scheme, 80)
    return f"{host}:{port}", scheme


def _labels(scheme: str, **labels: str) -> dict[str, str]:
    return {**labels, "__scheme__": scheme} if scheme != "http" else labels


def http_sd_groups(gateways: Iterable[str], records: Iterable[ModelRecord]) -> list[TargetGroup]:
    """Prometheus's ``http_sd`` target groups for these gateways and models' ready instances."""
    groups: list[TargetGroup] = []
    by_scheme: dict[str, list[str]] = {}
    for address in gateways:
        host_port, scheme = target(address)
        if host_port not in by_scheme.setdefault(scheme, []):
            by_scheme[scheme].append(host_port)
    for scheme, targets in by_scheme.items():
        groups.append({"targets": targets, "labels": _labels(scheme, aif_role="gateway")})
    for record in records:
        for endpoint in record.endpoints:
            if not endpoint.ready:
                continue
            host_port, scheme = target(endpoint.url)
            labels = _labels(
                scheme,
                aif_role="engine",
                model_name=record.name,
                model=record.name,
                instance_id=endpoint.instance_id,
            )
            groups.append({"targets": [host_port], "labels": labels})
    return groups
