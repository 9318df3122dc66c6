"""The ``ModelStore`` contract, run against every store (see ``conftest.py``).

The last sections cover what is particular to one store (several processes writing one SQLite
file) and how a store is chosen and opened.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pymongo.errors import ServerSelectionTimeoutError

from api.store import MongoModelStore, SqliteModelStore, open_store
from domain.records import (
    Endpoint,
    ModelRecord,
    ModelStatus,
    Pvc,
    Slo,
    format_timestamp,
    stamp_spec_version,
)
from domain.settings import Settings
from domain.store import DuplicateName, ModelStore, RecordNotFound, RevisionConflict
from tests.store.conftest import StoreFactory

REPO_ROOT = Path(__file__).resolve().parents[2]
MISSING_ID = "0" * 32
TIMESTAMP_FIELDS = {"created_at", "updated_at"}


def make_record(name: str = "DeepSeek-R1-Distill-Qwen-7B", **overrides: Any) -> ModelRecord:
    fields: dict[str, Any] = {
        "name": name,
        "type": "DeepSeek-R1-Distill-Qwen-7B",
        "resource_type": "huawei.com/ascend-1980",
        "max_instance": 4,
        "min_instance": 1,
        "pvc": {"name": "release-models", "path": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"},
        "slo": {"target_time_to_first_token_p95": 1000, "target_time_per_output_token_p95": 20},
        "replicas": 1,
    }
    fields.update(overrides)
    return ModelRecord.model_validate(fields)


def assert_same_record(actual: ModelRecord, expected: ModelRecord) -> None:
    """Equal in every field, timestamps to the millisecond (what every store keeps)."""
    assert actual.model_dump(exclude=TIMESTAMP_FIELDS) == expected.model_dump(
        exclude=TIMESTAMP_FIELDS
    )
    for field in TIMESTAMP_FIELDS:
        assert format_timestamp(getattr(actual, field)) == format_timestamp(
            getattr(expected, field)
        )


def increment_attempts(store: ModelStore, model_id: str) -> int:
    """One read-modify-write, retried until it lands; returns how many conflicts it met."""
    conflicts = 0
    while True:
        current = store.get(model_id)
        assert current is not None
        current.attempts += 1
        try:
            store.replace(current)
        except RevisionConflict:
            conflicts += 1
        else:
            return conflicts


# --- create and read ---------------------------------------------------------------------


def test_create_sets_revision_one_and_reads_return_it(store: ModelStore) -> None:
    record = make_record()

    created = store.create(record)

    assert created.revision == 1
    assert record.revision == 0, "the caller's record is left alone"
    assert_same_record(created, stamp_spec_version(record.model_copy(update={"revision": 1})))
    assert store.get(record.id) == created
    assert store.get_by_name("DeepSeek-R1-Distill-Qwen-7B") == created
    assert store.list() == [created]


def test_reads_of_missing_records_return_none(store: ModelStore) -> None:
    store.create(make_record())

    assert store.get(MISSING_ID) is None
    assert store.get_by_name("Qwen2.5-7B-Instruct") is None


def test_list_is_oldest_first_then_by_id(store: ModelStore) -> None:
    start = datetime(2025, 4, 29, 17, 10, 8, 673000, tzinfo=UTC)
    late = make_record("late", created_at=start + timedelta(seconds=2))
    early = make_record("early", created_at=start)
    tie_b = make_record("tie-b", id="b" * 32, created_at=start + timedelta(seconds=1))
    tie_a = make_record("tie-a", id="a" * 32, created_at=start + timedelta(seconds=1))
    for record in (late, early, tie_b, tie_a):
        store.create(record)

    assert [record.name for record in store.list()] == ["early", "tie-a", "tie-b", "late"]


def test_timestamps_round_trip_to_the_millisecond_in_utc(store: ModelStore) -> None:
    beijing = timezone(timedelta(hours=8))
    moment = datetime(2025, 4, 30, 1, 10, 8, 673999, tzinfo=beijing)
    record = make_record(created_at=moment, updated_at=moment)

    store.create(record)
    stored = store.get(record.id)

    assert stored is not None
    assert format_timestamp(stored.created_at) == "2025-04-29T17:10:08.673Z"
    assert format_timestamp(stored.updated_at) == "2025-04-29T17:10:08.673Z"
    assert stored.created_at.utcoffset() is not None, "timestamps come back timezone-aware"


def test_duplicate_name_is_refused_and_nothing_changes(store: ModelStore) -> None:
    first = store.create(make_record())
    second = make_record(description="a second copy")

    with pytest.raises(DuplicateName) as raised:
        store.create(second)

    assert raised.value.name == "DeepSeek-R1-Distill-Qwen-7B"
    assert store.get(second.id) is None
    assert store.list() == [first]


# --- replace ---------------------------------------------------------------------------


def test_replace_bumps_revision_and_persists_every_field(store: ModelStore) -> None:
    created = store.create(make_record())
    changed = created.model_copy(
        update={
            "version": "v2",
            "max_instance": 8,
            "min_instance": 2,
            "pvc": Pvc(name="release-models-v2", path="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"),
            "slo": Slo(target_time_to_first_token_p95=800, target_time_per_output_token_p95=15.5),
            "description": "distilled reasoning model",
            "status": ModelStatus.ACTIVE,
            "status_code": "200",
            "status_msg": "2 of 2 instances ready",
            "updated_at": created.updated_at + timedelta(seconds=5, microseconds=123456),
            "replicas": 2,
            "generation": 2,
            "observed_generation": 2,
            "ready_instances": 2,
            "endpoints": [
                Endpoint(instance_id="i-0", url="http://10.0.0.11:8000"),
                Endpoint(instance_id="i-1", url="http://10.0.0.12:8000", ready=False),
            ],
            "lease_owner": "model-job-executor-7f9c",
            "lease_expires_at": 1745946638.5,
            "attempts": 3,
            "next_attempt_at": 1745946640.25,
        }
    )

    replaced = store.replace(changed)

    assert replaced.revision == 2
    assert_same_record(replaced, stamp_spec_version(changed.model_copy(update={"revision": 2})))
    stored = store.get(created.id)
    assert stored == replaced
    assert stored.status is ModelStatus.ACTIVE
    assert stored.endpoints[1] == Endpoint(
        instance_id="i-1", url="http://10.0.0.12:8000", ready=False
    )


def test_replace_with_a_stale_revision_conflicts_and_leaves_the_record(
    store: ModelStore,
) -> None:
    created = store.create(make_record())
    winner = store.replace(created.model_copy(update={"replicas": 2}))

    with pytest.raises(RevisionConflict) as raised:
        store.replace(created.model_copy(update={"replicas": 3}))

    assert raised.value.model_id == created.id
    assert store.get(created.id) == winner


def test_replace_onto_a_taken_name_is_refused(store: ModelStore) -> None:
    store.create(make_record())
    other = store.create(make_record("Qwen2.5-7B-Instruct", type="Qwen2.5-7B-Instruct"))

    with pytest.raises(DuplicateName):
        store.replace(other.model_copy(update={"name": "DeepSeek-R1-Distill-Qwen-7B"}))

    assert store.get(other.id) == other


def test_replace_of_a_missing_record_is_not_found(store: ModelStore) -> None:
    never_created = make_record()
    created = store.create(make_record("Qwen2.5-7B-Instruct"))
    store.delete(created.id, created.revision)

    for record in (never_created, created):
        with pytest.raises(RecordNotFound) as raised:
            store.replace(record)
        assert raised.value.model_id == record.id
    assert store.list() == []


# --- delete ----------------------------------------------------------------------------


def test_delete_removes_the_record_and_frees_its_name(store: ModelStore) -> None:
    created = store.create(make_record())

    store.delete(created.id, created.revision)

    assert store.get(created.id) is None
    assert store.get_by_name(created.name) is None
    assert store.list() == []
    assert store.create(make_record()).revision == 1


def test_delete_with_a_stale_revision_is_refused(store: ModelStore) -> None:
    created = store.create(make_record())
    updated = store.replace(created.model_copy(update={"status": ModelStatus.DELETING}))

    with pytest.raises(RevisionConflict):
        store.delete(created.id, created.revision)

    assert store.get(created.id) == updated


def test_delete_of_a_missing_record_is_not_found(store: ModelStore) -> None:
    with pytest.raises(RecordNotFound) as raised:
        store.delete(MISSING_ID, 1)

    assert raised.value.model_id == MISSING_ID


# --- concurrency and sharing -----------------------------------------------------------

THREADS = 8
INCREMENTS_PER_THREAD = 25


def test_concurrent_read_modify_write_never_loses_an_increment(
    store: ModelStore, store_factory: StoreFactory, store_kind: str
) -> None:
    if store_kind == "mongomock":
        pytest.skip(
            "mongomock matches and writes in separate steps, so its compare-and-set is not"
            " atomic across threads; the mongodb parameter checks the server's"
        )
    # Half the threads go through a second store object, as another process would.
    stores = [store, store_factory()]
    created = store.create(make_record())
    start = threading.Barrier(THREADS)

    def worker(index: int) -> int:
        start.wait()
        target = stores[index % len(stores)]
        return sum(increment_attempts(target, created.id) for _ in range(INCREMENTS_PER_THREAD))

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(worker, range(THREADS)))

    final = store.get(created.id)
    assert final is not None
    assert final.attempts == THREADS * INCREMENTS_PER_THREAD
    assert final.revision == 1 + THREADS * INCREMENTS_PER_THREAD


def test_data_survives_closing_and_reopening(store_factory: StoreFactory) -> None:
    first = store_factory()
    created = first.create(make_record())
    replaced = first.replace(created.model_copy(update={"status": ModelStatus.ACTIVE}))
    first.close()

    reopened = store_factory()

    assert reopened.get(created.id) == replaced
    assert reopened.list() == [replaced]


def test_two_stores_on_the_same_data_see_each_others_writes(
    store: ModelStore, store_factory: StoreFactory
) -> None:
    other = store_factory()

    created = store.create(make_record())
    assert other.get(created.id) == created

    replaced = other.replace(created.model_copy(update={"replicas": 2}))
    assert store.get(created.id) == replaced
    with pytest.raises(RevisionConflict):
        store.replace(created.model_copy(update={"replicas": 3}))

    with pytest.raises(DuplicateName):
        other.create(make_record())


# --- the embedded store across processes -----------------------------------------------

PROCESSES = 2
INCREMENTS_PER_PROCESS = 30

_INCREMENT_SCRIPT = """
import sys
from pathlib import Path
from api.store import SqliteModelStore
from domain.store import RevisionConflict

