"""What the benchmark scripts share: a database of their own on the server they measure (so their
runs never mix with a user's), a free local port, and a `statepipe serve` started on one."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import psycopg
from psycopg import sql


def database_url(url: str | None, name: str) -> str:
    """The URL of database `name` on the server of `url` (None: the embedded one)."""
    from statepipe.store.database import resolve_url

    params = psycopg.conninfo.conninfo_to_dict(resolve_url(url))
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo(**params)


def fresh_database(url: str | None, name: str) -> str:
    """`name` dropped and made again on the server of `url` (None: the embedded one); its URL."""
    from statepipe.store.database import resolve_url

    with psycopg.connect(resolve_url(url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_url(url, name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(env: Mapping[str, str], cwd: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """`statepipe serve` on a free port, once it answers /api/health; the process and its base URL."""
    import httpx

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "statepipe", "serve", "--port", str(port)], cwd=cwd, env=dict(env),
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(base + "/api/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return server, base
