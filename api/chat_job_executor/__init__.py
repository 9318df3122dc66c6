"""The chat-job-executor: low-latency, high-concurrency inference on ready instances.

- :mod:`.executor`: the role, :class:`ChatJobExecutor` (routing, retries, timeouts).
- :mod:`.routing`: the routing table, instance state and outlier ejection, and the policies.
- :mod:`.admission`: per-model capacity and the bounded wait queue (429 past it).
- :mod:`.metrics`: aif's own latency and load series, measured here.

Relaying bytes between the client and an instance is :mod:`api.relay`'s.
"""

from api.chat_job_executor.executor import ChatJobExecutor

__all__ = ["ChatJobExecutor"]