store = SqliteModelStore(Path(sys.argv[1]))
try:
    for _ in range(int(sys.argv[3])):
        while True:
            current = store.get(sys.argv[2])
            current.attempts += 1
            try:
                store.replace(current)
                break
            except RevisionConflict:
                pass
finally:
    store.close()
"""


def test_sqlite_processes_sharing_a_file_never_lose_an_increment(tmp_path: Path) -> None:
    path = tmp_path / "aif.db"
    store = SqliteModelStore(path)
    try:
        created = store.create(make_record())
        command = [sys.executable, "-c", _INCREMENT_SCRIPT, str(path), created.id]
        children = [
            subprocess.Popen([*command, str(INCREMENTS_PER_PROCESS)], cwd=REPO_ROOT)
            for _ in range(PROCESSES)
        ]
        for _ in range(INCREMENTS_PER_PROCESS):
            increment_attempts(store, created.id)
        assert [child.wait(timeout=60) for child in children] == [0] * PROCESSES

        final = store.get(created.id)
        assert final is not None
        assert final.attempts == (PROCESSES + 1) * INCREMENTS_PER_PROCESS
    finally:
        store.close()


# --- choosing and opening a store --------------------------------------------------------


def test_open_store_defaults_to_a_sqlite_file_in_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "not-yet-created"
    store = open_store(Settings(data_dir=data_dir, mongodb_url=None))
    try:
        assert isinstance(store, SqliteModelStore)
        assert store.path == data_dir / "aif.db"
        store.create(make_record())
    finally:
        store.close()
    assert (data_dir / "aif.db").is_file()


def test_mongo_store_from_an_unreachable_url_fails_fast_with_the_url_options() -> None:
    # The URL's own timeout wins over the store's default of several seconds.
    url = "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200&directConnection=true"
    started = time.monotonic()

    with pytest.raises(ServerSelectionTimeoutError):
        MongoModelStore.from_url(url, database="aif")

    assert time.monotonic() - started < 3
