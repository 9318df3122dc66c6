"""An answer from upstream (an instance, or a chat-job-executor), streamed back as it comes.

Shared by the chat-job-executor, which forwards to engine instances, and the frontend, which
forwards to a chat-job-executor elsewhere. Choosing where to send a request is theirs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

# Waiting for a first byte can take long under load; connecting to a local or in-cluster
# instance should not.
CONNECT_TIMEOUT_S = 5.0
# Headers that describe one hop's connection, not the answer (RFC 9110 section 7.6.1).
HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


def upstream_headers() -> dict[str, str]:
    """Headers of a forwarded inference request."""
    # Uncompressed: bytes pass through as they come, with no decoding on the way.
    return {"content-type": "application/json", "accept-encoding": "identity"}


class UpstreamResponse:
    """An answer from upstream, still streaming."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status_code = response.status_code
        self.headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP_HEADERS}

    async def body(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_bytes():
                yield chunk
        finally:
            await self._response.aclose()
