"""A PostgreSQL of one's own that can be stopped and started again (pgserver's binary in a data
directory of its own): for the outage tests (tests/test_recovery.py) and bench/db_recovery.py.
It is started and stopped from fresh processes, since pgserver keeps one handle per process and
a process cannot start again a server it stopped."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parent.parent


class OwnPostgres:
    def __init__(self, home: Path, env: Mapping[str, str]) -> None:
        self.home = home
        self.env = {**env, "STATEPIPE_HOME": str(home)}
        self.env.pop("STATEPIPE_DATABASE_URL", None)
        self.url = ""

    def _embedded(self, call: str) -> subprocess.Popen[str]:
        code = f"from statepipe.store import embedded; print(embedded.{call})"
        return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=self.env, stdout=subprocess.PIPE, text=True)

    def start(self) -> float:
        """Start the server; the monotonic time it first accepted a connection."""
        starting = self._embedded("ensure_running().url")
        accepted = None
        while self.url and accepted is None and starting.poll() is None:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                accepted = time.monotonic()
            except psycopg.OperationalError:
                time.sleep(0.01)
        out, _ = starting.communicate(timeout=60)
        if starting.returncode != 0:
            raise RuntimeError(f"the PostgreSQL in {self.home} did not start")
        self.url = self.url or out.strip()
        return accepted or time.monotonic()

    def stop(self) -> None:
        if self._embedded("stop()").wait(timeout=60) != 0:
            raise RuntimeError(f"the PostgreSQL in {self.home} did not stop")


def last_seqs(conn: psycopg.Connection[Any], run_ids: list[str]) -> list[int]:
    """Each run's last event number (0: not there)."""
    rows: dict[str, int] = dict(conn.execute("SELECT id, last_seq FROM statepipe.runs WHERE id = ANY (%s)", (run_ids,)).fetchall())
    return [int(rows.get(r, 0)) for r in run_ids]
