"""Who is calling: API keys checked from memory, per-key limits, and the ``/v1`` guard.

:class:`KeyRing` holds every valid key by the SHA-256 of its secret, so checking a request is one
hash and one dict lookup, with no store read and no await: the inference fast path
(:class:`api.routes.chat.InferenceEndpoint`) and :class:`KeyCheck` (the framework's routes) both
call :meth:`KeyRing.authenticate`. A secret is never compared with another: it is hashed and looked
up, so timing says nothing about how close a guess is. The ring loads the keys as the process starts
and then reads only the store's :meth:`~domain.store.ModelStore.keys_version` every
``AIF_KEYS_REFRESH_S`` (1 s), reloading the keys when it changed: a key created or revoked by
another process sharing the store takes effect here within that bound. A key updated or revoked
through this process takes effect at once.

Enforcement: while no key exists (no ``AIF_ADMIN_KEY``, nothing in the store) every request is
let through as ``anonymous``, as before keys existed. Once one exists, ``/v1/*`` needs a
valid ``Authorization: Bearer <key>``; revoking every key does not open the API again.

Limits: each :class:`Principal` carries its key's ``rpm``, ``tpm`` and token budget as the
key's latest record says (:class:`~api.limits.KeyLimits`, rebuilt whenever the ring reloads or
hears of a change), and the process's :class:`Limiter`. :meth:`Principal.admit` counts a request
before it is served and :meth:`Principal.charge` adds each answer's ``usage`` (or its streamed
events, when it reports none) once it ends; what they mean (a sliding minute, a budget per UTC
day or month) and how every gateway process shares one count (Redis, or the store) is
:mod:`api.limits`'. A key with no limits and no budget makes no counter call. Refusals are 429s
with ``Retry-After``: ``rate_limit_error`` for rpm and tpm, ``insufficient_quota`` for the budget.
:attr:`Principal.flow` is a caller's weight and priority class, for the gateway's wait queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import AifError, Forbidden, Unauthorized, from_exception
from api.limits import Counters, KeyLimits
from domain.keys import (
    ANONYMOUS,
    BOOTSTRAP_KEY_ID,
    SHARED_FLOW,
    ApiKey,
    Flow,
    KeyScope,
    hash_secret,
)
from domain.store import ModelStore

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class Principal:
    """Who a request comes from, and what it may do."""

    key_id: str
    name: str
    scope: KeyScope
    # Model names it may use and see; None: every model.
    models: frozenset[str] | None = None
    # The key's limits as its latest record says (None: none), and where they are counted.
    limits: KeyLimits | None = None
    counters: Limiter | None = field(default=None, compare=False)
    # Its requests in a saturated model's queue; callers with no stored key share one.
    flow: Flow = SHARED_FLOW

    @property
    def admin(self) -> bool:
        return self.scope == "admin"

    def may_use(self, model_name: str) -> bool:
        return self.models is None or model_name in self.models

    def require_admin(self, what: str) -> None:
        if not self.admin:
            raise Forbidden(f"{what} needs an admin key; key {self.name!r} is an inference key")

    def require_model(self, model_name: Any) -> None:
        if isinstance(model_name, str) and not self.may_use(model_name):
            raise Forbidden(f"key {self.name!r} may not use model {model_name!r}", param="model")

    async def admit(self) -> None:
        """Count one request against the key's limits, or raise why it is refused (429)."""
        if self.limits is not None and self.counters is not None:
            await self.counters.admit(self.limits)

    async def charge(self, tokens: int) -> None:
        """Add an answer's tokens to the key's minute and budget, once it ended."""
        if self.limits is not None and self.counters is not None and tokens > 0:
            await self.counters.charge(self.limits, tokens)


# Every request while no key is configured: allowed everything, as before keys existed.
OPEN = Principal(ANONYMOUS, ANONYMOUS, "admin")


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    for key, value in headers:
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class Limiter:
    """Where principals count their limits: the process's :class:`~api.limits.Counters`,
    on its clock (wall time, shared by every process; tests set a fake one)."""

    def __init__(self, counters: Counters, clock: Clock = time.time) -> None:
        self.counters = counters
        self.clock = clock

    async def admit(self, limits: KeyLimits) -> None:
        await self.counters.admit(limits, self.clock())

    async def charge(self, limits: KeyLimits, tokens: int) -> None:
        await self.counters.charge(limits, tokens, self.clock())


