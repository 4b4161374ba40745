"""Queries of the service's state: API keys, datasets, searches, idempotency records, refitted models.

Every read of a user resource takes the owner (the API key id): a key never sees another key's rows.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from . import db

KEY_PREFIX = "adk_"
ACTIVE_STATES = ("queued", "running")


def new_id(kind: str) -> str:
    return f"{kind}_{uuid.uuid4().hex[:20]}"


_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def well_formed_id(rid: str) -> bool:
    """Whether ``rid`` can be a row's id (:func:`new_id`'s, or a short one of letters, digits, _ and -): any
    other (with a NUL byte, which PostgreSQL refuses in a query, say) names no row on any backend, so it is not
    looked up."""
    return isinstance(rid, str) and _ID.fullmatch(rid) is not None


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass
class Page:
    items: list[dict[str, Any]]
    total: int


class Store:
    def __init__(self, engine: Engine):
        self.engine = engine

    @contextmanager
    def _check_then_write(self, lock_name: str | None = None) -> Iterator[Connection]:
        """A transaction whose checks still hold when it writes: SQLite takes its write lock first;
        PostgreSQL takes the advisory lock ``lock_name`` (row locks are taken by the queries)."""
        with self.engine.connect().execution_options(**{db.WRITE_LOCK: True}) as conn, conn.begin():
            if lock_name is not None and conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:n))"), {"n": lock_name})
            yield conn

    @staticmethod
    def _locked_dataset(conn: Connection, owner: str, dataset_id: str, exclusive: bool) -> bool:
        """Whether the dataset exists, locking its row until the transaction ends (shared: a search
        referencing it; exclusive: deleting it), so a delete and a new reference cannot interleave."""
        if not well_formed_id(dataset_id):
            return False
        q = select(db.datasets.c.id).where(and_(db.datasets.c.id == dataset_id, db.datasets.c.owner == owner))
        q = q.with_for_update(read=not exclusive) if conn.dialect.name == "postgresql" else q
        return conn.execute(q).first() is not None

    # ------------------------------------------------------------------ API keys
    def create_key(self, name: str, scope: str = "user") -> tuple[str, dict[str, Any]]:
        """A new key: returns the secret (shown once, never stored) and its row (with the hash only)."""
        if scope not in ("user", "admin"):
            raise ValueError(f"scope must be 'user' or 'admin', got {scope!r}")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        row = {"id": new_id("key"), "name": name, "prefix": secret[:12], "key_hash": hash_key(secret),
               "scope": scope, "created_at": time.time(), "revoked_at": None}
        with self.engine.begin() as conn:
            conn.execute(insert(db.api_keys).values(**row))
        return secret, row

    def key_for_secret(self, secret: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(db.api_keys).where(db.api_keys.c.key_hash == hash_key(secret))).mappings().first()
        return dict(row) if row and row["revoked_at"] is None else None

    def list_keys(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(db.api_keys).order_by(db.api_keys.c.created_at)).mappings().all()
        return [dict(r) for r in rows]

    def revoke_key(self, key_id_or_prefix: str) -> bool:
        c = db.api_keys.c
        with self.engine.begin() as conn:
            res = conn.execute(update(db.api_keys).where(
                ((c.id == key_id_or_prefix) | (c.prefix == key_id_or_prefix)) & c.revoked_at.is_(None))
                .values(revoked_at=time.time()))
        return res.rowcount > 0

    # ------------------------------------------------------------------ generic owned rows
    def _get(self, table, owner: str | None, rid: str) -> dict[str, Any] | None:
        if not well_formed_id(rid):
            return None
        cond = table.c.id == rid if owner is None else and_(table.c.id == rid, table.c.owner == owner)
        with self.engine.connect() as conn:
            row = conn.execute(select(table).where(cond)).mappings().first()
        return dict(row) if row else None

    def _page(self, table, owner: str, limit: int, offset: int, *conds) -> Page:
        cond = and_(table.c.owner == owner, *conds)
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(table).where(cond)).scalar_one()
            rows = conn.execute(select(table).where(cond).order_by(table.c.created_at.desc(), table.c.id)
                                .limit(limit).offset(offset)).mappings().all()
        return Page([dict(r) for r in rows], total)

    # ------------------------------------------------------------------ datasets
    @staticmethod
    def _owned_count(conn: Connection, table, owner: str) -> int:
        return conn.execute(select(func.count()).select_from(table).where(table.c.owner == owner)).scalar_one()

    def add_dataset(self, row: dict[str, Any], max_per_owner: int | None = None) -> bool:
        """Record a dataset unless its owner already keeps ``max_per_owner`` (then False); the count and the
        insert are one transaction, so concurrent creates cannot pass the cap together."""
        with self._check_then_write("autodistill-dataset-create") as conn:
            if max_per_owner is not None and self._owned_count(conn, db.datasets, row["owner"]) >= max_per_owner:
                return False
            conn.execute(insert(db.datasets).values(**row))
        return True

    def get_dataset(self, owner: str | None, dataset_id: str) -> dict[str, Any] | None:
        return self._get(db.datasets, owner, dataset_id)

    def dataset_ids(self, owner: str) -> set[str]:
        """The ids of ``owner``'s datasets (at most ``max_datasets_per_key``): one query."""
        with self.engine.connect() as conn:
            return set(conn.execute(select(db.datasets.c.id).where(db.datasets.c.owner == owner)).scalars())

    def list_datasets(self, owner: str, limit: int, offset: int) -> Page:
        return self._page(db.datasets, owner, limit, offset)

    def delete_dataset(self, owner: str, dataset_id: str) -> str:
        """"deleted", "missing", or "in_use" (a search queued or running references it): the check and
        the delete are one transaction, so a search created meanwhile either sees no dataset or blocks it."""
        s = db.searches.c
        with self._check_then_write() as conn:
            if not self._locked_dataset(conn, owner, dataset_id, exclusive=True):
                return "missing"
            in_use = conn.execute(select(func.count()).select_from(db.searches).where(
                and_(s.dataset_id == dataset_id, s.state.in_(ACTIVE_STATES)))).scalar_one()
            if in_use:
                return "in_use"
            conn.execute(delete(db.datasets).where(and_(db.datasets.c.id == dataset_id, db.datasets.c.owner == owner)))
        return "deleted"

    # ------------------------------------------------------------------ searches
    def add_search(self, row: dict[str, Any], max_per_owner: int | None = None,
                   max_total: int | None = None, max_stored_per_owner: int | None = None) -> str:
        """Record a new search if its dataset still exists, the owner's and the service's searches in
        flight are under their caps and the owner keeps fewer than ``max_stored_per_owner`` searches (any
        state): "added", "no_dataset", "owner_limit", "total_limit" or "stored_limit". One transaction
        (serialised with other creates and with dataset deletes)."""
        s = db.searches.c
        with self._check_then_write("autodistill-search-create") as conn:
            if not self._locked_dataset(conn, row["owner"], row["dataset_id"], exclusive=False):
                return "no_dataset"
            active = s.state.in_(ACTIVE_STATES)
            if max_per_owner is not None and conn.execute(select(func.count()).select_from(db.searches).where(
                    and_(active, s.owner == row["owner"]))).scalar_one() >= max_per_owner:
                return "owner_limit"
            if max_total is not None and conn.execute(select(func.count()).select_from(db.searches).where(
                    active)).scalar_one() >= max_total:
                return "total_limit"
            if max_stored_per_owner is not None and \
                    self._owned_count(conn, db.searches, row["owner"]) >= max_stored_per_owner:
                return "stored_limit"
            conn.execute(insert(db.searches).values(**row))
        return "added"

    def delete_search(self, owner: str, search_id: str) -> str:
        """"deleted", "missing", or "active" (queued or running: it still writes its files)."""
        s = db.searches.c
        if not well_formed_id(search_id):
            return "missing"
        mine = and_(s.id == search_id, s.owner == owner)
        with self._check_then_write() as conn:
            query = select(s.state).where(mine)
            state = conn.execute(query.with_for_update() if conn.dialect.name == "postgresql" else query).scalar()
            if state is None:
                return "missing"
            if state in ACTIVE_STATES:
                return "active"
            conn.execute(delete(db.searches).where(mine))
        return "deleted"

    def get_search(self, owner: str | None, search_id: str) -> dict[str, Any] | None:
        return self._get(db.searches, owner, search_id)

    def list_searches(self, owner: str, limit: int, offset: int) -> Page:
        return self._page(db.searches, owner, limit, offset)

    def active_searches(self, dataset_id: str | None = None) -> list[dict[str, Any]]:
        c = db.searches.c
        cond = c.state.in_(ACTIVE_STATES)
        if dataset_id is not None:
            cond = and_(cond, c.dataset_id == dataset_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(db.searches).where(cond)).mappings().all()]

    def finished_unfolded_searches(self) -> list[dict[str, Any]]:
        """Succeeded searches not yet folded into the meta-dataset whose dataset still exists."""
        c = db.searches.c
        has_dataset = select(db.datasets.c.id).where(db.datasets.c.id == c.dataset_id).exists()
        with self.engine.connect() as conn:
            rows = conn.execute(select(db.searches).where(and_(c.state == "succeeded", c.folded.is_(False),
                                                               has_dataset)))
            return [dict(r) for r in rows.mappings().all()]

    def update_search(self, search_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        with self.engine.begin() as conn:
            conn.execute(update(db.searches).where(db.searches.c.id == search_id).values(**fields))

    # ------------------------------------------------------------------ idempotency
    def idempotency_begin(self, owner: str, key: str, endpoint: str, request_hash: str,
                          retention_s: float | None = None, lease_s: float | None = None,
                          max_per_owner: int | None = None) -> tuple[str, dict[str, Any] | None]:
        """("new", None) for a first request; ("replay", row) for a finished identical one; ("conflict",
        row) when the key was used for another request; ("in_progress", row) while the first one runs;
        ("limit", None) for a new key when the owner already has ``max_per_owner`` keys remembered.
        A record older than ``retention_s`` is forgotten first: the key starts a new request. An identical
        request in progress whose lease (``lease_s`` since it began or last renewed it) has lapsed died with
        its server: this one takes the key over ("new")."""
        if retention_s is not None:
            c = db.idempotency.c
            with self.engine.begin() as conn:
                conn.execute(delete(db.idempotency).where(and_(
                    c.owner == owner, c.key == key, c.created_at < time.time() - retention_s)))
        row = {"owner": owner, "key": key, "endpoint": endpoint, "request_hash": request_hash,
               "status_code": None, "body": None, "location": None, "created_at": time.time()}
        if max_per_owner is not None and self._idempotency_keys_full(owner, key, max_per_owner):
            return "limit", None
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(db.idempotency).values(**row))
            return "new", None
        except IntegrityError:
            pass
        c = db.idempotency.c
        with self.engine.connect() as conn:
            old = conn.execute(select(db.idempotency).where(and_(c.owner == owner, c.key == key))).mappings().first()
        if old is None:   # released between our insert and read: take it now
            return self.idempotency_begin(owner, key, endpoint, request_hash, retention_s, lease_s)
        old = dict(old)
        if old["endpoint"] != endpoint or old["request_hash"] != request_hash:
            return "conflict", old
        if old["status_code"] is not None:
            return "replay", old
        if lease_s is not None and self._idempotency_take_over(owner, key, lease_s):
            return "new", None
        return "in_progress", old

    def _idempotency_keys_full(self, owner: str, key: str, max_per_owner: int) -> bool:
        """Whether ``key`` would be a new key of an owner who already has ``max_per_owner`` remembered."""
        c = db.idempotency.c
        with self.engine.connect() as conn:
            known = conn.execute(select(c.key).where(and_(c.owner == owner, c.key == key))).first() is not None
            return not known and self._owned_count(conn, db.idempotency, owner) >= max_per_owner

    def _idempotency_take_over(self, owner: str, key: str, lease_s: float) -> bool:
        """Whether the in-progress record's lease had lapsed and is now ours (renewed); of concurrent
        retries, exactly one gets it."""
        c = db.idempotency.c
        now = time.time()
        with self.engine.begin() as conn:
            res = conn.execute(update(db.idempotency).where(and_(
                c.owner == owner, c.key == key, c.status_code.is_(None), c.created_at < now - lease_s))
                .values(created_at=now))
        return res.rowcount == 1

    def idempotency_renew(self, owner: str, key: str) -> None:
        """Renew the lease of a request in progress (its record's ``created_at`` becomes now)."""
        c = db.idempotency.c
        with self.engine.begin() as conn:
            conn.execute(update(db.idempotency).where(and_(c.owner == owner, c.key == key, c.status_code.is_(None)))
                         .values(created_at=time.time()))

    def idempotency_finish(self, owner: str, key: str, status_code: int, body: Any, location: str | None) -> None:
        c = db.idempotency.c
        with self.engine.begin() as conn:
            conn.execute(update(db.idempotency).where(and_(c.owner == owner, c.key == key))
                         .values(status_code=status_code, body=body, location=location))

    def idempotency_purge(self, retention_s: float) -> int:
        """Forget every idempotency record older than ``retention_s``; returns how many."""
        with self.engine.begin() as conn:
            res = conn.execute(delete(db.idempotency).where(db.idempotency.c.created_at < time.time() - retention_s))
        return res.rowcount

    def idempotency_release(self, owner: str, key: str) -> None:
        """Forget a key whose request failed, so the client's retry runs it again."""
        c = db.idempotency.c
        with self.engine.begin() as conn:
            conn.execute(delete(db.idempotency).where(and_(c.owner == owner, c.key == key)))

    # ------------------------------------------------------------------ refitted meta-models
    def add_meta_model(self, path: str, summary: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(db.meta_models).values(path=path, summary=summary, created_at=time.time()))

    def latest_meta_model(self) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(db.meta_models).order_by(db.meta_models.c.id.desc()).limit(1)).mappings().first()
        return dict(row) if row else None
