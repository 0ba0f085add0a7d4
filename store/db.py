"""Engine and sessions: SQLite (WAL, foreign keys, busy timeout) by default, PostgreSQL by URL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, create_engine

from store.blobs import BlobStore
from store.errors import Busy, WriteNeedsImmediate
from store.settings import Settings, load_settings

# How long a writer waits for SQLite's write lock before giving up with Busy.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def sqlite_busy_timeout_ms() -> int:
    raw = os.environ.get("MEDLOOP_SQLITE_BUSY_TIMEOUT_S")
    return int(float(raw) * 1000) if raw else SQLITE_BUSY_TIMEOUT_MS


def _normalise_url(url: str) -> str:
    # Users paste libpq-style URLs; route them to psycopg 3, the driver we install.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def engine_for(url: str) -> Engine:
    return _engine(_normalise_url(url), sqlite_busy_timeout_ms())


@lru_cache(maxsize=8)
def _engine(url: str, busy_ms: int) -> Engine:
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": busy_ms / 1000}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            # Let SQLAlchemy, not pysqlite, issue BEGIN, so BEGIN IMMEDIATE works for claims.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn) -> None:  # noqa: ANN001
            immediate = conn.get_execution_options().get("sqlite_immediate")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


# Server answers that mean "another transaction is in the way; the same work may succeed a
# moment later": SQLite's locked / busy, PostgreSQL's lock, serialisation and deadlock codes.
_SQLITE_BUSY = ("database is locked", "database is busy", "database table is locked")
_PG_RETRYABLE = {"55P03", "40001", "40P01"}
BUSY_MESSAGE = ("the database is busy with other work and nothing was saved: try again in a "
                "moment")


def is_busy(exc: BaseException) -> bool:
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _PG_RETRYABLE:
        return True
    return any(m in str(orig).lower() for m in _SQLITE_BUSY)


def _refuse_deferred_writes(session: Session) -> None:
    """Make a write in a reader's transaction fail loudly, in tests and in production."""

    @event.listens_for(session, "before_flush")
    def _check(s, _ctx, _instances) -> None:  # noqa: ANN001
        if s.new or s.dirty or s.deleted:
            raise WriteNeedsImmediate(
                "this transaction writes but was opened without immediate=True: use "
                "store.session(immediate=True) for every transaction that writes")

    @event.listens_for(session, "do_orm_execute")
    def _check_statement(state) -> None:  # noqa: ANN001
        if state.is_insert or state.is_update or state.is_delete:
            raise WriteNeedsImmediate(
                "this transaction runs an INSERT/UPDATE/DELETE but was opened without "
                "immediate=True: use store.session(immediate=True)")


class Store:
    """The engine plus the blob store for one data directory: what every caller holds."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or load_settings()
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = engine_for(self.settings.database_url)
        self.blobs = BlobStore(self.settings.blob_dir)

    @contextmanager
    def session(self, immediate: bool = False) -> Iterator[Session]:
        """One transaction: commits on success, rolls back on any error.

        A transaction that writes must say so: immediate=True takes SQLite's write lock at
        BEGIN (waiting up to the busy timeout for it), so its reads and writes cannot
        interleave with another writer's commit. Without it the session only reads; a write
        raises WriteNeedsImmediate. Keep writing transactions short: they hold that lock.
        A database that stays locked past the timeout raises Busy (nothing was saved).
        """
        bind = self.engine
        if immediate and is_sqlite(self.engine):
            bind = self.engine.execution_options(sqlite_immediate=True)
        with Session(bind, expire_on_commit=False) as s:
            if not immediate:
                _refuse_deferred_writes(s)
            try:
                yield s
                s.commit()
            except DBAPIError as exc:
                s.rollback()
                if is_busy(exc):
                    raise Busy(BUSY_MESSAGE) from exc
                raise
            except BaseException:
                s.rollback()
                raise

    def upgrade(self) -> None:
        from store.migrate import upgrade

        upgrade(self.engine)
