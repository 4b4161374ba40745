"""The service's database: tables (SQLAlchemy Core) and the versioned schema, migrated on start.

Works on any SQLAlchemy URL; tested on SQLite (the default) and PostgreSQL. ``MIGRATIONS[i]`` takes the
schema from version ``i`` to ``i + 1``; ``migrate`` applies the missing ones in one transaction each and
refuses a database whose schema is newer than this code.
"""
from __future__ import annotations

from typing import Callable

from sqlalchemy import (JSON, Boolean, Column, Connection, Engine, Float, Integer, MetaData, String, Table, Text,
                        UniqueConstraint, create_engine, event, inspect, select)

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

api_keys = Table(
    "api_keys", metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("scope", String(16), nullable=False),          # user | admin
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

datasets = Table(
    "datasets", metadata,
    Column("id", String(32), primary_key=True),
    Column("owner", String(32), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("source_kind", String(16), nullable=False),    # upload | path | hf
    Column("source", Text, nullable=False),
    Column("data_config", JSON, nullable=False),          # the DataConfig the search and recommender use
    Column("fingerprint", String(64), nullable=False),
    Column("stats", JSON, nullable=False),
    Column("meta_features", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
)

searches = Table(
    "searches", metadata,
    Column("id", String(32), primary_key=True),
    Column("owner", String(32), nullable=False, index=True),
    Column("dataset_id", String(32), nullable=False, index=True),
    Column("state", String(16), nullable=False),          # queued | running | succeeded | failed | cancelled
    Column("request", JSON, nullable=False),
    Column("out_dir", Text, nullable=False),
    Column("progress", JSON),
    Column("best", JSON),
    Column("error", Text),
    Column("submissions", Integer, nullable=False, default=1),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("updated_at", Float, nullable=False),
    Column("folded", Boolean, nullable=False, default=False),  # records merged into the meta-dataset
)

idempotency = Table(
    "idempotency", metadata,
    Column("owner", String(32), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("endpoint", String(200), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer),                       # None while the first request is in progress
    Column("body", JSON),
    Column("location", Text),
    Column("created_at", Float, nullable=False),
)

meta_models = Table(
    "meta_models", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("path", Text, nullable=False),
    Column("summary", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("path"),
)


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[api_keys, datasets, searches, idempotency, meta_models])


MIGRATIONS: list[Callable[[Connection], None]] = [_v1]
SCHEMA_VERSION = len(MIGRATIONS)


WRITE_LOCK = "autodistill_write_lock"   # execution option: this transaction checks, then writes


class SchemaError(RuntimeError):
    pass


def current_version(conn: Connection) -> int:
    if not inspect(conn).has_table("schema_version"):
        return 0
    return conn.execute(select(schema_version.c.version)).scalar() or 0


def migrate(engine: Engine) -> tuple[int, int]:
    """Bring the schema to ``SCHEMA_VERSION``; returns (version before, version after)."""
    with engine.begin() as conn:
        schema_version.create(conn, checkfirst=True)
        before = current_version(conn)
    if before > SCHEMA_VERSION:
        raise SchemaError(f"the database schema is version {before}, newer than this service "
                          f"({SCHEMA_VERSION}): upgrade autodistill")
    for version in range(before, SCHEMA_VERSION):
        with engine.begin() as conn:
            MIGRATIONS[version](conn)
            conn.execute(schema_version.delete())
            conn.execute(schema_version.insert().values(version=version + 1))
    return before, SCHEMA_VERSION


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # concurrent readers while the monitor writes
            dbapi_conn.isolation_level = None   # SQLAlchemy, not the driver, starts transactions (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # a check-then-write transaction takes the write lock first (BEGIN IMMEDIATE), so what it
            # checked cannot change before it writes; others start as plain deferred transactions
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_LOCK) else "BEGIN")
        return engine
    return create_engine(url, pool_pre_ping=True)


def ping(engine: Engine) -> int:
    """The schema version, after proving the database takes writes (a no-op update, rolled back): a
    read-only or full database is not healthy even though it still answers reads."""
    with engine.connect().execution_options(**{WRITE_LOCK: True}) as conn:   # waits its turn, never BUSY
        with conn.begin() as tx:
            version = current_version(conn)
            conn.execute(schema_version.update().values(version=schema_version.c.version))
            tx.rollback()
    return version
