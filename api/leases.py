"""Who may act on a model: a lease stored on the model's record.

An executor acts on a model only while it holds the model's lease, so two executors never
drive one deployment. A lease is taken with a compare-and-set write, renewed while held, and
expires after its TTL. A lease whose owner ran on this host and whose process is gone is
taken over at once: an executor restarted after ``kill -9`` does not wait out the TTL.
"""

from __future__ import annotations

import os
import socket
import uuid

import psutil

from domain.records import ModelRecord


def new_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_is_dead(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    return pid != os.getpid() and not psutil.pid_exists(pid)


def lease_available(record: ModelRecord, owner: str, now: float) -> bool:
    return (
        not record.lease_owner
        or record.lease_owner == owner
        or record.lease_expires_at <= now
        or _owner_is_dead(record.lease_owner)
    )


def needs_renewal(record: ModelRecord, owner: str, now: float, ttl_s: float) -> bool:
    """Renew when less than half the TTL is left, so a slow pass never loses the lease."""
    return record.lease_owner != owner or record.lease_expires_at - now < ttl_s / 2
