"""One executor owns a run at a time (a lease with a heartbeat and a fencing token).

Two `statepipe resume` of the same run: exactly one proceeds (exit 0), the other refuses (exit 4)
with a message naming the owner. An owner that stops heartbeating (frozen, not dead) loses the
run once its lease lapses, and when it wakes it can write nothing more to it."""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

import psycopg
from conftest import EventReader, error_message, is_event, kill9, workflow_path


def _resumable_run(spawn: Any, store: Any) -> str:
    """A run left mid-step by kill -9 (slow steps, so the resumes overlap for seconds)."""
    proc = spawn("run", workflow_path("crashy"), "-i", "pause=1", "-i", "items=3")
    reader = EventReader(proc)
    run_id = reader.run_id
    reader.until(is_event("step_started", "seed"), timeout=60)
    kill9(proc)
    assert store.get_run(run_id).state == "running"
    return run_id


def _resume(spawn: Any, run_id: str) -> tuple[Any, EventReader]:
    """Start `statepipe resume` in the background; its stdout is drained by the reader."""
    proc = spawn("resume", run_id)
    return proc, EventReader(proc)


def _finish(*procs: Any) -> dict[Any, tuple[int, str]]:
    """Wait for each process; its exit code and stderr."""
    out = {}
    for p in procs:
        code = p.wait(timeout=120)
        out[p] = (code, p.stderr.read())
    return out


def _assert_one_winner(outcomes: dict[Any, tuple[int, str]], run_id: str, store: Any) -> None:
    assert sorted(code for code, _ in outcomes.values()) == [0, 4], outcomes
    winner = next(p for p, (code, _) in outcomes.items() if code == 0)
    loser_err = next(err for code, err in outcomes.values() if code == 4)
    # the refusal names the owner: host and pid of the process executing the run
    owner = f"{socket.gethostname()}:{winner.pid}:"
    assert f"run {run_id} is being executed by {owner}" in error_message(loser_err)

    snap = store.snapshot(run_id)
    assert snap.run.state == "succeeded"
    assert snap.run.owner is None  # released at the end
    # one executor did the work: every step succeeded exactly once, the crashed seed attempt
    # was abandoned once, and only one process resumed the run
    for step in snap.steps:
        assert [a.state for a in step.attempts].count("succeeded") == 1, step.name
    seed = next(s for s in snap.steps if s.name == "seed")
    assert [a.state for a in seed.attempts] == ["abandoned", "succeeded"]
    resumes = [e for e in store.events_after(run_id, 0, 100_000) if e.type == "run_resumed"]
    assert len(resumes) == 1 and resumes[0].data["owner"].startswith(owner)


def test_second_resume_while_the_first_executes_is_refused_naming_the_owner(spawn, store):
    run_id = _resumable_run(spawn, store)
    first, events = _resume(spawn, run_id)
    events.until(is_event("run_resumed"), timeout=60)  # the first has claimed the run
    second, _ = _resume(spawn, run_id)
    _assert_one_winner(_finish(first, second), run_id, store)


def test_resume_of_a_run_another_live_process_executes_is_refused(spawn, cli, store):
    runner = spawn("run", workflow_path("crashy"), "-i", "pause=1", "-i", "items=2")
    reader = EventReader(runner)
    run_id = reader.run_id
    reader.until(is_event("step_started", "seed"), timeout=60)

    done = cli("resume", run_id)
    assert done.returncode == 4
    owner = f"{socket.gethostname()}:{runner.pid}:"
    assert f"is being executed by {owner}" in error_message(done)

    assert runner.wait(timeout=60) == 0  # the owner was not disturbed
    assert store.get_run(run_id).state == "succeeded"


def _waiting_on_locks(db_url: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query ILIKE '%FOR UPDATE%'"
        ).fetchone()
    return int(row[0]) if row else 0


