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

import httpx

from api.errors import UpstreamError
from api.services.models import ModelService
from api.upstream import CONNECT_TIMEOUT_S, UpstreamResponse, upstream_headers

logger = logging.getLogger(__name__)


class Inference(Protocol):
    """Whoever serves an inference request: a chat-job-executor, here or elsewhere."""

    async def forward(self, path: str, request: dict[str, Any], body: bytes) -> UpstreamResponse:
        """Send ``body`` (``request`` parsed) to be served and return the streaming answer."""
        ...


class ChatForwarder:
    """Passes inference requests to a remote chat-job-executor and streams its answers back.

    Its answers, errors included, come back as they are: the chat-job-executor already speaks
    the API's words. Only an unreachable chat-job-executor is the frontend's own 502.
    """

    def __init__(
        self, url: str, *, timeout_s: float, client: httpx.AsyncClient | None = None
    ) -> None:
        self._url = url.rstrip("/")
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )

    async def forward(self, path: str, request: dict[str, Any], body: bytes) -> UpstreamResponse:
        upstream = self._client.build_request(
            "POST", self._url + path, content=body, headers=upstream_headers()
        )
        try:
            return UpstreamResponse(await self._client.send(upstream, stream=True))
        except httpx.TransportError as exc:
            logger.warning("chat-job-executor unreachable url=%s error=%r", self._url, exc)
            raise UpstreamError(f"the chat-job-executor at {self._url} cannot be reached") from exc

    async def close(self) -> None:
        await self._client.aclose()


class Frontend:
    """The role: the registry for the lifecycle routes, and where inference goes.

    ``inference`` is a chat-job-executor in this process (started and stopped as its own role),
    or, when None, a :class:`ChatForwarder` to ``chat_executor_url`` that this role owns.
    """

    def __init__(
        self,
        models: ModelService,
        *,
        inference: Inference | None,
        chat_executor_url: str = "",
        upstream_timeout_s: float = 600.0,
    ) -> None:
        self.models = models
        self._forwarder: ChatForwarder | None = None
        if inference is None:
            if not chat_executor_url:
                raise ValueError("a frontend needs a chat-job-executor: in-process or by URL")
            self._forwarder = ChatForwarder(chat_executor_url, timeout_s=upstream_timeout_s)
            inference = self._forwarder
        self.inference: Inference = inference

    async def start(self) -> None:
        logger.info("frontend serving inference via %s", type(self.inference).__name__)

    async def stop(self) -> None:
        if self._forwarder is not None:
            await self._forwarder.close()
