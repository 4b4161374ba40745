"""The service's store, one suite run against every database backend (SQLite and PostgreSQL)."""
from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from service import db
from service.store import Store, hash_key


@pytest.fixture
def store(database_url):
    engine = db.make_engine(database_url)
    db.migrate(engine)
    yield Store(engine)
    engine.dispose()


def _dataset(owner: str, rid: str, created: float) -> dict:
    return {"id": rid, "owner": owner, "name": rid, "source_kind": "upload", "source": "x.jsonl",
            "data_config": {"train": "x.jsonl"}, "fingerprint": "f" * 16, "stats": {"train_rows": 3},
            "meta_features": {"n_train": 3.0}, "created_at": created}


def _search(owner: str, rid: str, state: str = "queued") -> dict:
    now = time.time()
    return {"id": rid, "owner": owner, "dataset_id": "ds1", "state": state, "request": {"space": "cpu-fast"},
            "out_dir": "/tmp/x", "progress": {}, "best": None, "error": None, "submissions": 1, "created_at": now,
            "started_at": None, "finished_at": None, "updated_at": now, "folded": False}


def test_migrate_is_versioned_and_idempotent(database_url):
    engine = db.make_engine(database_url)
    assert db.migrate(engine) == (0, db.SCHEMA_VERSION)
    assert db.migrate(engine) == (db.SCHEMA_VERSION, db.SCHEMA_VERSION)
    with engine.begin() as conn:
        assert db.current_version(conn) == db.SCHEMA_VERSION
        conn.execute(db.schema_version.update().values(version=db.SCHEMA_VERSION + 1))
    with pytest.raises(db.SchemaError, match="newer than this service"):
        db.migrate(engine)
    engine.dispose()


def test_keys_are_stored_hashed_and_can_be_revoked(store):
    secret, row = store.create_key("alice", "admin")
    assert secret.startswith("adk_") and len(secret) > 40
    with store.engine.connect() as conn:
        stored = conn.execute(sa.select(db.api_keys)).mappings().all()
    assert [r["key_hash"] for r in stored] == [hash_key(secret)]
    assert all(secret not in str(dict(r).values()) for r in stored)   # the secret itself is nowhere
    assert store.key_for_secret(secret)["scope"] == "admin"
    assert store.key_for_secret(secret + "x") is None
    assert store.revoke_key(row["prefix"]) and not store.revoke_key(row["prefix"])
    assert store.key_for_secret(secret) is None
    with pytest.raises(ValueError, match="scope"):
        store.create_key("bob", "root")


def test_datasets_are_owned_and_paginated(store):
    for k in range(5):
        store.add_dataset(_dataset("key_a", f"ds{k}", 1000.0 + k))
    store.add_dataset(_dataset("key_b", "other", 2000.0))
    page = store.list_datasets("key_a", limit=2, offset=0)
    assert page.total == 5 and [r["id"] for r in page.items] == ["ds4", "ds3"]   # newest first
    assert [r["id"] for r in store.list_datasets("key_a", 2, 4).items] == ["ds0"]
    assert store.get_dataset("key_a", "other") is None and store.get_dataset("key_b", "other")["stats"] == {"train_rows": 3}
    assert store.dataset_ids("key_a") == {f"ds{k}" for k in range(5)} and store.dataset_ids("key_c") == set()
    assert store.delete_dataset("key_a", "other") == "missing"
    assert store.delete_dataset("key_a", "ds0") == "deleted" and store.list_datasets("key_a", 10, 0).total == 4


def test_searches_update_and_active(store):
    store.add_dataset(_dataset("key_a", "ds1", 1000.0))
    assert store.add_search(_search("key_a", "s1")) == "added"
    assert store.add_search(_search("key_a", "s2", "succeeded")) == "added"
    assert [s["id"] for s in store.active_searches()] == ["s1"]
    store.update_search("s1", state="running", progress={"finished": 1})
    got = store.get_search("key_a", "s1")
    assert got["state"] == "running" and got["progress"] == {"finished": 1}
    assert store.get_search("key_b", "s1") is None
    assert [s["id"] for s in store.finished_unfolded_searches()] == ["s2"]
    store.update_search("s2", folded=True)
    assert store.finished_unfolded_searches() == []


