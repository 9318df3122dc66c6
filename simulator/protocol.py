"""The OpenAI-compatible wire format of the simulator, shaped as vLLM's server shapes it.

Request models accept unknown fields (``extra="allow"``), as vLLM does, so clients may send
sampling options the simulator ignores. Response bodies and stream chunks are plain dicts
built by the functions below. Serving requests is left to
:mod:`simulator.completions`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simulator.text import render_chat

OWNED_BY = "aif-simulator"
Json = dict[str, Any]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Open):
    include_usage: bool = False


class ContentPart(_Open):
    type: str
    text: str | None = None


class ChatMessage(_Open):
    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(part.text for part in self.content if part.text)


class _GenerationRequest(_Open):
    model: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False
    seed: int | None = None
    n: int | None = 1

    @model_validator(mode="after")
    def _one_choice(self) -> _GenerationRequest:
        if self.n not in (None, 1):
            raise ValueError("only n=1 is supported by the simulator")
        return self

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def requested_max_tokens(self) -> int | None:
        # OpenAI's newer field wins, as in vLLM.
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    def prompt_text(self) -> str:
        return render_chat([(message.role, message.text()) for message in self.messages])


class CompletionRequest(_GenerationRequest):
    prompt: str | list[int] | list[str] | list[list[int]]

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        _single_prompt(self.prompt)
        return self

    def prompt_value(self) -> str | list[int]:
        """The single prompt, as text or as token ids."""
        return _single_prompt(self.prompt)


def _single_prompt(prompt: str | list[int] | list[str] | list[list[int]]) -> str | list[int]:
    if isinstance(prompt, str):
        single: str | list[int] = prompt
    elif not prompt or isinstance(prompt[0], int):
        single = [token for token in prompt if isinstance(token, int)]
    elif len(prompt) != 1:
        raise ValueError("batched prompts are not supported by the simulator")
    else:
        first = prompt[0]
        single = first if isinstance(first, str) else list(first)
    if not single:
        raise ValueError("prompt must not be empty")
    return single


class FaultsUpdate(BaseModel):
    """Body of ``POST /admin/faults``; fields left out keep their value."""

    model_config = ConfigDict(extra="forbid")

    error_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    stall_after_tokens: int | None = Field(default=None, ge=0)
    healthy: bool | None = None
    # True: the card fails, as an NPU/GPU does: a device error is logged and the engine exits.
    device_fault: bool | None = None


def new_id(kind: Literal["chat", "text"]) -> str:
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> Json:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    request_id: str, created: int, model: str, content: str, finish_reason: str, used: Json
) -> Json:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": used,
    }


def text_completion(
    request_id: str, created: int, model: str, text: str, finish_reason: str, used: Json
) -> Json:
    return {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": used,
    }


def chat_chunk(
    request_id: str, created: int, model: str, delta: Json, finish_reason: str | None = None
) -> Json:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def text_chunk(
    request_id: str, created: int, model: str, text: str, finish_reason: str | None = None
) -> Json:
    return {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk(request_id: str, created: int, model: str, kind: str, used: Json) -> Json:
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {
        "id": request_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": used,
    }


def model_list(served_model_name: str, max_model_len: int, created: int | None = None) -> Json:
    return {
        "object": "list",
        "data": [
            {
                "id": served_model_name,
                "object": "model",
                "created": created if created is not None else int(time.time()),
                "owned_by": OWNED_BY,
                "root": served_model_name,
                "parent": None,
                "max_model_len": max_model_len,
                "permission": [],
            }
        ],
    }
