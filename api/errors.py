"""Domain errors of the API layer, and their mapping to HTTP in one place.

Hierarchy::

    AifError                     500  internal_error
    ├── InvalidRequest           422  invalid_request_error (names the field in ``param``)
    │   └── MalformedBody        400  invalid_request_error (JSON that does not parse)
    ├── PayloadTooLarge          413  invalid_request_error
    ├── Unauthorized             401  authentication_error (no key, or not a valid one)
    ├── Forbidden                403  permission_error (the key's scope or models forbid it)
    ├── KeyNotFound              404  not_found_error
    ├── ModelNotFound            404  not_found_error
    ├── ModelConflict            409  conflict_error (duplicate name, model being deleted)
    ├── ModelNotReady            503  service_unavailable_error (Retry-After when known)
    ├── Overloaded               429  rate_limit_error (Retry-After)
    │   ├── RateLimited          429  rate_limit_error: the key's rpm or tpm (Retry-After)
    │   └── InsufficientQuota    429  insufficient_quota (OpenAI's type and code): the key's
    │                                 token budget is used up until its period resets
    ├── UpstreamError            502  upstream_error
    ├── StoreUnavailableError    503  service_unavailable_error (Retry-After)
    └── InsufficientStorage      507  insufficient_storage_error

The store's failures (:mod:`domain.errors`) and anything unexpected become these in
:func:`from_exception`, the one place a Python exception becomes an HTTP answer: a locked or
unreachable store is a 503 with ``Retry-After``, a full disk a 507 that says so, a damaged
store file a 500 that names the file and how to recover, anything else a 500 that points at
the server log. Nothing answers text/plain.

Every error body on ``/v1/*`` has OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``, so the product's clients and OpenAI SDKs both read it. Validation failures also
keep FastAPI's ``detail`` list, which names each field and rule.
"""

from __future__ import annotations

import errno
import logging
import math
import sqlite3
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from domain.errors import StoreCorrupt, StoreError, StoreFull, StoreUnavailable

logger = logging.getLogger(__name__)


class AifError(Exception):
    status_code = 500
    error_type = "internal_error"
    # The body's ``code``: the status, unless OpenAI names the error (``insufficient_quota``).
    error_code: str | None = None

    def __init__(
        self, message: str, *, param: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        # Sent as Retry-After (whole seconds, at least 1) when set.
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"retry-after": str(max(1, math.ceil(self.retry_after_s)))}

    def body(self) -> dict[str, Any]:
        code = self.error_code or self.status_code
        return error_body(self.message, self.error_type, code, self.param)


class InvalidRequest(AifError):
    status_code = 422
    error_type = "invalid_request_error"


class MalformedBody(InvalidRequest):
    status_code = 400


class PayloadTooLarge(AifError):
    status_code = 413
    error_type = "invalid_request_error"


class Unauthorized(AifError):
    status_code = 401
    error_type = "authentication_error"

    @property
    def headers(self) -> dict[str, str]:
        return {"www-authenticate": "Bearer"}


class Forbidden(AifError):
    status_code = 403
    error_type = "permission_error"


class KeyNotFound(AifError):
    status_code = 404
    error_type = "not_found_error"


class AcceleratorNotFound(AifError):
    status_code = 404
    error_type = "not_found_error"


class ModelNotFound(AifError):
    status_code = 404
    error_type = "not_found_error"


class ModelConflict(AifError):
    status_code = 409
    error_type = "conflict_error"


class PreconditionFailed(AifError):
    """``If-Match`` named a version the model no longer has."""

    status_code = 412
    error_type = "precondition_failed_error"


class ModelNotReady(AifError):
    status_code = 503
    error_type = "service_unavailable_error"


class Overloaded(AifError):
    status_code = 429
    error_type = "rate_limit_error"


class RateLimited(Overloaded):
    """A key's own limit, not the model's capacity."""


class InsufficientQuota(Overloaded):
    """A key's token budget is used up: OpenAI's answer, which its clients do not retry."""

    error_type = "insufficient_quota"
    error_code = "insufficient_quota"


class UpstreamError(AifError):
    status_code = 502
    error_type = "upstream_error"


class StoreUnavailableError(AifError):
    status_code = 503
    error_type = "service_unavailable_error"


class InsufficientStorage(AifError):
    status_code = 507
    error_type = "insufficient_storage_error"


def _store_failure(exc: StoreError) -> AifError:
    if isinstance(exc, StoreUnavailable):
        return StoreUnavailableError(exc.message, retry_after_s=exc.retry_after_s)
    if isinstance(exc, StoreFull):
        return InsufficientStorage(exc.message)
    if isinstance(exc, StoreCorrupt):
        return AifError(exc.message)
    return AifError("the model store failed; the server log has the cause")


