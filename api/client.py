"""An HTTP client of a running aif's ``/v1/models``, for the ``aif models|apply|diff`` commands.

It speaks the API as any script would (``Authorization: Bearer``, ``ETag`` and ``If-Match``)
and turns every refusal into :class:`ApiError` carrying the API's own one-line message, or,
for 401 and 403, a sentence saying whether the key was missing or refused.
"""

from __future__ import annotations

import builtins
import os
from pathlib import Path
from typing import Any

import httpx

# The address ``aif serve`` listens on by default.
DEFAULT_URL = "http://127.0.0.1:8080"
# Long enough for a store busy with another writer (its busy timeout is 10 s), short enough
# that a pipeline fails rather than hangs on a server that does not answer.
REQUEST_TIMEOUT_S = 30.0

Model = dict[str, Any]


class ApiError(Exception):
    """A request aif refused or could not answer; ``message`` is one line for the user."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def read_key(key: str | None, key_file: Path | None) -> str | None:
    """The key given on the command line, else in a file (``--api-key-file``), else none."""
    if key:
        return key.strip()
    if key_file is not None:
        try:
            return key_file.read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ApiError(f"cannot read the API key file {key_file}: {exc.strerror}") from exc
    return os.environ.get("AIF_API_KEY") or None


class AifClient:
    """Blocking calls to one aif at ``url``, with ``key`` when given."""

    def __init__(self, url: str, key: str | None, transport: httpx.BaseTransport | None = None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = url.rstrip("/")
        self._has_key = key is not None
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=REQUEST_TIMEOUT_S, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AifClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(f"cannot reach aif at {self.url}: {exc}") from exc
        if response.is_success:
            return response
        raise ApiError(self._refusal(response), response.status_code)

    def _refusal(self, response: httpx.Response) -> str:
        try:
            message = str(response.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = response.text.strip() or response.reason_phrase
        if response.status_code == 401:
            if not self._has_key:
                return f"no API key given (--api-key, --api-key-file or AIF_API_KEY): {message}"
            return f"the API key was refused: {message}"
        if response.status_code == 403:
            return f"the API key is not allowed to do this: {message}"
        return message

    def list(self, labels: dict[str, str] | None = None) -> list[Model]:
        params = [("label", f"{k}={v}") for k, v in (labels or {}).items()]
        models: list[Model] = self._call("GET", "/v1/models", params=params).json()["models"]
        return models

    def get(self, ref: str) -> Model:
        model: Model = self._call("GET", f"/v1/models/{ref}").json()["model"]
        return model

    def find(self, ref: str) -> Model | None:
        """The model, or None when there is none of that name."""
        try:
            return self.get(ref)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, body: dict[str, Any]) -> Model:
        model: Model = self._call("POST", "/v1/models", json=body).json()["model"]
        return model

    def update(self, ref: str, patch: dict[str, Any], if_match: str | None = None) -> Model:
        headers = {"If-Match": f'"{if_match}"'} if if_match is not None else {}
        response = self._call("PUT", f"/v1/models/{ref}", json=patch, headers=headers)
        model: Model = response.json()["model"]
        return model

    def delete(self, ref: str, if_match: str | None = None) -> Model:
        headers = {"If-Match": f'"{if_match}"'} if if_match is not None else {}
        model: Model = self._call("DELETE", f"/v1/models/{ref}", headers=headers).json()["model"]
        return model

    def events(self, ref: str, limit: int = 100) -> builtins.list[dict[str, Any]]:
        response = self._call("GET", f"/v1/models/{ref}/events", params={"limit": limit})
        events: builtins.list[dict[str, Any]] = response.json()["events"]
        return events

    def accelerators(self) -> dict[str, Any]:
        inventory: dict[str, Any] = self._call("GET", "/v1/accelerators").json()
        return inventory

    def quarantine(self, node: str, index: int, reason: str) -> dict[str, Any]:
        path = f"/v1/accelerators/{node}/{index}/quarantine"
        change: dict[str, Any] = self._call("POST", path, json={"reason": reason}).json()
        return change

    def release(self, node: str, index: int) -> dict[str, Any]:
        change: dict[str, Any] = self._call(
            "POST", f"/v1/accelerators/{node}/{index}/release"
        ).json()
        return change
