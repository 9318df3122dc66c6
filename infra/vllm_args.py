"""vLLM's engine arguments for a preset: the one list both the cluster and local engines use.

:func:`vllm_args` turns a preset's :class:`~domain.presets.VllmArgs` and a parallelism into
vLLM ``api_server`` flags, so a model is served with the same batch, context and memory
limits on a laptop as in its pods. It leaves to its callers what differs between them: the
model path, the served model name, host and port, where the preset's ``extra_args`` go, and
any quoting the target needs (:mod:`infra.manifests` for LWS pods, :mod:`api.deployers.launch`
for local processes). Imports neither Pulumi nor FastAPI.
"""

from __future__ import annotations

from domain.presets import VllmArgs


def vllm_args(
    vllm: VllmArgs, *, tensor_parallel: int | None, pipeline_parallel: int = 1
) -> list[str]:
    """The preset's limits, then tensor (and pipeline) parallel sizes, then trust-remote-code.

    ``tensor_parallel=None`` leaves the size to vLLM (one card). Pipeline parallel above 1
    spans pods, which vLLM joins through Ray.
    """
    args = [
        "--max-num-seqs", str(vllm.max_num_seqs),
        "--max-model-len", str(vllm.max_model_len),
        "--max-num-batched-tokens", str(vllm.max_num_batched_tokens),
        "--block-size", str(vllm.block_size),
        "--gpu-memory-utilization", str(vllm.gpu_memory_utilization),
    ]  # fmt: skip
    if tensor_parallel is not None:
        args += ["--tensor-parallel-size", str(tensor_parallel)]
    if pipeline_parallel > 1:
        args += ["--pipeline-parallel-size", str(pipeline_parallel)]
        args += ["--distributed-executor-backend", "ray"]
    if vllm.trust_remote_code:
        args.append("--trust-remote-code")
    return args