def from_exception(exc: BaseException) -> AifError:
    """The API's answer to any exception a route let through (see the module's table)."""
    from api.store import mongo, sqlite  # the store modules do not import this one

    if isinstance(exc, AifError):
        return exc
    if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
        exc = sqlite.translate(exc, Path("the sqlite file"), 0.0)
    elif isinstance(exc, PyMongoError):
        exc = mongo.translate(exc)
    elif isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        exc = StoreFull(f"the disk is full ({exc}): free space, then retry")
    if isinstance(exc, StoreError):
        return _store_failure(exc)
    return AifError("internal error; the server log has the cause")


def log_failure(exc: BaseException, method: str, path: str) -> AifError:
    """One log line for a failed request (a traceback only when it is unexpected)."""
    error = from_exception(exc)
    if isinstance(exc, AifError):
        pass
    elif error.status_code in (503, 507) or isinstance(exc, StoreError):
        logger.warning("request failed method=%s path=%s: %s", method, path, error.message)
    else:
        logger.error("request failed method=%s path=%s", method, path, exc_info=exc)
    return error


def error_body(
    message: str, error_type: str, code: int | str, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    # The HTTP status, or OpenAI's name for the error (``insufficient_quota``).
    code: int | str


class ErrorResponse(BaseModel):
    """Every error aif answers: OpenAI's shape (a 422 or 400 also carries ``detail``)."""

    error: ErrorDetail


# Every status an aif route may answer with an error, documented on every route at once (the
# app's ``responses``), so a route added later is described by construction. Some come from
# the server or the middleware rather than the route: 405 (wrong method), 408 (headers too
# slow), 413 (body too large), 400 (JSON too deep), 503 (past AIF_MAX_CONNECTIONS, store
# locked); a new kind of error is one more line here.
ERROR_STATUSES: dict[int, str] = {
    400: "malformed request: the body is not valid JSON, or is nested too deep",
    401: "no API key, or not a valid one (once any key exists)",
    403: "the key's scope or models do not allow this",
    404: "no such model (or no such route)",
    405: "method not allowed; ``Allow`` lists the methods of the path",
    408: "request headers did not arrive within AIF_HEADER_TIMEOUT_S",
    409: "conflict: a model of that name exists, or the model is being deleted",
    413: "request body larger than this route's limit",
    422: "a field breaks a rule; ``param`` names it and ``detail`` lists every one",
    429: "the key's requests or tokens per minute are used up (or cannot be checked), its token "
    "budget is (insufficient_quota, until the period resets), or the model's instances and "
    "wait queue are full; see Retry-After",
    500: "internal error, or a damaged store file (the message names it and what to do)",
    502: "no instance of the model could answer",
    503: "store locked or unreachable, model not serving, or too many connections; see Retry-After",
    507: "the store's disk is full",
}


def error_responses() -> dict[int | str, dict[str, Any]]:
    """FastAPI's ``responses=`` for :data:`ERROR_STATUSES`."""
    return {
        status: {"description": description, "model": ErrorResponse}
        for status, description in ERROR_STATUSES.items()
    }


def describe_validation_errors(errors: list[Any]) -> tuple[str, str | None]:
    """One readable sentence naming every failing field and its rule, and the first field."""
    messages = []
    for err in errors:
        field = _field_path(err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        messages.append(f"{field}: {msg}")
    first = _field_path(errors[0].get("loc", ())) if errors else None
    return "; ".join(messages), first


def _to_response(exc: AifError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def _aif_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AifError)
    return _to_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError | ValidationError)
    errors = list(exc.errors())
    error: AifError
    if any(err.get("type") == "json_invalid" for err in errors):
        reason = errors[0].get("ctx", {}).get("error", "")
        error = MalformedBody(f"request body is not valid JSON: {reason}".strip())
    else:
        message, param = describe_validation_errors(errors)
        error = InvalidRequest(message, param=param)
    content = error_body(error.message, error.error_type, error.status_code, error.param)
    # FastAPI's own list rides beside the OpenAI-shaped body: one entry per field and rule.
    content["detail"] = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}
        for err in errors
    ]
    return JSONResponse(content, status_code=error.status_code)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (the router names only the first route's)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]
    return ", ".join(allowed)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = {404: "not_found_error", 503: "service_unavailable_error"}.get(exc.status_code)
    if kind is None:
        kind = "invalid_request_error" if 400 <= exc.status_code < 500 else "internal_error"
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return JSONResponse(
        error_body(str(exc.detail), kind, exc.status_code),
        status_code=exc.status_code,
        headers=headers,
    )


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    return _to_response(log_failure(exc, request.method, request.url.path))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AifError, _aif_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(OSError, _store_error)
    app.add_exception_handler(sqlite3.Error, _store_error)
    app.add_exception_handler(PyMongoError, _store_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
