"""The keys and audit half of the store contract, run against every store (see ``conftest.py``).

Keys and events survive reopening the store (a restart, or another process), a revoke is seen
by every store object on the same data, and ``keys_version`` changes with every key change.
"""

from __future__ import annotations

from datetime import UTC, datetime

from domain.keys import ApiKey, AuditAction, AuditEvent, hash_secret
from domain.store import ModelStore
from tests.store.conftest import StoreFactory


def make_key(name: str = "app", **fields: object) -> ApiKey:
    return ApiKey.model_validate(
        {
            "name": name,
            "scope": "inference",
            "secret_hash": hash_secret(f"sk-aif-{name}"),
            "prefix": "sk-aif-abcd",
            **fields,
        }
    )


def test_keys_are_listed_oldest_first_as_created(store: ModelStore) -> None:
    first = store.create_key(make_key("one", models=["m1"], rpm=5, tpm=100))
    second = store.create_key(make_key("two", scope="admin"))

    listed = store.list_keys()

    assert [k.id for k in listed] == [first.id, second.id]
    assert listed[0] == first
    assert listed[0].models == ["m1"] and (listed[0].rpm, listed[0].tpm) == (5, 100)


def test_revoke_marks_the_key_once_and_changes_the_version(store: ModelStore) -> None:
    key = store.create_key(make_key())
    created = store.keys_version()
    at = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)

    revoked = store.revoke_key(key.id, at)
    again = store.revoke_key(key.id, datetime.now(UTC))

    assert revoked is not None and revoked[1] is True and revoked[0].revoked_at == at
    assert again is not None and again[1] is False and again[0].revoked_at == at
    assert store.revoke_key("key_missing", at) is None
    assert store.keys_version() != created
    [listed] = store.list_keys()
    assert listed.revoked and listed.revoked_at == at


def test_the_version_changes_with_each_key_and_is_seen_by_another_store(
    store_factory: StoreFactory,
) -> None:
    one, other = store_factory(), store_factory()
    versions = [other.keys_version()]
    key = one.create_key(make_key())
    versions.append(other.keys_version())
    one.revoke_key(key.id, datetime.now(UTC))
    versions.append(other.keys_version())

    assert len(set(versions)) == 3
    assert other.list_keys()[0].revoked


def test_keys_and_events_survive_reopening(store_factory: StoreFactory) -> None:
    first = store_factory()
    key = first.create_key(make_key())
    first.append_event(AuditEvent(actor=key.id, action=AuditAction.KEY_CREATE, key_id=key.id))
    first.close()

    reopened = store_factory()

    assert reopened.list_keys() == [key]
    [event] = reopened.events()
    assert event.action is AuditAction.KEY_CREATE and event.key_id == key.id


def test_events_come_back_in_order_by_model_and_latest_first_cut(store: ModelStore) -> None:
    written = []
    for index in range(5):
        event = AuditEvent(
            actor="scaler" if index % 2 else "key_1",
            action=AuditAction.MODEL_SCALE if index % 2 else AuditAction.MODEL_UPDATE,
            model_id="a" if index < 4 else "b",
            model_name="model-a",
            changes={"replicas": {"from": index, "to": index + 1}},
            reason=f"step {index}",
        )
        store.append_event(event)
        written.append(event)

    assert store.events() == written
    assert store.events(limit=2) == written[3:]
    assert store.events("a") == written[:4]
    assert store.events("a", limit=1) == written[3:4]
    assert store.events("b") == written[4:]
    assert store.events("c") == []


def test_an_update_replaces_the_key_and_changes_the_version_everywhere(
    store_factory: StoreFactory,
) -> None:
    one, other = store_factory(), store_factory()
    key = one.create_key(make_key(rpm=5))
    before = other.keys_version()

    updated = one.update_key(key.model_copy(update={"rpm": 50, "token_budget": 1000}))

    assert updated is not None and (updated.rpm, updated.token_budget) == (50, 1000)
    assert other.keys_version() != before
    assert other.list_keys() == [updated]
    assert one.update_key(make_key("ghost")) is None


def test_a_revoked_key_is_not_updated(store: ModelStore) -> None:
    key = store.create_key(make_key(rpm=5))
    store.revoke_key(key.id, datetime.now(UTC))
    version = store.keys_version()

    stored = store.update_key(key.model_copy(update={"rpm": 50}))

    assert stored is not None and stored.revoked and stored.rpm == 5
    assert store.list_keys()[0].revoked and store.keys_version() == version
