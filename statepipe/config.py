"""Settings from flags and environment; nothing else reads os.environ for these."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def data_dir() -> Path:
    """Where the embedded PostgreSQL keeps its data: STATEPIPE_HOME, else the per-user data dir."""
    home = os.environ.get("STATEPIPE_HOME")
    return Path(home).expanduser() if home else Path(platformdirs.user_data_dir("statepipe"))


def output_dir(flag: str | None = None, recorded: str | None = None) -> Path:
    """`recorded`: the folder an existing run was started with, so its event file stays in one
    place whichever folder a later command runs from; the flag and the environment still win."""
    return Path(flag or os.environ.get("STATEPIPE_OUTPUT_DIR") or recorded or "output")


def database_url(flag: str | None = None) -> str | None:
    """An explicit PostgreSQL URL, or None for the embedded server."""
    return flag or os.environ.get("STATEPIPE_DATABASE_URL") or None


CHILD_SLOTS = 64  # children of distributed fan-outs a process runs at once (worker --children)


def lease_seconds() -> float:
    return float(os.environ.get("STATEPIPE_LEASE_SECONDS", "15"))


def pool_timeout() -> float:
    """Seconds a command waits for a pooled connection (PostgreSQL away, or every connection
    busy) before it calls the database unavailable; the engine then tries again."""
    return float(os.environ.get("STATEPIPE_POOL_TIMEOUT", "30"))
