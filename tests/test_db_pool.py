"""Pooled connections to a database server (cardsystem.db.get_engine): a connection in steady
use is not pinged before each transaction; one that sat idle is, so a database that restarted
meanwhile costs nothing; one that broke while in use fails one statement, and the next
transaction runs on a new connection."""
from __future__ import annotations

import os

import psycopg2
import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from cardsystem import db
from tests.whatsapp.test_store import POSTGRES, require_postgres


@pytest.fixture
def engine():
    require_postgres(POSTGRES)
    db.dispose_engine(POSTGRES)
    yield db.get_engine(POSTGRES)
    db.dispose_engine(POSTGRES)


def backend_pid(engine) -> int:
    with db.session_scope(engine) as s:
        return s.execute(text("SELECT pg_backend_pid()")).scalar()


def terminate(pid: int) -> None:
    admin = psycopg2.connect(POSTGRES)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
    admin.close()


def statements(engine) -> list:
    seen = []
    event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def test_a_connection_in_steady_use_is_not_pinged(engine):
    first = backend_pid(engine)
    seen = statements(engine)
    for _ in range(5):
        assert backend_pid(engine) == first  # the same pooled connection
    assert seen == ["SELECT pg_backend_pid()"] * 5  # and nothing else went to the server


def test_an_idle_connection_whose_server_side_went_away_is_replaced_before_use(engine, monkeypatch):
    first = backend_pid(engine)
    terminate(first)  # as a database restart would
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)  # (it sat idle long enough)
    second = backend_pid(engine)
    assert second != first


def test_a_connection_that_broke_in_use_fails_one_transaction_and_the_next_runs(engine):
    first = backend_pid(engine)
    terminate(first)
    with pytest.raises(DBAPIError):
        backend_pid(engine)  # (not idle: not pinged; the caller's retry takes it from here)
    assert backend_pid(engine) != first


def test_processes_starting_together_create_a_postgresql_schema_once_without_racing():
    """The workers, the ingress's recorder and the action server all create the tables they
    need when they start; on PostgreSQL two CREATE TABLEs at once make one fail on a duplicate
    key (seen in CI: a worker died at start). create_schema takes an advisory lock."""
    import subprocess
    import sys

    from tests.servers import ROOT, pg_url, postgres_database

    script = ("import sys; from cardsystem.db import get_engine, create_schema; "
              "from connectors.whatsapp.store import Base; create_schema(get_engine(sys.argv[1]), Base.metadata)")
    with postgres_database("cardcare_schema") as name:
        starts = [subprocess.Popen([sys.executable, "-c", script, pg_url(name)], cwd=ROOT, stderr=subprocess.PIPE,
                                   text=True) for _ in range(6)]
        failures = [p.communicate(timeout=120)[1] for p in starts if p.wait(timeout=120) != 0]
        assert failures == []


def test_as_many_threads_as_asyncio_runs_keep_their_connections_between_bursts(engine):
    """asyncio.to_thread's pool (min(32, cores + 4) threads) plus the loop may all be in a
    transaction at once: those connections stay open for the next burst instead of being closed
    and opened again (SQLAlchemy's default pool of 5 churned one PostgreSQL backend after another)."""
    import threading

    workers = min(32, (os.cpu_count() or 1) + 4) + 1
    assert db.SERVER_POOL_SIZE >= workers

    def burst() -> set:
        barrier, seen, lock = threading.Barrier(workers), set(), threading.Lock()

        def one() -> None:
            with db.session_scope(engine) as s:
                pid = s.execute(text("SELECT pg_backend_pid()")).scalar()
                barrier.wait(timeout=10)  # every thread holds its connection at the same time
            with lock:
                seen.add(pid)

        threads = [threading.Thread(target=one) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return seen

    first, second = burst(), burst()
    assert len(first) == workers
    assert second == first  # the same backends: nothing closed and reopened
