"""Recovery (issue 22, finding 9): PostgreSQL away for longer than the pool waits for a
connection, and owners that died on this machine.

- However long PostgreSQL was away, a worker and a `run` process carry on as soon as it is back
  (psycopg_pool's own reconnection backs off exponentially; see database.Pool). These tests stop
  and start a PostgreSQL of their own (pgserver, in a temporary directory), since the embedded
  server of the test session is shared by every test. They print the seconds from the server
  accepting connections to each run's next commit, and assert only on the order of events;
  bench/db_recovery.py measures the same after outages of 1, 20 and 40 s.
- A worker takes the runs of an owner whose process died on its own host at once, as `resume`
  does, not after the lease; leases and fencing tokens still decide everything else.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import CLI, EventReader, all_events, cli_env, is_event
from own_postgres import OwnPostgres, last_seqs
from test_faults import (
    EXPECTED,
    FAULTY,
    assert_alive,
    assert_each_step_succeeded_once,
    faulty_args,
    kill9,
    owner_pid,
    wait_for,
)

from statepipe.processes import owner_is_dead
from statepipe.store.database import open_store
from statepipe.store.records import ClaimRequest

HOST = socket.gethostname()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[OwnPostgres]:
    server = OwnPostgres(tmp_path / "pg-home", cli_env())
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop()
        except RuntimeError:  # stopped by the test, or never up
            pass


CHAIN = '''
import time

from statepipe import Workflow

wf = Workflow("{name}")


def _body(i):
    def body(pause: float):
        time.sleep(pause)
        return i

    return body


_prev = None
for _i in range({steps}):
    _prev = wf.step(_body(_i), name=f"s{{_i}}", after=[_prev] if _prev else [])
'''


@pytest.mark.parametrize(
    "pool_timeout, outage",
    [pytest.param(2, 4, id="4s"), pytest.param(30, 35, id="35s", marks=pytest.mark.slow)],
)
def test_a_worker_and_a_run_process_carry_on_once_postgres_is_back_from_an_outage_longer_than_the_pool_timeout(
    own_server: OwnPostgres, tmp_path: Path, pool_timeout: int, outage: float
) -> None:
    """The outage is also longer than the lease (3 s), which lapses meanwhile: each run stays
    with its owner (the worker takes only the `queued` workflow, so not the `run` process's run)."""
    steps = 24
    env = {
        "STATEPIPE_DATABASE_URL": own_server.url, "STATEPIPE_OUTPUT_DIR": str(tmp_path / "output"),
        "STATEPIPE_POOL_TIMEOUT": str(pool_timeout), "STATEPIPE_LEASE_SECONDS": "3",
    }
    for name in ("queued", "here"):
        (tmp_path / f"{name}.py").write_text(CHAIN.format(name=name, steps=steps))
    cli = CLI(own_server.url, tmp_path / "output")
    done = cli("run", "--detach", str(tmp_path / "queued.py"), "-i", "pause=0.2", **env)
    assert done.returncode == 0, done.stderr
    queued = done.stdout.strip()
    worker = cli.popen("worker", "--workflows", "queued", **env)
    here = cli.popen("run", str(tmp_path / "here.py"), "-i", "pause=0.2", **env)
    try:
        reader = EventReader(here)
        run_ids = [queued, reader.run_id]
        with psycopg.connect(own_server.url, autocommit=True) as conn:
            wait_for(lambda: assert_alive(worker, here) or min(last_seqs(conn, run_ids)) >= 8, 60, "both runs under way")
        own_server.stop()
        time.sleep(outage)
        accepted = own_server.start()
        recovered: list[float | None] = [None, None]
        with psycopg.connect(own_server.url, autocommit=True) as conn:
            seen = last_seqs(conn, run_ids)  # the first connection since the restart: nothing newer
            while None in recovered:
                for i, seq in enumerate(last_seqs(conn, run_ids)):
                    if recovered[i] is None and seq > seen[i]:
                        recovered[i] = time.monotonic() - accepted
                assert time.monotonic() < accepted + 120, "no commit in 120 s since the server was back"
                time.sleep(0.01)
        print(f"\noutage of {outage} s, pool timeout {pool_timeout} s: next commit {recovered[0]:.2f} s (worker),"
              f" {recovered[1]:.2f} s (run process) after PostgreSQL accepted connections")
        assert here.wait(timeout=120) == 0, here.stderr.read() if here.stderr else ""
        store = open_store(own_server.url, max_size=2)
        try:
            wait_for(lambda: assert_alive(worker) or store.get_run(queued).state == "succeeded", 120, "the queued run to finish", 0.2)
            for run_id, before in zip(run_ids, seen):
                snap = store.snapshot(run_id)
                assert snap.run.state == "succeeded"
                assert [(s.name, [a.state for a in s.attempts]) for s in snap.steps] == [(f"s{i}", ["succeeded"]) for i in range(steps)]
                events = all_events(store, run_id)
                assert [e.seq for e in events] == list(range(1, snap.run.last_seq + 1))
                after = [e for e in events if e.seq > before]  # committed once the server was back
                assert any(e.type == "step_started" for e in after), "no step started after the restart"
                assert after[-1].type == "run_succeeded"
        finally:
            store.pool.close()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        stderr = worker.stderr.read() if worker.stderr else ""
        assert "Traceback" not in stderr, stderr
    finally:
        for proc in (worker, here):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def test_a_worker_takes_the_run_of_an_owner_that_died_on_its_host_at_once_not_when_the_lease_expires(spawn, cli, store):
    """A lease of 60 s, so only the dead owner's pid can have let the worker in before it ran out."""
    proc = spawn(*faulty_args(pause=0.5), STATEPIPE_LEASE_SECONDS="60")
    reader = EventReader(proc)
    run_id = reader.run_id
    reader.until(is_event("step_started", "branch"), timeout=60)
    kill9(proc)
    lease_end = store.get_run(run_id).lease_expires_at
    worker = spawn("worker", "--concurrency", "1", STATEPIPE_LEASE_SECONDS="60")
    wait_for(lambda: assert_alive(worker) or store.get_run(run_id).state == "succeeded", 55, "the worker to finish the run", 0.2)
    resumed = [e for e in all_events(store, run_id) if e.type == "run_resumed"]
    assert len(resumed) == 1 and owner_pid(resumed[0].data["owner"]) == worker.pid
    assert resumed[0].ts < lease_end  # taken over while the dead owner's lease still held
    snap = store.snapshot(run_id)
    assert_each_step_succeeded_once(snap)
    assert any(a.state == "abandoned" for s in snap.steps for a in s.attempts)  # the killed attempts
    assert snap.result() == EXPECTED
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _held_run(cli: Any, conn: psycopg.Connection[Any], owner: str) -> str:
    """A run enqueued, then held by `owner` under a live lease (as a process executing it would)."""
    done = cli("run", "--detach", FAULTY)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    conn.execute(
        "UPDATE statepipe.runs SET state = 'running', owner = %s, lease_expires_at = now() + %s,"
        " fencing_token = fencing_token + 1 WHERE id = %s",
        (owner, timedelta(seconds=60), run_id),
    )
    return run_id


def test_a_worker_takes_only_runs_whose_owner_provably_died_on_its_own_host(cli, store, db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        dead = _held_run(cli, conn, f"{HOST}:{_dead_pid()}:dead00")
        _held_run(cli, conn, f"{HOST}:{os.getpid()}:alive0")  # this test's own process
        _held_run(cli, conn, f"elsewhere-{HOST}:{_dead_pid()}:remote")  # a pid only its own host can judge
    worker = f"{HOST}:{os.getpid()}:worker"
    assert store.claim_orphans(ClaimRequest(worker, 30.0, 10), HOST, owner_is_dead) == [(dead, 3)]  # fence 2 -> 3
    assert store.get_run(dead).owner == worker


def test_of_two_workers_that_see_the_same_dead_owner_only_one_takes_its_run(cli, store, db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        run_id = _held_run(cli, conn, f"{HOST}:{_dead_pid()}:dead00")
    barrier = threading.Barrier(2)
    taken: dict[str, list[tuple[str, int]]] = {}

    def claim(owner: str) -> None:
        barrier.wait()
        taken[owner] = store.claim_orphans(ClaimRequest(owner, 30.0, 1), HOST, owner_is_dead)

    owners = [f"{HOST}:{os.getpid()}:w{i}" for i in range(2)]
    threads = [threading.Thread(target=claim, args=(o,)) for o in owners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(len(v) for v in taken.values()) == [0, 1], taken
    winner = next(o for o, v in taken.items() if v)
    assert taken[winner] == [(run_id, 3)]  # the fencing token moved on once
    run = store.get_run(run_id)
    assert (run.owner, run.fencing_token) == (winner, 3)
