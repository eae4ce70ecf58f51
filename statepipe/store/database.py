"""Opening the store: the embedded server or STATEPIPE_DATABASE_URL, a small pool, the schema."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from statepipe.config import pool_timeout
from statepipe.errors import ConfigError, DatabaseUnavailable
from statepipe.store import embedded
from statepipe.store.store import Store, ensure_schema, first_line

# psycopg_pool warns at every attempt to replace a lost connection, about one a second while the
# server is away (see Pool); the engine reports the outage itself, once per retry of its commits
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

# How long the pool keeps trying to replace a lost connection on its own, and how often a client
# waiting for a connection asks again (see Pool.getconn).
RECONNECT_S = 2.0
ASK_EVERY_S = 1.0


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

    committing = connection

    def close(self) -> None:
        self.conn.close()


class Pool(ConnectionPool):
    """psycopg_pool's pool, plus one connection kept for commits, and prompt reconnection.

    The pool hands idle connections out in turn (first in, first out), so a run committing step
    after step visits every backend a busy moment opened, each with cold caches: W1 took 20%
    longer over six pooled connections than over one. Commits, the engine's hot path, take the
    kept connection; another committer meanwhile borrows one from the pool as before.

    psycopg_pool replaces a lost connection in the background with a backoff that doubles from
    1 s for up to five minutes, and opens no other while it does; a client waiting for a
    connection only waits (30 s, then the engine asks again). After a 40 s outage, work went on
    17 to 26 s after the server was back, the longer the outage the later. Here the pool gives a
    lost connection up after RECONNECT_S, and a waiting client asks again every ASK_EVERY_S,
    which lets the pool open a connection for it at once: a connection about a second after the
    server accepts them, whatever the outage's length."""

    conninfo: str  # always the URL here, never a callable (LISTEN connections reuse it)

    def __init__(self, conninfo: str, **kwargs: Any) -> None:
        kwargs.setdefault("reconnect_timeout", RECONNECT_S)
        super().__init__(conninfo, **kwargs)
        self._kept: psycopg.Connection[Any] | None = None
        self._kept_lock = threading.Lock()

    def getconn(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        """psycopg_pool's getconn, waiting up to `timeout` (the pool's) in turns of ASK_EVERY_S:
        a client joining the queue is what makes the pool open a new connection."""
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            try:
                return super().getconn(min(left, ASK_EVERY_S))
            except PoolTimeout:
                if left <= ASK_EVERY_S:
                    raise PoolTimeout(f"couldn't get a connection after {wait:.2f} sec") from None

    @contextmanager
    def committing(self) -> Iterator[psycopg.Connection[Any]]:
        if not self._kept_lock.acquire(blocking=False):
            with self.connection() as conn:
                yield conn
            return
        try:
            if self._kept is not None and self._kept.closed:  # lost while idle: the pool replaces it
                self.putconn(self._kept)
                self._kept = None
            if self._kept is None:
                self._kept = self.getconn()
            conn = self._kept
            try:
                yield conn
            except psycopg.OperationalError:
                self._kept = None
                self.putconn(conn)  # the pool sees it broken and opens another in its place
                raise
        finally:
            self._kept_lock.release()

    def close(self, timeout: float = 5.0) -> None:
        with self._kept_lock:
            if self._kept is not None:
                self.putconn(self._kept)
                self._kept = None
        super().close(timeout)


def open_store(url: str | None, *, max_size: int = 4, timeout: float | None = None) -> Store:
    """Connect once directly (so an unreachable server is one clear error, at once) and apply the
    schema; then keep that connection (max_size=1) or hand out pooled ones. Every connection
    speaks UTF-8, whatever the database's encoding: outputs and event data are sent as UTF-8 JSON
    text, which the server converts (a SQL_ASCII or LATIN1 database would otherwise have the
    client refuse the first non-ASCII character). Each is named `statepipe PID` in
    pg_stat_activity (unless the URL or PGAPPNAME names it), so whose a backend is can be told."""
    try:
        resolved = resolve_url(url)
        named = "application_name" in psycopg.conninfo.conninfo_to_dict(resolved) or "PGAPPNAME" in os.environ
        conninfo = psycopg.conninfo.make_conninfo(
            resolved, client_encoding="UTF8", **({} if named else {"application_name": f"statepipe {os.getpid()}"})
        )
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"invalid database URL: {first_line(exc)}") from exc
    try:
        conn = psycopg.connect(conninfo, connect_timeout=5, autocommit=True)
        ensure_schema(conn)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {_describe(conninfo)}: {first_line(exc)}") from exc
    if max_size == 1:
        return Store(SingleConnection(conn, conninfo))
    conn.close()
    pool = Pool(
        conninfo,
        min_size=1,
        max_size=max_size,
        open=True,
        timeout=pool_timeout() if timeout is None else timeout,
        kwargs={"autocommit": True, "prepare_threshold": 0},  # the same few statements, again and again
        name="statepipe",
    )
    return Store(pool)
