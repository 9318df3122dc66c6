"""What checking a key costs a request: ``python benchmarks/keys.py``.

Times :meth:`api.auth.KeyRing.authenticate` (and the key's rpm/tpm admission, counted in this
process; ``benchmarks/limits.py`` measures the shared counters) on the headers
of one request, in this process, against a ring of 10,001 keys: what the inference fast path
and every framework route add per request. No store is read; the ring is loaded once.
"""

from __future__ import annotations

import time
import timeit

from api.auth import KeyRing, Limiter
from api.limits import LocalCounters
from domain.keys import ApiKey, hash_secret

KEYS = 10_000
REQUESTS = 200_000


class _Store:
    """Only what the ring reads as it loads."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    def keys_version(self) -> str:
        return "fixed"

    def list_keys(self) -> list[ApiKey]:
        return self.keys


def main() -> None:
    secret = "sk-aif-" + "a" * 43
    keys = [
        ApiKey(name=f"k{i}", scope="inference", secret_hash=hash_secret(f"sk-{i}"), prefix="sk-")
        for i in range(KEYS)
    ]
    keys.append(
        ApiKey(name="me", scope="inference", secret_hash=hash_secret(secret), prefix="sk-",
               rpm=10**9, tpm=10**9)
    )  # fmt: skip
    open_ring = KeyRing(_Store([]))  # type: ignore[arg-type]
    counters = LocalCounters()
    ring = KeyRing(_Store(keys), limiter=Limiter(counters))  # type: ignore[arg-type]
    ring.load()
    headers = [
        (b"host", b"127.0.0.1:8080"),
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {secret}".encode()),
    ]
    cases = [
        ("no key configured (open)", lambda: open_ring.authenticate(headers)),
        (f"{KEYS + 1:,} keys: authenticate", lambda: ring.authenticate(headers)),
        (f"{KEYS + 1:,} keys: and rpm/tpm (this process's counters)",
         lambda: counters.check_and_count(ring.authenticate(headers).limits, time.time())),
    ]  # fmt: skip
    for name, check in cases:
        per_request_s = min(timeit.repeat(check, number=REQUESTS, repeat=3)) / REQUESTS
        print(f"{name}: {per_request_s * 1e6:.2f} us per request")


if __name__ == "__main__":
    main()