def test_two_resumes_started_together_let_exactly_one_proceed(spawn, store, db_url):
    run_id = _resumable_run(spawn, store)
    # Started together, both resumes read the run (and its crashed owner) before either claims
    # it. Make that interleaving certain rather than likely: hold the run's row lock while each
    # reads the run (plain reads are not blocked) and then queues for the lock in its claim.
    with psycopg.connect(db_url) as blocker:
        blocker.execute("SELECT 1 FROM statepipe.runs WHERE id = %s FOR UPDATE", (run_id,))
        first, _ = _resume(spawn, run_id)
        second, _ = _resume(spawn, run_id)
        deadline = time.monotonic() + 60
        while _waiting_on_locks(db_url) < 2:
            assert time.monotonic() < deadline, "both resumes should reach their claim"
            time.sleep(0.05)
        blocker.rollback()  # both now claim, one after the other
    _assert_one_winner(_finish(first, second), run_id, store)


# -- a stalled owner -------------------------------------------------------------------------------


def _stall_owner_and_take_over(spawn: Any, cli: Any, store: Any) -> tuple[Any, str, Any]:
    """Start a run with a 1 s lease, freeze its process (SIGSTOP: a closed laptop) mid-step, wait
    for the lease to lapse, and resume the run from another process."""
    runner = spawn("run", workflow_path("crashy"), "-i", "pause=0.6", "-i", "items=2", STATEPIPE_LEASE_SECONDS="1")
    reader = EventReader(runner)
    run_id = reader.run_id
    reader.until(is_event("step_started", "seed"), timeout=60)
    deadline = time.monotonic() + 30
    with psycopg.connect(store.pool.conninfo, autocommit=True) as conn:
        while True:  # freeze it outside a transaction, so it holds no lock the resume needs
            os.kill(runner.pid, signal.SIGSTOP)
            (in_tx,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state LIKE 'idle in transaction%'"
            ).fetchone()
            if not in_tx:
                break
            assert time.monotonic() < deadline
            os.kill(runner.pid, signal.SIGCONT)
            time.sleep(0.01)
        while True:
            (lapsed,) = conn.execute(
                "SELECT lease_expires_at < now() FROM statepipe.runs WHERE id = %s", (run_id,)
            ).fetchone()
            if lapsed:
                break
            assert time.monotonic() < deadline, "the frozen owner's lease should lapse"
            time.sleep(0.1)
    resumed = cli("resume", run_id)
    return runner, run_id, resumed


def test_a_stalled_owner_is_taken_over_once_its_lease_lapses_and_then_writes_nothing(spawn, cli, store):
    runner, run_id, resumed = _stall_owner_and_take_over(spawn, cli, store)
    assert resumed.returncode == 0, resumed.stderr
    finished = store.snapshot(run_id)
    assert finished.run.state == "succeeded"
    seed = next(s for s in finished.steps if s.name == "seed")
    assert [a.state for a in seed.attempts] == ["abandoned", "succeeded"]

    os.kill(runner.pid, signal.SIGCONT)  # the old owner wakes up, its step still "running"
    assert runner.wait(timeout=60) != 0
    # fenced out: it wrote nothing, the run is exactly as the new owner left it
    after = store.snapshot(run_id)
    assert after.run.last_seq == finished.run.last_seq
    assert after.run.state == "succeeded"
    assert [(s.name, s.item, s.state, len(s.attempts)) for s in after.steps] == [
        (s.name, s.item, s.state, len(s.attempts)) for s in finished.steps
    ]


def test_a_fenced_out_owner_stops_with_exit_4_and_one_clear_message(spawn, cli, store):
    runner, run_id, resumed = _stall_owner_and_take_over(spawn, cli, store)
    assert resumed.returncode == 0, resumed.stderr
    os.kill(runner.pid, signal.SIGCONT)
    code = runner.wait(timeout=60)
    stderr = runner.stderr.read()
    assert code == 4, stderr
    assert "another executor took it over" in error_message(stderr)