class KeyRing:
    """Every valid key by the hash of its secret, kept fresh from the store (see module)."""

    def __init__(
        self,
        store: ModelStore,
        *,
        admin_secret: str | None = None,
        refresh_s: float = 1.0,
        limiter: Limiter | None = None,
    ) -> None:
        self._store = store
        self._admin_hash = hash_secret(admin_secret) if admin_secret else None
        self._refresh_s = refresh_s
        # None: keys' limits are not counted (tools that only check keys).
        self._limiter = limiter
        self._by_hash: dict[str, Principal] = {}
        self._loaded: list[ApiKey] = []
        self._enforcing = self._admin_hash is not None
        self._version: str | None = None
        # What this process did since its last load: applied over any load older than it.
        self._added: dict[str, ApiKey] = {}
        self._revoked: set[str] = set()
        # Keys updated here, with the count of this process's updates when each was made.
        self._updated: dict[str, tuple[int, ApiKey]] = {}
        self._updates = 0
        self._lock = threading.Lock()
        # Why the keys could not be loaded at start, answered to every request until they are.
        self._failure: AifError | None = None
        self._task: asyncio.Task[None] | None = None
        self._apply([])

    # --- loading ---------------------------------------------------------------------------

    def load(self) -> None:
        """Read the keys from the store now (blocking)."""
        begun = self._updates
        version = self._store.keys_version()
        keys = self._store.list_keys()
        with self._lock:
            # Updates made before this read are in what it read.
            self._updated = {k: u for k, u in self._updated.items() if u[0] > begun}
            self._version = version
            self._loaded = keys
            self._apply(keys)
            self._failure = None

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self.load)
        except Exception as exc:
            # Fail closed: nobody but the bootstrap admin gets in until the keys load.
            self._failure = from_exception(exc)
            logger.error("API keys cannot be loaded: %s", self._failure.message)
        self._task = asyncio.create_task(self._refresh_loop(), name="key-ring-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                version = await asyncio.to_thread(self._store.keys_version)
                if version != self._version or self._failure is not None:
                    await asyncio.to_thread(self.load)
            except Exception:
                logger.warning("API keys refresh failed; keeping the keys loaded", exc_info=True)

    def _apply(self, keys: list[ApiKey]) -> None:
        stored = {key.id: key for key in keys}
        for key_id in list(self._added):
            if key_id in stored:
                del self._added[key_id]
        every = {**stored, **self._added, **{k: key for k, (_, key) in self._updated.items()}}
        by_hash: dict[str, Principal] = {}
        for key in every.values():
            if key.revoked or key.id in self._revoked:
                continue
            by_hash[key.secret_hash] = Principal(
                key.id,
                key.name,
                key.scope,
                None if key.models is None else frozenset(key.models),
                KeyLimits.of(key),
                self._limiter,
                key.flow,
            )
        if self._admin_hash is not None:
            by_hash[self._admin_hash] = Principal(BOOTSTRAP_KEY_ID, BOOTSTRAP_KEY_ID, "admin")
        self._by_hash = by_hash
        self._enforcing = self._enforcing or bool(every)

    # --- changes made in this process: effective at once ------------------------------------

    def added(self, key: ApiKey) -> None:
        with self._lock:
            self._added[key.id] = key
            self._apply(self._loaded)

    def updated(self, key: ApiKey) -> None:
        with self._lock:
            self._updates += 1
            self._updated[key.id] = (self._updates, key)
            self._apply(self._loaded)

    def revoked(self, key_id: str) -> None:
        with self._lock:
            self._revoked.add(key_id)
            self._apply(self._loaded)

    # --- checking a request ---------------------------------------------------------------

    @property
    def enforcing(self) -> bool:
        return self._enforcing

    def authenticate(self, headers: Iterable[tuple[bytes, bytes]]) -> Principal:
        """Who sent ``headers``; raises Unauthorized (or why keys are unknown) otherwise."""
        if not self._enforcing and self._failure is None:
            return OPEN
        token = bearer_token(headers)
        # Looked up by the SHA-256 of what was sent: how long the lookup takes depends on
        # that digest, never on how much of a real secret the guess shares.
        principal = None if token is None else self._by_hash.get(hash_secret(token))
        if principal is not None:
            return principal
        if self._failure is not None:
            raise self._failure
        if token is None:
            raise Unauthorized(
                "no API key: send one as 'Authorization: Bearer <key>' (aif keys create makes one)"
            )
        raise Unauthorized("the API key is not valid: unknown or revoked")


def _answer(error: AifError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


class KeyCheck:
    """The framework routes' guard: ``/v1/*`` (and ``/metrics`` when asked) need a key.

    The caller lands in ``request.state.principal``; what each route allows is checked by
    the route's dependencies (:mod:`api.deps`). Runs before the body is read.
    """

    def __init__(self, app: ASGIApp, state: Any, *, protect_metrics: bool) -> None:
        self.app = app
        self._state = state
        self._protected = ("/v1/", "/metrics", "/discovery/") if protect_metrics else ("/v1/",)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self._protected):
            await self.app(scope, receive, send)
            return
        ring: KeyRing | None = getattr(self._state, "keys", None)
        try:
            if ring is None:
                raise AifError("the API keys are not loaded yet")
            principal = ring.authenticate(scope["headers"])
            await principal.admit()
        except AifError as error:
            await _answer(error)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
