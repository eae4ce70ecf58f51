"""What the benchmark scripts share: a database of their own on the server they measure (so their
runs never mix with a user's), and a free local port for a server they start."""

from __future__ import annotations

import socket

import psycopg
from psycopg import sql


def fresh_database(url: str | None, name: str) -> str:
    """`name` dropped and made again on the server of `url` (None: the embedded one); its URL."""
    from statepipe.store.database import resolve_url

    admin = resolve_url(url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = psycopg.conninfo.conninfo_to_dict(admin)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo(**params)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
