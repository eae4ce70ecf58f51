"""Opening the store: the embedded server or STATEPIPE_DATABASE_URL, a small pool, the schema."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from statepipe.errors import DatabaseUnavailable
from statepipe.store import embedded
from statepipe.store.store import Store, ensure_schema, first_line


def resolve_url(url: str | None) -> str:
    return url if url else embedded.ensure_running().url


def _describe(url: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    host = info.get("host") or "localhost"
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


class SingleConnection:
    """The pool interface over one connection: short CLI commands skip the pool's threads."""

    def __init__(self, conn: psycopg.Connection[Any], conninfo: str | None = None) -> None:
        self.conn = conn
        # the URL it was opened with: conn.info.dsn leaves the password out, and LISTEN reconnects
        self.conninfo = conninfo or conn.info.dsn

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        yield self.conn

    def close(self) -> None:
        self.conn.close()


def open_store(url: str | None, *, max_size: int = 4, timeout: float = 30.0) -> Store:
    """Connect once directly (so an unreachable server is one clear error, at once) and apply the
    schema; then keep that connection (max_size=1) or hand out pooled ones."""
    conninfo = resolve_url(url)
    try:
        psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise DatabaseUnavailable(f"invalid database URL: {first_line(exc)}") from exc
    try:
        conn = psycopg.connect(conninfo, connect_timeout=5, autocommit=True)
        ensure_schema(conn)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {_describe(conninfo)}: {first_line(exc)}") from exc
    if max_size == 1:
        return Store(SingleConnection(conn, conninfo))
    conn.close()
    pool = ConnectionPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        open=True,
        timeout=timeout,
        kwargs={"autocommit": True, "prepare_threshold": 0},  # the same few statements, again and again
        name="statepipe",
    )
    return Store(pool)
