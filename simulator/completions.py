"""Serving one completion: from a validated request to a response body or an SSE stream.

:meth:`CompletionService.prepare` checks the model name, sizes the prompt, fixes how many
tokens the request will generate and applies the injected error rate, raising the errors of
:mod:`simulator.errors`. :meth:`CompletionService.complete` and
:meth:`CompletionService.stream` then submit it to the engine and turn its tokens into words,
honouring an injected stall: after ``stall_after_tokens`` tokens the request's sequence is
aborted (freeing its KV blocks) and the request hangs until the client goes away. Routing and
HTTP framing are left to :mod:`simulator.server`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, NoReturn

from simulator import protocol
from simulator.config import DEFAULT_MAX_TOKENS, EngineConfig, Faults
from simulator.engine import Engine, EngineStopped, Generation, GenerationRequest
from simulator.errors import (
    BadRequest,
    EngineNotReady,
    InjectedFailure,
    ModelNotFound,
    SimulatorError,
)
from simulator.protocol import ChatCompletionRequest, CompletionRequest, Json
from simulator.sequence import TokenEvent
from simulator.text import (
    WordWriter,
    choose_output_tokens,
    estimate_tokens,
    prompt_block_hashes,
    request_rng,
    token_block_hashes,
)

logger = logging.getLogger(__name__)

Kind = Literal["chat", "text"]


@dataclass(frozen=True)
class PreparedRequest:
    """A request that passed every check, with its fate decided."""

    kind: Kind
    engine_request: GenerationRequest
    created: int
    model: str
    writer: WordWriter
    include_usage: bool

    @property
    def request_id(self) -> str:
        return self.engine_request.request_id

    @property
    def prompt_tokens(self) -> int:
        return self.engine_request.prompt_tokens


class _Stalled(Exception):
    """The injected stall point was reached; the request must hang."""


class CompletionService:
    def __init__(self, engine: Engine, config: EngineConfig, faults: Faults, seed: int = 0):
        self._engine = engine
        self._config = config
        self._faults = faults
        self._seed = seed

    def prepare(self, request: ChatCompletionRequest | CompletionRequest) -> PreparedRequest:
        config = self._config
        if request.model is not None and request.model != config.served_model_name:
            raise ModelNotFound(request.model)
        kind: Kind
        if isinstance(request, ChatCompletionRequest):
            kind, text = "chat", request.prompt_text()
            prompt_tokens = estimate_tokens(text)
            block_hashes = prompt_block_hashes(text, config.block_size)
        else:
            kind, prompt = "text", request.prompt_value()
            if isinstance(prompt, str):
                text, prompt_tokens = prompt, estimate_tokens(prompt)
                block_hashes = prompt_block_hashes(prompt, config.block_size)
            else:
                text, prompt_tokens = ",".join(map(str, prompt)), len(prompt)
                block_hashes = token_block_hashes(prompt, config.block_size)
        if prompt_tokens >= config.max_model_len:
            raise BadRequest(
                f"This model's maximum context length is {config.max_model_len} tokens. "
                f"However, your request has {prompt_tokens} input tokens. "
                "Please reduce the length of the input.",
                param="messages" if kind == "chat" else "prompt",
            )
        requested = request.requested_max_tokens()
        max_tokens = min(
            requested if requested is not None else DEFAULT_MAX_TOKENS,
            config.max_model_len - prompt_tokens,
        )
        rng = request_rng(self._seed, request.seed, text)
        output_tokens, reaches_max = choose_output_tokens(
            rng, max_tokens, min(request.min_tokens, max_tokens), request.ignore_eos
        )
        if not self._engine.fits(prompt_tokens, output_tokens):
            raise BadRequest("The request needs more KV cache than this engine has.")
        if not self._engine.running:
            raise EngineNotReady("The engine is not running.")
        if self._faults.should_fail():
            raise InjectedFailure()
        return PreparedRequest(
            kind=kind,
            engine_request=GenerationRequest(
                request_id=protocol.new_id(kind),
                prompt_tokens=prompt_tokens,
                output_tokens=output_tokens,
                finish_reason="length" if reaches_max else "stop",
                block_hashes=block_hashes,
            ),
            created=int(time.time()),
            model=config.served_model_name,
            writer=WordWriter(rng),
            include_usage=request.include_usage,
        )

    async def complete(
        self, prepared: PreparedRequest, disconnected: Callable[[], Awaitable[None]]
    ) -> Json | None:
        """The whole response body, or None if the client went away first."""
        collect = asyncio.ensure_future(self._collect(prepared))
        watch = asyncio.ensure_future(disconnected())
        try:
            done, _ = await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (collect, watch):
                task.cancel()
            await asyncio.gather(collect, watch, return_exceptions=True)
        if collect not in done:
            logger.debug("client left before %s completed", prepared.request_id)
            return None
        return collect.result()

    async def stream(self, prepared: PreparedRequest) -> AsyncIterator[str]:
        """Server-sent events: a chunk per token as the engine produces it, then ``[DONE]``."""
        rid, created, model = prepared.request_id, prepared.created, prepared.model
        kind = prepared.kind
        generated = 0
        finish_reason: str | None = None
        try:
            generation = self._submit(prepared)
        except SimulatorError as error:
            yield _sse(error.body())
            yield "data: [DONE]\n\n"
            return
        async with generation:
            async for event in generation:
                try:
                    self._check(event)
                except _Stalled:
                    await self._hang(generation, prepared, generated)
                except SimulatorError as error:
                    yield _sse(error.body())
                    yield "data: [DONE]\n\n"
                    return
                if generated == 0 and kind == "chat":
                    # As vLLM, the role arrives with the first token, not before it.
                    delta: Json = {"role": "assistant", "content": ""}
                    yield _sse(protocol.chat_chunk(rid, created, model, delta))
                token = prepared.writer.next_token()
                generated += 1
                if kind == "chat":
                    chunk = protocol.chat_chunk(rid, created, model, {"content": token})
                else:
                    chunk = protocol.text_chunk(rid, created, model, token)
                yield _sse(chunk)
                finish_reason = event.finish_reason
        if kind == "chat":
            yield _sse(protocol.chat_chunk(rid, created, model, {}, finish_reason))
        else:
            yield _sse(protocol.text_chunk(rid, created, model, "", finish_reason))
        if prepared.include_usage:
            used = protocol.usage(prepared.prompt_tokens, generated)
            yield _sse(protocol.usage_chunk(rid, created, model, kind, used))
        yield "data: [DONE]\n\n"

    async def _collect(self, prepared: PreparedRequest) -> Json:
        tokens: list[str] = []
        finish_reason = "stop"
        async with self._submit(prepared) as generation:
            async for event in generation:
                try:
                    self._check(event)
                except _Stalled:
                    await self._hang(generation, prepared, len(tokens))
                tokens.append(prepared.writer.next_token())
                finish_reason = event.finish_reason or finish_reason
        used = protocol.usage(prepared.prompt_tokens, len(tokens))
        build = protocol.chat_completion if prepared.kind == "chat" else protocol.text_completion
        text = "".join(tokens)
        rid, created, model = prepared.request_id, prepared.created, prepared.model
        return build(rid, created, model, text, finish_reason, used)

    def _submit(self, prepared: PreparedRequest) -> Generation:
        try:
            return self._engine.generate(prepared.engine_request)
        except EngineStopped:
            raise EngineNotReady("The engine is not running.") from None

    def _check(self, event: TokenEvent) -> None:
        if event.finish_reason == "abort":
            raise EngineNotReady("The engine stopped before the request completed.")
        stall_after = self._faults.stall_after_tokens
        if stall_after is not None and event.index >= stall_after:
            raise _Stalled

    async def _hang(self, generation: Generation, prepared: PreparedRequest, sent: int) -> NoReturn:
        """Abort the sequence and wait until the request is cancelled (client gone)."""
        generation.close()
        logger.info("injected stall: %s hangs after %d tokens", prepared.request_id, sent)
        await asyncio.Event().wait()  # never set: only cancellation ends the wait
        raise AssertionError("unreachable")


def _sse(payload: Json) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
