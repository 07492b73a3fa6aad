"""The two SQL engines the store runs on, and the few places where their SQL differs.

The store's SQL is written once, in the subset both engines read alike: ``?`` placeholders,
``INSERT ... ON CONFLICT`` for upserts (SQLite has it since 3.24), savepoints. What cannot be
shared is a :class:`Dialect`: how a write transaction begins, the type of a float column, how a
field of a JSON text column is read. SQLite is the embedded default (one file under
``--state DIR``); PostgreSQL (``--store postgresql://...``) is for a store that outlives one
machine. It is reached through psycopg 3 (typed, binary wheels, statements prepared on the
server once they repeat), imported only when a PostgreSQL store is opened (the ``postgresql``
extra). Not SQLAlchemy Core: the store's SQL is short, hand-written and already portable but for
the dialect's few lines, and a query builder would rewrite all of it to gain nothing here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

#: the URL schemes that name a PostgreSQL store
POSTGRESQL_SCHEMES = ("postgresql", "postgres")


class StoreUnavailable(RuntimeError):
    """The database server cannot be reached or refused the write: like a disk error for the
    embedded store, the unit of work is rolled back and tried again later."""


class Rows(Protocol):
    """What a statement returns: rows readable by column name."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """One connection, in autocommit mode: the store opens and ends its transactions itself."""

    def execute(self, sql: str, parameters: Any = (), /) -> Rows: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any: ...

    def close(self) -> None: ...

    @property
    def in_transaction(self) -> bool: ...


@dataclass(frozen=True)
class Dialect:
    name: Literal["sqlite", "postgresql"]
    #: opens a write transaction (SQLite: take the write lock now, not at the first write)
    begin: str
    #: a float column (PostgreSQL's REAL is single precision: too short for a timestamp)
    real: str
    #: a field of a JSON text column as text (objects as JSON text), ``{column}``/``{field}``
    json_text: str
    #: appended to a SELECT whose row must not change before the transaction ends (SQLite:
    #: nothing, its write transaction already excludes every other writer)
    lock_shared: str
    #: an integer key numbered by the engine in insertion order
    serial: str

    def json_field(self, column: str, field: str) -> str:
        return self.json_text.format(column=column, field=field)


SQLITE = Dialect("sqlite", begin="BEGIN IMMEDIATE", real="REAL",
                 json_text="json_extract({column}, '$.{field}')", lock_shared="",
                 serial="INTEGER")
POSTGRESQL = Dialect("postgresql", begin="BEGIN", real="DOUBLE PRECISION",
                     json_text="({column}::jsonb ->> '{field}')", lock_shared=" FOR SHARE",
                     serial="BIGSERIAL")


def is_postgresql_url(location: str) -> bool:
    return urlsplit(location).scheme in POSTGRESQL_SCHEMES


def redacted(url: str) -> str:
    """The URL without its password, fit for a log line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def open_sqlite(path: Path) -> sqlite3.Connection:
    """The embedded store: WAL keeps readers (the API) from blocking the writer, and
    ``synchronous=FULL`` makes each commit durable before its messages are acknowledged."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


@lru_cache(maxsize=512)
def _pyformat(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (the store's SQL has no other ``?`` or ``%``)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresConnection:
    """A psycopg connection that reads the store's ``?`` SQL, returns rows as dicts and reports
    a lost server as :class:`StoreUnavailable`. A broken connection is replaced when the next
    transaction begins, never in the middle of one."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn = self._connect()

    def _connect(self) -> Any:
        import psycopg
        from psycopg.rows import dict_row

        try:
            return psycopg.connect(self.url, autocommit=True, row_factory=dict_row)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"{redacted(self.url)}: {exc}".strip()) from None

    def execute(self, sql: str, parameters: Any = (), /) -> Rows:
        import psycopg

        if sql == POSTGRESQL.begin and self._conn.broken:
            self._conn = self._connect()
        try:
            cursor: Rows = self._conn.execute(_pyformat(sql), parameters)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"{redacted(self.url)}: {exc}".strip()) from None
        return cursor

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> None:
        import psycopg

        try:
            with self._conn.cursor() as cursor:
                cursor.executemany(_pyformat(sql), list(parameters))
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"{redacted(self.url)}: {exc}".strip()) from None

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open on the server (as sqlite3's attribute of that name)."""
        from psycopg.pq import TransactionStatus

        return bool(self._conn.info.transaction_status != TransactionStatus.IDLE)

    def close(self) -> None:
        self._conn.close()
