"""Engine and session handling: one engine per URL, one short session per unit of work."""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator

from sqlalchemy import MetaData, create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

_engines: Dict[str, Engine] = {}
_sessions: Dict[int, sessionmaker] = {}
_lock = threading.Lock()
SCHEMA_LOCK = 7_301_200  # PostgreSQL advisory lock held while a process creates or extends tables


def _owner_only(path: str) -> None:
    """Databases hold customers' money data: readable and writable by the service's user only
    (SQLite gives its -wal and -shm files the database file's permissions)."""
    file = Path(path)
    if not file.exists():
        file.touch(mode=0o600)
    os.chmod(file, 0o600)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the action server read while a seed or another process writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


IDLE_PING_SECONDS = 5.0  # a server connection idle this long is pinged before it is used again


def _note_checkin(_dbapi_connection, record) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_connection, record, _proxy) -> None:
    """Ping a server connection that sat in the pool for a while (the database may have
    restarted meanwhile); one in steady use is not pinged (pool_pre_ping would cost a round trip
    and a third of an empty transaction's CPU on every checkout). A connection that broke while
    in use fails that one statement: SQLAlchemy then drops every pooled connection of that
    engine, and the caller's retry (a turn's, a webhook's redelivery) runs on new ones."""
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
        return  # (None: a connection just opened)
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
    except Exception as exc:  # the pool opens a new connection instead
        raise DisconnectionError(f"stale pooled connection: {type(exc).__name__}") from exc


# A database server's connections kept open per process and engine: as many as can be in use at
# once (asyncio's default thread pool, min(32, cores + 4), plus the event loop and a listener),
# so a busy worker does not open and close one connection after another: with SQLAlchemy's
# default of 5, a worker at 30 customers opened about 5 a second, each a new PostgreSQL backend
# process. Five more are allowed at a peak (closed when returned), the ceiling SQLAlchemy's
# default gave on this 2-core box (5 + 10), so PostgreSQL's max_connections budget is unchanged.
SERVER_POOL_SIZE = min(32, (os.cpu_count() or 1) + 4) + 4
SERVER_POOL_OVERFLOW = 5


def get_engine(url: str) -> Engine:
    """Return the process-wide engine for `url`, creating it on first use."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            kwargs = {"future": True, "pool_pre_ping": False}  # (server databases: _ping_if_idle)
            if url.startswith("sqlite"):
                path = url.split("///", 1)[-1]
                if path and path != ":memory:" and not path.startswith("file:"):
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                    _owner_only(path)
                    # SQLAlchemy 1.4 gives a file database a NullPool: every short session would
                    # open the file again and re-run the PRAGMAs (a fifth of a turn's CPU under
                    # load). Kept open and pooled, the PRAGMAs run once per connection; there is
                    # no server whose connection could go stale, so no ping either.
                    kwargs.update(poolclass=QueuePool, pool_size=8, max_overflow=24, pool_pre_ping=False)
                kwargs["connect_args"] = {"check_same_thread": False}
            else:
                kwargs.update(pool_size=SERVER_POOL_SIZE, max_overflow=SERVER_POOL_OVERFLOW)
            engine = create_engine(url, **kwargs)
            if url.startswith("sqlite"):
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                event.listen(engine, "checkin", _note_checkin)
                event.listen(engine, "checkout", _ping_if_idle)
            _engines[url] = engine
        return engine


def dispose_engine(url: str) -> None:
    """Close and forget the engine for `url` (tests use a fresh database each)."""
    with _lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


def create_schema(engine: Engine, metadata: MetaData) -> None:
    """Create missing tables, and add columns that later versions introduced (nullable only).

    Enough for additive changes to an embedded database made by an earlier version; a
    change that is not additive needs a real migration.
    """
    if engine.dialect.name == "postgresql":
        # several processes start at once (the workers, the ingress's recorder, the action
        # server): one at a time, or two CREATE TABLEs race and one dies on a duplicate key
        with engine.begin() as connection:
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
            metadata.create_all(connection)
            _add_what_is_missing(connection, metadata, inspect(connection))
        return
    metadata.create_all(engine)
    existing = inspect(engine)
    with engine.begin() as connection:
        _add_what_is_missing(connection, metadata, existing)


def _add_what_is_missing(connection: Any, metadata: MetaData, existing: Any) -> None:
    """Columns (nullable ones) and indexes that later versions added to older tables."""
    for table in metadata.sorted_tables:
        have = {c["name"] for c in existing.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have and column.nullable:
                kind = column.type.compile(dialect=connection.dialect)
                connection.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
    for table in metadata.sorted_tables:
        for index in table.indexes:
            index.create(connection, checkfirst=True)


_NO_WAIT_FOR_DISK = text("SET LOCAL synchronous_commit TO OFF")


@contextmanager
def session_scope(engine: Engine, wait_for_disk: bool = True) -> Iterator[Session]:
    """A transaction: commit on success, roll back on any error, always close.

    `wait_for_disk=False`: on PostgreSQL this transaction's commit returns before its log is on
    disk (SET LOCAL synchronous_commit TO OFF, this transaction only). It survives a crash of
    any process of ours as any commit does; a crash of PostgreSQL or of its machine may lose
    it within the last ~0.6 s (3 x wal_writer_delay), unless a later commit that waits has put
    it on disk (one log, written in order). For what a retry redoes anyway, never for what a
    customer or the bank relies on. On SQLite, a commit as any other."""
    factory = _sessions.get(id(engine))
    if factory is None or factory.kw.get("bind") is not engine:
        factory = _sessions[id(engine)] = sessionmaker(bind=engine, future=True, expire_on_commit=False)
    session = factory()
    try:
        if not wait_for_disk and engine.dialect.name == "postgresql":
            session.execute(_NO_WAIT_FOR_DISK)
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
