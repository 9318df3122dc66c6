"""``resource_version``, run against every store: it counts writes of the spec (what users
write), and stays put on writes of the status, the replicas or the executor's bookkeeping."""

from __future__ import annotations

from domain.records import ModelRecord, ModelStatus
from domain.store import ModelStore, rewrite
from tests.store.test_contract import make_record


def test_create_starts_the_spec_at_version_one(store: ModelStore) -> None:
    created = store.create(make_record(resource_version=7))
    assert created.resource_version == 1
    fetched = store.get(created.id)
    assert fetched is not None and fetched.resource_version == 1


def test_a_spec_write_bumps_the_version_and_a_status_write_keeps_it(store: ModelStore) -> None:
    created = store.create(make_record())

    def scale_and_report(record: ModelRecord) -> ModelRecord:
        record.replicas = 3
        record.status = ModelStatus.ACTIVE
        record.ready_instances = 3
        return record

    status_only = rewrite(store, created.id, scale_and_report)
    assert status_only is not None and status_only[0].resource_version == 1
    assert status_only[0].revision == 2

    def relabel(record: ModelRecord) -> ModelRecord:
        record.labels = {"team": "search"}
        return record

    labelled = rewrite(store, created.id, relabel)
    assert labelled is not None and labelled[0].resource_version == 2
    refetched = store.get(created.id)
    assert refetched is not None
    assert (refetched.resource_version, refetched.labels) == (2, {"team": "search"})

    def resize(record: ModelRecord) -> ModelRecord:
        record.max_instance = 6
        return record

    resized = rewrite(store, created.id, resize)
    assert resized is not None and resized[0].resource_version == 3
