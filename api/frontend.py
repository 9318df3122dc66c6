"""The frontend: aif's one API entry, ``/v1/models`` lifecycle and the OpenAI endpoint.

Lifecycle requests go to the model registry (:class:`~api.services.models.ModelService`),
which records desired state in the store and returns; the model-job-executor deploys it.
Inference is handed to a chat-job-executor, as the product's frontend forwards user requests:

- in this process (``aif serve``, or ``aif frontend`` with ``AIF_CHAT_EXECUTOR_URL`` unset),
  the frontend calls it directly, with no extra hop;
- on a cluster, ``AIF_CHAT_EXECUTOR_URL`` names the chat-job-executor Service and
  :class:`ChatForwarder` passes each request there untouched and streams the answer back,
  so the chat path scales out apart from the lifecycle API.

Routing requests to engine instances is the chat-job-executor's (:mod:`api.chat_job_executor`).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import aiohttp

from api.errors import UpstreamError
from api.relay import Exchange, UpstreamClient
from api.services.models import ModelService
from domain.keys import PRIORITY_HEADER
from domain.settings import Settings

logger = logging.getLogger(__name__)


class Inference(Protocol):
    """Whoever serves an inference request: a chat-job-executor, here or elsewhere."""

    async def serve(
        self, exchange: Exchange, path: str, request: dict[str, Any], body: bytes
    ) -> None:
        """Answer ``exchange``: ``body`` (``request`` parsed) is an OpenAI request for ``path``.

        Errors before any byte of the answer are raised as :class:`~api.errors.AifError`.
        """
        ...


class ChatForwarder:
    """Passes inference requests to a remote chat-job-executor and streams its answers back.

    Its answers, errors included, come back as they are: the chat-job-executor already speaks
    the API's words. Only an unreachable chat-job-executor is the frontend's own 502. The
    caller's ``Authorization`` header is passed on: the chat-job-executor checks the key too,
    and counts its limits (the frontend does not, so each request is counted once); and
    ``x-priority``, for the chat-job-executor's queue.
    """

    def __init__(self, url: str, client: UpstreamClient, *, first_byte_s: float) -> None:
        self._url = url.rstrip("/")
        self._client = client
        self._first_byte_s = first_byte_s

    async def serve(
        self, exchange: Exchange, path: str, request: dict[str, Any], body: bytes
    ) -> None:
        # The key goes along: the chat-job-executor checks it and counts its limits; and
        # a lowered priority, which its queue reads.
        sent: dict[str, str] = {}
        for name in (b"authorization", PRIORITY_HEADER):
            value = exchange.header(name)
            if value:
                sent[name.decode()] = value
        try:
            upstream = await self._client.post(
                self._url + path, body, first_byte_s=self._first_byte_s, headers=sent or None
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.warning("chat-job-executor unreachable url=%s error=%r", self._url, exc)
            raise UpstreamError(f"the chat-job-executor at {self._url} cannot be reached") from exc
        await exchange.relay(upstream, instance=self._url)


class Frontend:
    """The role: the registry for the lifecycle routes, and where inference goes.

    ``inference`` is a chat-job-executor in this process (started and stopped as its own role),
    or, when None, a :class:`ChatForwarder` to ``chat_executor_url`` that this role owns.
    """

    def __init__(
        self, models: ModelService, *, inference: Inference | None, settings: Settings
    ) -> None:
        self.models = models
        self._client: UpstreamClient | None = None
        if inference is None:
            if not settings.chat_executor_url:
                raise ValueError("a frontend needs a chat-job-executor: in-process or by URL")
            self._client = UpstreamClient(
                connect_timeout_s=settings.upstream_connect_timeout_s,
                keepalive_s=settings.upstream_keepalive_s,
            )
            inference = ChatForwarder(
                settings.chat_executor_url,
                self._client,
                first_byte_s=settings.upstream_first_byte_timeout_s,
            )
        self.inference: Inference = inference

    async def start(self) -> None:
        if self._client is not None:
            await self._client.start()
        logger.info("frontend serving inference via %s", type(self.inference).__name__)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
