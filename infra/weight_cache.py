"""The weight cache: an init container that copies a model's weights to fast storage first.

Weights come from the registered PVC (``pvc.name``, subpath ``pvc.path``), often object
storage (OBS), which loads slowly. With ``ClusterConfig.cache_pvc`` set (a fast file-storage
PVC such as SFS Turbo), every pod of a model gets :func:`cache_init_container`, which copies
``<source>/<pvc.path>`` to ``<cache>/<pvc.name>/<pvc.path>`` (:func:`cache_path`) unless a
``.aif-complete`` marker is already there, and the engine reads from the cache.

Pods starting together take a lock directory so one copies while the others wait for the
marker; a copy goes to a private temporary directory that is renamed into place only when
complete, so a reader never sees a half-copied model, and a lock left by a pod that died is
given up after ``CACHE_LOCK_WAIT_S``. Mounting the cache into the engine is left to
:mod:`infra.manifests`; evicting old copies from the cache to its operator.
"""

from __future__ import annotations

from typing import Any

from domain.records import Pvc

# Long enough for one pod to copy a 72B model (~145 GB) from object storage at ~50 MB/s.
CACHE_LOCK_WAIT_S = 3600
# Waiting pods look for the marker this often; a stat on the cache volume is cheap.
CACHE_POLL_S = 2
CACHE_MARKER = ".aif-complete"
SOURCE_MOUNT = "/mnt/aif/source"
CACHE_MOUNT = "/mnt/aif/cache"
# The pod volume of the cache PVC; the weights' own volume is "models".
CACHE_VOLUME = "cache"

CACHE_SCRIPT = f"""set -eu
src="$AIF_CACHE_SOURCE"; dst="$AIF_CACHE_TARGET"; marker="$dst/{CACHE_MARKER}"
[ -f "$marker" ] && exit 0
mkdir -p "${{dst%/*}}"
while ! mkdir "$dst.aif-lock" 2>/dev/null; do
  [ -f "$marker" ] && exit 0
  [ "$SECONDS" -ge {CACHE_LOCK_WAIT_S} ] && break
  sleep {CACHE_POLL_S}
done
tmp="$dst.aif-tmp-$HOSTNAME"
rm -rf "$tmp"; mkdir -p "$tmp"
cp -a "$src/." "$tmp/"
touch "$tmp/{CACHE_MARKER}"
if [ -e "$dst" ] && [ ! -f "$marker" ]; then rm -rf "$dst"; fi
mv -T "$tmp" "$dst" 2>/dev/null || rm -rf "$tmp"
rmdir "$dst.aif-lock" 2>/dev/null || true
"""


def kubelet_literal(text: str) -> str:
    """``text`` as the kubelet passes it on: it expands ``$(VAR)`` in env, command and args,
    and ``$$`` keeps a literal ``$``."""
    return text.replace("$", "$$")


def cache_path(pvc: Pvc) -> str:
    """Where a PVC's weights are kept in the cache, relative to its root."""
    # Keyed by the source PVC too: two PVCs may hold different weights under one path.
    return f"{pvc.name}/{pvc.path}"


def cache_volume(claim_name: str) -> dict[str, Any]:
    """The pod volume of the cache PVC."""
    return {"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": claim_name}}


def cache_init_container(image: str, pvc: Pvc) -> dict[str, Any]:
    """The init container that fills the cache from ``pvc``; runs in the engine's image."""
    env = {"AIF_CACHE_SOURCE": f"{SOURCE_MOUNT}/{pvc.path}"}
    env["AIF_CACHE_TARGET"] = f"{CACHE_MOUNT}/{cache_path(pvc)}"
    return {
        "name": "cache-weights",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["bash", "-c", CACHE_SCRIPT],
        "env": [{"name": k, "value": kubelet_literal(v)} for k, v in env.items()],
        "resources": {
            "requests": {"cpu": "1", "memory": "1Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        },
        "volumeMounts": [
            {"name": "models", "mountPath": SOURCE_MOUNT, "readOnly": True},
            {"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT},
        ],
    }


__all__ = [
    "CACHE_MARKER",
    "CACHE_SCRIPT",
    "CACHE_VOLUME",
    "cache_init_container",
    "cache_path",
    "cache_volume",
    "kubelet_literal",
]
