"""``aif profile MODEL``: measure a serving model's capacity at the SLO and keep it.

With ``AIF_PROFILE_ON_READY``, the model-job-executor does the same once for each model it sees
serving with no capacity measured yet (:class:`ProfileOnReady`).

Reads the model from the store (by name or id), drives a short profile through the gateway
(:mod:`scaler.profile`: concurrency doubling until the SLO is missed, over the model's ready
instances) and writes the result to the record's ``scaling.capacity`` (``source`` "profile"),
where the task-executor-manager starts from it until it has learnt its own and
``GET /v1/models/{id}`` shows it. Nothing is written when the model is not serving or the
profile could not answer a single request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from api.errors import ModelNotFound, ModelNotReady
from domain.presets import instance_capacity
from domain.records import ModelRecord, ModelStatus
from domain.settings import Settings
from domain.store import ModelStore, rewrite
from scaler.profile import (
    DEFAULT_OUTPUT_TOKENS,
    DEFAULT_PROMPT_TOKENS,
    Level,
    Profile,
    ProfileTarget,
    profile,
)

logger = logging.getLogger(__name__)

SERVING = frozenset({ModelStatus.ACTIVE, ModelStatus.UPDATING})


def find_model(store: ModelStore, ref: str) -> ModelRecord:
    record = store.get(ref) or store.get_by_name(ref)
    if record is None:
        raise ModelNotFound(f"no model named or with id {ref!r}")
    return record


def target_of(
    record: ModelRecord, url: str, settings: Settings, api_key: str | None
) -> ProfileTarget:
    if record.status not in SERVING or record.ready_instances < 1:
        raise ModelNotReady(
            f"model {record.name!r} is {record.status.value} with {record.ready_instances} "
            "ready instances: profile a serving model"
        )
    return ProfileTarget(
        url=url.rstrip("/"),
        model=record.name,
        instances=record.ready_instances,
        preset_capacity=instance_capacity(record.type, settings.max_in_flight_per_instance),
        ttft_target_ms=record.slo.target_time_to_first_token_p95,
        tpot_target_ms=record.slo.target_time_per_output_token_p95,
        api_key=api_key,
    )


def keep(store: ModelStore, record: ModelRecord, result: Profile) -> ModelRecord | None:
    """The profile's capacity into the record; None when the model is gone."""

    def write(current: ModelRecord) -> ModelRecord | None:
        if current.deleting:
            return None
        current.scaling.capacity = result.capacity
        current.touch()
        return current

    written = rewrite(store, record.id, write)
    return None if written is None else written[0]


async def profile_model(
    store: ModelStore, settings: Settings, ref: str, url: str, *, api_key: str | None = None,
    step_s: float, prompt_tokens: int, output_tokens: int,
    report: Callable[[Level], None] = lambda level: None,
) -> Profile:  # fmt: skip
    """Profile the model ``ref`` through ``url`` and keep what it measured."""
    record = find_model(store, ref)
    target = target_of(record, url, settings, api_key)
    result = await profile(
        target, step_s=step_s, prompt_tokens=prompt_tokens, output_tokens=output_tokens,
        report=report,
    )  # fmt: skip
    if any(level.answered for level in result.levels):
        keep(store, record, result)
    return result


class ProfileOnReady:
    """The model-job-executor's ``on_serving``: profile each model once, the first time it is
    seen serving without a measured capacity, through ``gateway_url``; in the background, one
    model at a time, so reconciling never waits for it."""

    def __init__(self, store: ModelStore, settings: Settings, gateway_url: str) -> None:
        self._store = store
        self._settings = settings
        self._url = gateway_url
        self._seen: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._one_at_a_time = asyncio.Lock()

    def __call__(self, record: ModelRecord) -> None:
        if record.id in self._seen or record.scaling.capacity.source:
            return
        self._seen.add(record.id)
        task = asyncio.get_running_loop().create_task(self._profile(record.id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _profile(self, model_id: str) -> None:
        async with self._one_at_a_time:
            try:
                result = await profile_model(
                    self._store, self._settings, model_id, self._url,
                    api_key=self._settings.admin_secret(), step_s=self._settings.profile_step_s,
                    prompt_tokens=DEFAULT_PROMPT_TOKENS, output_tokens=DEFAULT_OUTPUT_TOKENS,
                )  # fmt: skip
            except Exception:
                logger.exception("profiling model %s failed; it is scaled without it", model_id)
                return
        capacity = result.capacity
        logger.info(
            "profiled model=%s capacity_per_instance=%s tokens_per_s=%s levels=%d",
            model_id, capacity.concurrency_per_instance, capacity.tokens_per_s,
            len(result.levels),
        )  # fmt: skip

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def run_profile_command(
    settings: Settings, ref: str, url: str, api_key: str | None, step_s: float,
    prompt_tokens: int, output_tokens: int,
) -> int:  # fmt: skip
    """``aif profile``: one line per level, the result, the exit code."""
    from rich.console import Console

    from api.errors import AifError
    from api.store import open_store
    from domain.errors import StoreError

    out, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    try:
        store = open_store(settings)
    except (StoreError, OSError) as exc:
        err.print(f"[red]cannot open the store:[/red] {exc}", highlight=False)
        return 1

    def line(level: Level) -> None:
        out.print(
            f"{level.concurrency:>5} at once: {level.answered} answered, {level.failed} failed, "
            f"TTFT p95 {_ms(level.ttft_p95_ms)}, TPOT p95 {_ms(level.tpot_p95_ms)}, "
            f"{level.tokens_per_s:,.0f} tokens/s",
            highlight=False,
        )

    try:
        result = asyncio.run(
            profile_model(
                store, settings, ref, url, api_key=api_key, step_s=step_s,
                prompt_tokens=prompt_tokens, output_tokens=output_tokens, report=line,
            )
        )  # fmt: skip
    except AifError as exc:
        err.print(f"[red]cannot profile:[/red] {exc}", highlight=False)
        return 2
    finally:
        store.close()
    if not any(level.answered for level in result.levels):
        err.print("[red]no request was answered; nothing kept[/red]", highlight=False)
        return 1
    capacity = result.capacity
    out.print(
        f"capacity at the SLO: {capacity.concurrency_per_instance} requests in flight per "
        f"instance, {capacity.tokens_per_s} tokens/s; kept in scaling.capacity",
        highlight=False,
    )
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"
