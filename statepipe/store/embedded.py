"""The zero-setup PostgreSQL: pgserver's real server binary, kept running between commands in the
per-user data directory so the next command connects at once."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statepipe.config import data_dir
from statepipe.errors import DatabaseUnavailable
from statepipe.processes import pid_alive

# Raised from pgserver's default of 100 so a pool per process, workers and benchmarks fit.
SERVER_SETTINGS = {"max_connections": "400", "shared_buffers": "256MB"}
_MARKER = "# statepipe settings"


@dataclass(frozen=True)
class ServerInfo:
    pgdata: Path
    pid: int | None
    socket_dir: str | None
    port: int | None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.socket_dir}&port={self.port}"


def pgdata() -> Path:
    return data_dir() / "pg"


def status() -> ServerInfo:
    """Read postmaster.pid directly: much cheaper than importing pgserver on every command."""
    path = pgdata()
    try:
        lines = (path / "postmaster.pid").read_text().splitlines()
        pid, port, socket_dir = int(lines[0]), int(lines[3]), lines[4]
    except (OSError, ValueError, IndexError):
        return ServerInfo(path, None, None, None)
    if not pid_alive(pid) or not socket_dir:
        return ServerInfo(path, None, None, None)
    return ServerInfo(path, pid, socket_dir, port)


def ensure_running() -> ServerInfo:
    info = status()
    if info.running:
        return info
    path = pgdata()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pgserver, pg_ctl = _pgserver()
        server = pgserver.get_server(path, cleanup_mode=None)
        conf = path / "postgresql.conf"
        if _MARKER not in conf.read_text():
            with conf.open("a") as fh:
                fh.write(f"\n{_MARKER}\n")
                for key, value in SERVER_SETTINGS.items():
                    fh.write(f"{key} = {value}\n")
            pg_ctl(["-w", "restart"], pgdata=path, user=server.system_user, timeout=30)
    except Exception as exc:  # pgserver raises assorted errors; report them as one line
        raise DatabaseUnavailable(f"could not start the embedded PostgreSQL in {path}: {exc}") from exc
    info = status()
    if not info.running:
        raise DatabaseUnavailable(f"the embedded PostgreSQL in {path} did not start; see {path / 'log'}")
    return info


def _pgserver() -> tuple[Any, Any]:
    """pgserver and its pg_ctl, imported only when a server must start or stop (psutil and
    fasteners make it slow), quietly: platformdirs warns when XDG_RUNTIME_DIR is unset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at import, one per binary
    return pgserver, pg_ctl


def stop() -> bool:
    """Stop the embedded server; False when it was not running."""
    info = status()
    if not info.running:
        return False
    _, pg_ctl = _pgserver()

    import pwd

    user = None
    if os.geteuid() == 0:
        user = pwd.getpwuid(info.pgdata.stat().st_uid).pw_name
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=info.pgdata, user=user, timeout=30)
    return True