def test_idempotency_records(store):
    assert store.idempotency_begin("key_a", "k1", "POST /x", "h1") == ("new", None)
    state, row = store.idempotency_begin("key_a", "k1", "POST /x", "h1")
    assert state == "in_progress"
    store.idempotency_finish("key_a", "k1", 201, {"id": "ds1"}, "/x/ds1")
    state, row = store.idempotency_begin("key_a", "k1", "POST /x", "h1")
    assert state == "replay" and row["body"] == {"id": "ds1"} and row["location"] == "/x/ds1"
    assert store.idempotency_begin("key_a", "k1", "POST /x", "other")[0] == "conflict"
    assert store.idempotency_begin("key_b", "k1", "POST /x", "other") == ("new", None)   # keys are per API key
    store.idempotency_release("key_b", "k1")
    assert store.idempotency_begin("key_b", "k1", "POST /x", "h2") == ("new", None)


def test_an_api_key_remembers_a_bounded_number_of_idempotency_keys(store):
    for k in ("k1", "k2"):
        assert store.idempotency_begin("key_a", k, "POST /x", "h", max_per_owner=2) == ("new", None)
        store.idempotency_finish("key_a", k, 201, {"id": k}, None)
    assert store.idempotency_begin("key_a", "k3", "POST /x", "h", max_per_owner=2) == ("limit", None)
    assert store.idempotency_begin("key_a", "k1", "POST /x", "h", max_per_owner=2)[0] == "replay"   # known keys work
    assert store.idempotency_begin("key_b", "k3", "POST /x", "h", max_per_owner=2) == ("new", None)  # per API key


def test_an_idempotency_key_in_progress_past_its_lease_is_taken_over_once(store):
    from concurrent.futures import ThreadPoolExecutor
    assert store.idempotency_begin("key_a", "k1", "POST /x", "h1", lease_s=60) == ("new", None)
    assert store.idempotency_begin("key_a", "k1", "POST /x", "h1", lease_s=60)[0] == "in_progress"
    with store.engine.begin() as conn:   # its server died 61 s ago
        conn.execute(db.idempotency.update().values(created_at=time.time() - 61))
    assert store.idempotency_begin("key_a", "k1", "POST /x", "other", lease_s=60)[0] == "conflict"
    with ThreadPoolExecutor(4) as pool:   # concurrent retries: one takes the key, the others wait for it
        states = [s for s, _ in pool.map(lambda _: store.idempotency_begin("key_a", "k1", "POST /x", "h1",
                                                                              lease_s=60), range(4))]
    assert sorted(states) == ["in_progress"] * 3 + ["new"]
    with store.engine.begin() as conn:
        conn.execute(db.idempotency.update().values(created_at=time.time() - 61))
    store.idempotency_renew("key_a", "k1")   # a request still running renews its lease
    assert store.idempotency_begin("key_a", "k1", "POST /x", "h1", lease_s=60)[0] == "in_progress"
    store.idempotency_finish("key_a", "k1", 201, {"id": "ds1"}, "/x/ds1")
    with store.engine.begin() as conn:   # a finished answer has no lease: replayed, never run again
        conn.execute(db.idempotency.update().values(created_at=time.time() - 61))
    store.idempotency_renew("key_a", "k1")
    assert store.idempotency_begin("key_a", "k1", "POST /x", "h1", lease_s=60)[0] == "replay"


def test_meta_models_latest(store):
    assert store.latest_meta_model() is None
    store.add_meta_model("/m/1", {"rows": 1})
    store.add_meta_model("/m/2", {"rows": 2})
    assert store.latest_meta_model()["path"] == "/m/2"
