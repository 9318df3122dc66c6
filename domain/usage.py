"""Tokens used, per key, per model, per UTC hour: what ``GET /v1/usage`` adds up.

A :class:`UsageBucket` is one key's answered requests to one model in one hour, with the
prompt and completion tokens they used. Buckets are only ever added to: a store's
:meth:`~domain.store.ModelStore.add_usage` increments the stored counts (creating the bucket
the first time), so writers in many processes never overwrite each other.

Counting requests into buckets in memory and flushing them is :mod:`api.usage`'s; adding
them up for a report is :mod:`api.services.usage`'s.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

# A stored bucket's hour, as a timestamp: one per hour.
SECONDS_PER_HOUR = 3600


def hour_of(moment: datetime) -> datetime:
    """``moment`` in UTC, truncated to its hour (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hour_at(epoch_s: float) -> datetime:
    """The UTC hour holding ``epoch_s`` seconds since the epoch."""
    return datetime.fromtimestamp(epoch_s // SECONDS_PER_HOUR * SECONDS_PER_HOUR, UTC)


class UsageBucket(BaseModel):
    model_config = ConfigDict(frozen=True)

    key_id: str
    # The model's name, as the request named it.
    model: str
    # The UTC hour the requests ended in (minutes and seconds zero).
    hour: datetime
    requests: int = Field(default=0, ge=0)
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def slot(self) -> tuple[str, str, datetime]:
        """What identifies the bucket in a store."""
        return self.key_id, self.model, self.hour
