"""Crash-resume stays exactly-once at scale (issue 17): a `statepipe run` of a 20,000-child
fan-out is killed with SIGKILL mid-fan-out, `statepipe resume` completes it, and every child has
exactly one succeeded attempt, as one query over statepipe.attempts shows (about 10 s: it stays
in the default suite)."""

from __future__ import annotations

import subprocess
import time

import psycopg
from conftest import REPO, cli_env, kill9, workflow_path


def _succeeded_children(conn: psycopg.Connection, run_id: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM statepipe.steps WHERE run_id = %s AND name = 'child' AND item <> '' AND state = 'succeeded'",
        (run_id,),
    ).fetchone()
    return int(row[0]) if row else 0


def test_kill_9_mid_fan_out_then_resume_runs_every_child_exactly_once(cli, db_url):
    width = 20_000
    # the store says when a quarter is done: a reader of the run's stdout lags behind it
    proc = subprocess.Popen([*cli.argv("run", workflow_path("wide_trivial"), "-i", f"width={width}")], cwd=REPO,
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            deadline = time.monotonic() + 240
            run_id = None
            while time.monotonic() < deadline:
                row = conn.execute("SELECT id FROM statepipe.runs").fetchone()
                run_id = row[0] if row else None
                if run_id and _succeeded_children(conn, run_id) >= width // 4:
                    break
                time.sleep(0.02)
            kill9(proc)
            assert run_id is not None
            at_kill = _succeeded_children(conn, run_id)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert width // 4 <= at_kill < width  # killed mid-fan-out

    resumed = cli("resume", run_id, timeout=600)

    assert resumed.returncode == 0, resumed.stderr
    with psycopg.connect(db_url) as conn:
        children, once = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE succeeded = 1) FROM (SELECT item,"
            "  count(*) FILTER (WHERE state = 'succeeded') AS succeeded FROM statepipe.attempts"
            "  WHERE run_id = %s AND step = 'child' AND item <> '' GROUP BY item) c", (run_id,),
        ).fetchone()
        (result,) = conn.execute(
            "SELECT a.output FROM statepipe.attempts a JOIN statepipe.steps s ON s.run_id = a.run_id AND s.name = a.step"
            " AND s.item = a.item AND s.attempt = a.number WHERE a.run_id = %s AND a.step = 'join' AND a.state = 'succeeded'",
            (run_id,),
        ).fetchone()
    assert children == once == width
    assert result == width * (width - 1)
