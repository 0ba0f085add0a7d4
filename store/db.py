"""Engine and sessions: SQLite (WAL, foreign keys, busy timeout) by default, PostgreSQL by URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine

from store.blobs import BlobStore
from store.settings import Settings, load_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _normalise_url(url: str) -> str:
    # Users paste libpq-style URLs; route them to psycopg 3, the driver we install.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    url = _normalise_url(url)
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            # Let SQLAlchemy, not pysqlite, issue BEGIN, so BEGIN IMMEDIATE works for claims.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
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

        immediate=True takes SQLite's write lock at BEGIN, so a read-then-write (claiming a
        job, checking a label's head) cannot interleave with another writer.
        """
        bind = self.engine
        if immediate and is_sqlite(self.engine):
            bind = self.engine.execution_options(sqlite_immediate=True)
        with Session(bind, expire_on_commit=False) as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def upgrade(self) -> None:
        from store.migrate import upgrade

        upgrade(self.engine)
