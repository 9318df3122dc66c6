"""The simulator as aif runs it: ``python -m simulator`` on a free port.

The official ``openai`` client consumes it (plain and streamed), the metrics are vLLM's, and
client disconnects and injected stalls free the engine. Every process is killed on teardown.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, wait_until

MODEL = "sim-chat"
MODEL_TYPE = "DeepSeek-R1-Distill-Qwen-7B"
REQUIRED_SAMPLES = [
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:time_per_output_token_seconds_bucket",
    "vllm:request_time_per_output_token_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:request_queue_time_seconds_bucket",
    "vllm:request_prompt_tokens_bucket",
    "vllm:request_generation_tokens_bucket",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:gpu_prefix_cache_queries_total",
    "vllm:gpu_prefix_cache_hits_total",
]

pytestmark = pytest.mark.slow


# How long a simulator may take to start or to settle after a request.
SETTLE_TIMEOUT_S = 15.0


class Simulator:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"simulator-{self.port}.log"
        argv = [
            sys.executable, "-m", "simulator",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--served-model-name", MODEL, "--model-type", MODEL_TYPE, *args,
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.url, trust_env=False, timeout=10.0)

    def status(self, path: str) -> int | None:
        if self.process.poll() is not None:
            raise AssertionError(f"simulator exited: {self.log.read_text()}")
        try:
            return self.http.get(path).status_code
        except httpx.TransportError:
            return None

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = self.http.get("/metrics").text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        key = frozenset({"model_name": MODEL, **labels}.items())
        return self.samples()[(name, key)]

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1",
            api_key="unused",
            max_retries=0,
            http_client=openai.DefaultHttpxClient(trust_env=False),
        )

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it lingers; safe to call again."""
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    sim = Simulator(tmp_path_factory.mktemp("sim"), "--startup-delay-s", "0", "--seed", "3")
    try:
        wait_until(lambda: sim.status("/health") == 200, timeout_s=SETTLE_TIMEOUT_S)
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Simulator]]:
    """Start extra simulators for one test; all are stopped (or killed) on teardown."""
    started: list[Simulator] = []

    def start(*args: str) -> Simulator:
        started.append(Simulator(tmp_path, *args))
        return started[-1]

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def client(simulator: Simulator) -> Iterator[openai.OpenAI]:
    with simulator.openai() as c:
        yield c


def test_openai_client_non_stream(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=6
    )
    assert completion.object == "chat.completion" and completion.model == MODEL
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 6
    text = client.completions.create(model=MODEL, prompt="Say something", max_tokens=3)
    assert text.choices[0].text and text.usage is not None and text.usage.completion_tokens == 3


def test_openai_client_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Stream please"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    text_stream = client.completions.create(model=MODEL, prompt="abc", max_tokens=2, stream=True)
    assert len([c for c in text_stream if c.choices and c.choices[0].text]) == 2


def test_openai_client_sees_unknown_models_as_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 404
    assert [model.id for model in client.models.list()] == [MODEL]


def test_metrics_have_vllm_names_and_counters_increase(
    simulator: Simulator, client: openai.OpenAI
) -> None:
    before = simulator.samples()
    labelled = {name for (name, labels) in before if ("model_name", MODEL) in labels}
    assert set(REQUIRED_SAMPLES) <= labelled
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "count me"}], max_tokens=4
    )
    after = simulator.samples()
    key = frozenset({("model_name", MODEL)})
    for name in ("vllm:prompt_tokens_total", "vllm:time_to_first_token_seconds_count"):
        assert after[(name, key)] > before[(name, key)]
    assert after[("vllm:generation_tokens_total", key)] == (
        before[("vllm:generation_tokens_total", key)] + 4
    )
    success = ("vllm:request_success_total", key | {("finished_reason", "length")})
    assert after[success] == before[success] + 1


def test_a_client_disconnect_frees_the_sequence(simulator: Simulator) -> None:
    aborted_before = simulator.value("vllm:request_success_total", finished_reason="abort")
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "a long answer"}],
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }
    with (
        httpx.Client(base_url=simulator.url, trust_env=False) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert simulator.value("vllm:num_requests_running") == 1
        assert simulator.value("vllm:kv_cache_usage_perc") > 0
    wait_until(
        lambda: simulator.value("vllm:num_requests_running") == 0, timeout_s=SETTLE_TIMEOUT_S
    )
    assert simulator.value("vllm:kv_cache_usage_perc") == 0
    aborted = simulator.value("vllm:request_success_total", finished_reason="abort")
    assert aborted == aborted_before + 1


def test_an_injected_stall_hangs_the_stream_after_n_tokens(simulator: Simulator) -> None:
    http = simulator.http
    assert http.post("/admin/faults", json={"stall_after_tokens": 2}).status_code == 200
    body = {"model": MODEL, "prompt": "stall", "max_tokens": 50, "ignore_eos": True}
    try:
        with (
            httpx.Client(base_url=simulator.url, trust_env=False, timeout=0.5) as stalled,
            stalled.stream("POST", "/v1/completions", json={**body, "stream": True}) as response,
        ):
            lines = (line for line in response.iter_lines() if line)
            tokens = [next(lines), next(lines)]
            assert all(line.startswith("data: {") for line in tokens)
            # The stalled request no longer holds the engine, but its stream stays open.
            wait_until(
                lambda: simulator.value("vllm:num_requests_running") == 0,
                timeout_s=SETTLE_TIMEOUT_S,
            )
            with pytest.raises(httpx.ReadTimeout):
                next(lines)
        # A plain request stalls too: no response until the client gives up.
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/completions", json=body, timeout=0.5)
        wait_until(
            lambda: simulator.value("vllm:num_requests_running") == 0, timeout_s=SETTLE_TIMEOUT_S
        )
    finally:
        http.post("/admin/faults", json={"stall_after_tokens": None})
    assert http.post("/v1/completions", json={**body, "max_tokens": 3}).status_code == 200


def test_startup_delay_and_sigterm(spawn: Callable[..., Simulator]) -> None:
    sim = spawn("--startup-delay-s", "60", "--error-rate", "1.0")
    # The port listens at once; health says 503 until the simulated model load is over.
    assert wait_until(lambda: sim.status("/health"), timeout_s=SETTLE_TIMEOUT_S) == 503
    assert sim.http.post("/v1/chat/completions", json={"messages": []}).status_code == 400
    assert sim.http.get("/metrics").status_code == 200
    returncode = sim.stop()
    # uvicorn shuts down (lifespan included), then re-raises the signal it caught.
    assert returncode in (0, -signal.SIGTERM)
    assert f"simulator for {MODEL} stopped" in sim.log.read_text()


def test_error_rate_flag_fails_requests(spawn: Callable[..., Simulator]) -> None:
    sim = spawn("--startup-delay-s", "0", "--error-rate", "1.0")
    wait_until(lambda: sim.status("/health") == 200, timeout_s=SETTLE_TIMEOUT_S)
    response = sim.http.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == 500


def test_an_unknown_model_type_exits_with_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simulator", "--port", "1",
         "--served-model-name", MODEL, "--model-type", "no-such-model"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown --model-type 'no-such-model'" in result.stderr
    assert MODEL_TYPE in result.stderr
