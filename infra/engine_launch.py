"""How an engine container starts, per accelerator: command, scripts, the environment it needs.

NVIDIA images (``vllm/vllm-openai``) run vLLM's API server directly. Ascend images
(``quay.io/ascend/vllm-ascend``, built on CANN) need CANN's environment first: the image's
shell sources ``/usr/local/Ascend/ascend-toolkit/set_env.sh`` (and ``nnal/atb/set_env.sh``),
which a ``command:`` that starts python directly would skip. So an Ascend container runs
:data:`ASCEND_PRELUDE` (source what exists, preload jemalloc when the image ships it) and then
``exec``\\s the engine, whose flags stay in ``args``.

An instance that spans pods is joined by Ray, as in vLLM's LWS guide: the leader starts the
Ray head, waits until every worker's node has joined (:func:`leader_script`), then starts the
API server; workers join ``$LWS_LEADER_ADDRESS`` (:data:`WORKER_SCRIPT`). On Ascend, the
vllm-ascend multi-node recipe adds :func:`ascend_multi_node_env` (Ray must not rewrite
``ASCEND_RT_VISIBLE_DEVICES``; HCCL, Gloo and TP bind the pod's interface and IP) and, with
pipeline parallel, ``--enforce-eager`` (graph mode with PP over Ray is not supported there).

No script holds ``$(``: the kubelet would expand it itself. Rendering the rest of the pod is
left to :mod:`infra.manifests`.
"""

from __future__ import annotations

import shlex
from typing import Any

ASCEND = "huawei.com/ascend-1980"
NVIDIA = "nvidia.com/gpu"
SINGLE_NODE_COMMAND = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
RAY_PORT = 6379
# The leader pod of a group pulls the same image as its workers; a cold pull can take minutes.
RAY_JOIN_TIMEOUT_S = 900
# vLLM's CUDA attention backends take block sizes up to 32; 16 is vLLM's default there.
CUDA_MAX_BLOCK_SIZE = 32
CUDA_BLOCK_SIZE = 16
# The pod's network interface on CCE (and most CNIs): where HCCL, Gloo and TP traffic goes.
POD_INTERFACE = "eth0"

ASCEND_PRELUDE = """for f in /usr/local/Ascend/ascend-toolkit/set_env.sh \\
         /usr/local/Ascend/nnal/atb/set_env.sh; do
  [ -f "$f" ] && . "$f"
done
for lib in /usr/lib/*-linux-gnu/libjemalloc.so.2; do
  [ -f "$lib" ] && export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
done
"""

# A worker whose container exits restarts the whole group, so it waits for the head first.
WORKER_SCRIPT = f"""set -u
head="${{LWS_LEADER_ADDRESS}}"
until (exec 3<>"/dev/tcp/$head/{RAY_PORT}") 2>/dev/null; do
  [ "$SECONDS" -ge {RAY_JOIN_TIMEOUT_S} ] && {{ echo "no Ray head at $head" >&2; exit 1; }}
  sleep 5
done
exec ray start --address="$head:{RAY_PORT}" --block --disable-usage-stats
"""

_NODES_JOINED = (
    "import ray, sys; ray.init(address='auto', logging_level='ERROR'); "
    "sys.exit(0 if sum(1 for n in ray.nodes() if n['Alive']) >= int(sys.argv[1]) else 1)"
)


def block_size(requested: int, resource_type: str) -> int:
    """The preset's KV block size, or one CUDA supports: Ascend's 128 is refused there."""
    if resource_type == NVIDIA and requested > CUDA_MAX_BLOCK_SIZE:
        return CUDA_BLOCK_SIZE
    return requested


def extra_engine_args(resource_type: str, pipeline_parallel: int) -> list[str]:
    """Flags an accelerator needs beyond the preset's: eager mode for PP on Ascend."""
    if resource_type == ASCEND and pipeline_parallel > 1:
        return ["--enforce-eager"]
    return []


def leader_script(args: list[str], nodes: int) -> str:
    """Ray head, a wait until the group's ``nodes`` have joined, then the API server."""
    return (
        f"set -eu\nray start --head --port={RAY_PORT} --disable-usage-stats\n"
        f"until python3 -c {shlex.quote(_NODES_JOINED)} {nodes}; do\n"
        f'  [ "$SECONDS" -ge {RAY_JOIN_TIMEOUT_S} ] && '
        f'{{ echo "workers did not join the Ray head" >&2; exit 1; }}\n'
        "  sleep 5\ndone\n"
        f"exec {shlex.join([*SINGLE_NODE_COMMAND, *args])}\n"
    )


def run_section(resource_type: str, args: list[str], *, nodes: int, leader: bool) -> dict[str, Any]:
    """The container's ``command`` (and ``args``) for its role in the group."""
    prelude = ASCEND_PRELUDE if resource_type == ASCEND else ""
    if nodes > 1:
        script = leader_script(args, nodes) if leader else WORKER_SCRIPT
        return {"command": ["bash", "-c", prelude + script]}
    if prelude:
        # "$@" keeps the engine's flags as separate, unexpanded words.
        exec_engine = f'exec {shlex.join(SINGLE_NODE_COMMAND)} "$@"\n'
        return {"command": ["bash", "-c", prelude + exec_engine, "--"], "args": args}
    return {"command": SINGLE_NODE_COMMAND, "args": args}


def ascend_multi_node_env(resource_type: str, nodes: int) -> list[dict[str, Any]]:
    """vllm-ascend's Ray recipe for an instance spanning pods; nothing otherwise."""
    if resource_type != ASCEND or nodes < 2:
        return []
    pod_ip = {"valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    return [
        {"name": "RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES", "value": "1"},
        {"name": "HCCL_IF_IP", **pod_ip},
        {"name": "HCCL_SOCKET_IFNAME", "value": POD_INTERFACE},
        {"name": "GLOO_SOCKET_IFNAME", "value": POD_INTERFACE},
        {"name": "TP_SOCKET_IFNAME", "value": POD_INTERFACE},
    ]


__all__ = [
    "ASCEND_PRELUDE",
    "SINGLE_NODE_COMMAND",
    "WORKER_SCRIPT",
    "ascend_multi_node_env",
    "block_size",
    "extra_engine_args",
    "leader_script",
    "run_section",
]
