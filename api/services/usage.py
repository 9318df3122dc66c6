"""Usage reports: the stored buckets of a time range, added up per key, model and/or hour.

Who may see what is decided here: an admin key any key's usage, an inference key only its
own. The buckets are written by each chat process's :class:`api.usage.UsageRecorder` every
``AIF_USAGE_FLUSH_S``, so a report lags by up to that interval. Parsing the query's dates and
groups happens here too, so ``aif usage`` and the route refuse the same input in the same
words.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import cast, get_args

from api.auth import Principal
from api.errors import Forbidden, InvalidRequest
from api.schemas_usage import GroupBy, UsageCounts, UsageReport, UsageRow
from domain.records import utc_now
from domain.store import ModelStore
from domain.usage import UsageBucket, hour_of

# A report with no range: the week up to now, enough to see a team's habits.
DEFAULT_RANGE = timedelta(days=7)
# Nothing was counted before it; the stores' time order holds from then on.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_GROUP_BY: list[GroupBy] = ["key", "model"]
GROUPS: tuple[str, ...] = get_args(GroupBy)


def parse_moment(value: str, param: str) -> datetime:
    """An ISO 8601 date or datetime, in UTC (UTC assumed when it names no zone), from 1970."""
    refusal = InvalidRequest(
        f"{param} must be an ISO 8601 date or datetime from 1970 on (e.g. 2026-03-01 or "
        f"2026-03-01T12:00:00Z), not {value!r}",
        param=param,
    )
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        try:
            day = date.fromisoformat(value.strip())
        except ValueError:
            raise refusal from None
        moment = datetime(day.year, day.month, day.day)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:  # past year 9999 once in UTC
        raise refusal from None
    if moment < EPOCH:
        raise refusal
    return moment


def parse_group_by(values: Iterable[str] | None) -> list[GroupBy]:
    """``key``, ``model``, ``hour``: repeated or comma-separated, in the order given."""
    groups: list[GroupBy] = []
    for value in values or []:
        for name in (part.strip() for part in value.split(",")):
            if not name:  # group_by= or a stray comma: nothing asked for there
                continue
            if name not in GROUPS:
                raise InvalidRequest(
                    f"group_by takes {', '.join(GROUPS)} (repeated or comma-separated), "
                    f"not {name!r}",
                    param="group_by",
                )
            if name not in groups:
                groups.append(cast(GroupBy, name))
    return groups or list(DEFAULT_GROUP_BY)


def _counts(buckets: list[UsageBucket]) -> UsageCounts:
    prompt = sum(b.prompt_tokens for b in buckets)
    completion = sum(b.completion_tokens for b in buckets)
    return UsageCounts(
        requests=sum(b.requests for b in buckets),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
    )


class UsageService:
    def __init__(self, store: ModelStore) -> None:
        self._store = store

    def report(
        self,
        principal: Principal,
        *,
        key: str | None = None,
        model: str | None = None,
        start: str | None = None,
        end: str | None = None,
        group_by: Iterable[str] | None = None,
    ) -> UsageReport:
        """Usage from ``start`` (default: a week before ``end``) to ``end`` (default: now)."""
        groups = parse_group_by(group_by)
        until = parse_moment(end, "to") if end is not None else utc_now()
        since = parse_moment(start, "from") if start is not None else until - DEFAULT_RANGE
        since = max(since, EPOCH)
        if since > until:
            raise InvalidRequest("from must not be after to", param="from")
        key = self._allowed_key(principal, key)
        # A bucket holds its whole hour: one the range starts inside counts.
        buckets = self._store.usage(key_id=key, model=model, since=hour_of(since), until=until)
        names = {k.id: k.name for k in self._store.list_keys()} if "key" in groups else {}
        grouped: dict[tuple[object, ...], list[UsageBucket]] = {}
        for bucket in buckets:
            slot = tuple(
                {"key": bucket.key_id, "model": bucket.model, "hour": bucket.hour}[g]
                for g in groups
            )
            grouped.setdefault(slot, []).append(bucket)
        rows = []
        for slot in sorted(grouped, key=lambda s: tuple(str(part) for part in s)):
            fields = dict(zip(groups, slot, strict=True))
            key_id = cast(str | None, fields.get("key"))
            rows.append(
                UsageRow(
                    **_counts(grouped[slot]).model_dump(),
                    key_id=key_id,
                    key_name=None if key_id is None else names.get(key_id, key_id),
                    model=cast(str | None, fields.get("model")),
                    hour=cast(datetime | None, fields.get("hour")),
                )
            )
        return UsageReport(
            start=since, end=until, group_by=groups, data=rows, totals=_counts(buckets)
        )

    @staticmethod
    def _allowed_key(principal: Principal, key: str | None) -> str | None:
        """An admin key sees any key's usage (all when none is named); others only their own."""
        if principal.admin:
            return key
        if key is not None and key != principal.key_id:
            raise Forbidden(
                f"key {principal.name!r} may see only its own usage, not key {key!r}", param="key"
            )
        return principal.key_id
