"""The store's write path (one statement per batch, its cost independent of the database's size, one
connection kept for it), and what a run holds in memory: outputs as stored, freed when done."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import psycopg
import pytest

from statepipe.errors import ConflictError
from statepipe.store.database import SingleConnection
from statepipe.store.records import AttemptWrite, Change, ClaimRequest, NewEvent, NewRun, NewStepRow, StepRowWrite, utcnow
from statepipe.store.store import Store


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


def _runs(store: Store, count: int, steps: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    store.create_runs([
        NewRun(run_id, "w", "w.py:wf", "{}", [NewStepRow(f"s{i}", "", None, "pending", [], position=i) for i in range(steps)],
               NewEvent("run_created"), owner="me")
        for run_id in ids
    ], ttl=60)
    return ids


def _step_done(run_id: str, i: int, output: str) -> Change:
    now = utcnow()
    return Change(
        run_id, 1, [NewEvent("step_succeeded", f"s{i}", None, 1), NewEvent("step_started", f"s{i + 1}", None, 1)],
        steps=[StepRowWrite(f"s{i}", "", "succeeded", 1, now, now, None), StepRowWrite(f"s{i + 1}", "", "running", 1, now, None, None)],
        attempts=[AttemptWrite(f"s{i}", "", 1, "succeeded", now, now, None, output)],
    )


def test_step_rows_for_a_run_that_does_not_exist_are_refused_and_nothing_is_written(conn):
    """No foreign key checks a step row's run (it cost creating runs a third of its time): the
    fencing-token UPDATE every commit starts with is what refuses rows for a run it cannot find."""
    from statepipe.errors import LeaseLost

    store = Store(SingleConnection(conn))
    (real,) = _runs(store, 1, 1)
    ghost = str(uuid.uuid4())
    fanned = [NewStepRow("child", "a", 0, "pending", [])]
    with pytest.raises(LeaseLost) as lost:
        store.commit([Change(real, 1, [NewEvent("step_expanded")], new_steps=fanned),
                      Change(ghost, 1, [NewEvent("step_expanded")], new_steps=fanned)])
    assert lost.value.run_id == ghost
    rows = conn.execute("SELECT run_id, name FROM statepipe.steps WHERE run_id = ANY(%s)", ([real, ghost],)).fetchall()
    assert rows == [(real, "s0")]
    keys = "SELECT conname FROM pg_constraint WHERE conrelid = 'statepipe.steps'::regclass AND contype = 'f'"
    assert conn.execute(keys).fetchall() == []


# an output past the splice limit: it goes beside the document, through the overlapping path
_BIG = json.dumps(["x" * 100] * 1_000)


def _seq_scans(conn: psycopg.Connection[Any]) -> dict[str, int]:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute("SELECT relname, seq_scan FROM pg_stat_user_tables WHERE schemaname = 'statepipe'").fetchall()
    return {name: int(n) for name, n in rows}


def test_a_commit_finds_its_rows_by_key_however_big_the_tables_grow(conn):
    if conn.info.server_version < 150000:
        pytest.skip("pg_stat_force_next_flush() needs PostgreSQL 15")
    store = Store(SingleConnection(conn))
    ids = _runs(store, 400, 10)  # enough rows that scanning them would look cheap to the planner
    conn.execute("ANALYZE statepipe.runs")
    conn.execute("ANALYZE statepipe.steps")
    before = _seq_scans(conn)
    for i in range(3):
        store.commit([_step_done(run_id, i, json.dumps({"i": i})) for run_id in ids[:5]])
    conn.execute("SELECT pg_stat_force_next_flush()")
    after = _seq_scans(conn)
    assert {t: after[t] - before[t] for t in ("runs", "steps", "attempts", "events")} == {
        "runs": 0, "steps": 0, "attempts": 0, "events": 0,
    }


def test_a_batch_of_many_runs_commits_each_runs_events_in_its_own_sequence(conn):
    store = Store(SingleConnection(conn))
    ids = _runs(store, 3, 3)
    events = store.commit([_step_done(run_id, 0, "{}") for run_id in ids] + [_step_done(ids[0], 1, "[1]")])
    assert [[e.seq for e in evs] for evs in events] == [[2, 3], [2, 3], [2, 3], [4, 5]]
    rows = conn.execute(
        "SELECT run_id, seq, type, step FROM statepipe.events WHERE run_id = %s ORDER BY seq", (ids[0],)
    ).fetchall()
    assert [(seq, kind, step) for _, seq, kind, step in rows] == [
        (1, "run_created", None), (2, "step_succeeded", "s0"), (3, "step_started", "s1"),
        (4, "step_succeeded", "s1"), (5, "step_started", "s2"),
    ]


@pytest.mark.parametrize("output", ["{}", _BIG], ids=["small", "big"])
@pytest.mark.parametrize("batch", [1, 3])  # one run has a path of its own in commit_changes
def test_a_commit_under_a_stale_fencing_token_names_the_run_and_writes_nothing(conn, batch, output):
    from statepipe.errors import LeaseLost

    store = Store(SingleConnection(conn))
    ids = _runs(store, batch, 3)
    stale = ids[-1]
    conn.execute("UPDATE statepipe.runs SET fencing_token = 2 WHERE id = %s", (stale,))  # another owner claimed it
    with pytest.raises(LeaseLost) as lost:
        store.commit([_step_done(run_id, 0, output) for run_id in ids])
    assert lost.value.run_id == stale
    counts = conn.execute(
        "SELECT (SELECT count(*) FROM statepipe.events WHERE run_id = ANY(%(ids)s)),"
        " (SELECT count(*) FROM statepipe.attempts WHERE run_id = ANY(%(ids)s)),"
        " (SELECT max(last_seq) FROM statepipe.runs WHERE id = ANY(%(ids)s))",
        {"ids": ids},
    ).fetchone()
    assert counts == (batch, 0, 1)  # each run's created event, nothing after it


def test_a_big_output_is_stored_exactly_as_given(conn):
    store = Store(SingleConnection(conn))
    (run_id,) = _runs(store, 1, 2)
    value = [{"n": i, "text": "é\\\"\n" * 3} for i in range(20_000)]  # well over the splice limit
    store.commit([_step_done(run_id, 0, json.dumps(value))])
    (stored,) = conn.execute("SELECT output FROM statepipe.attempts WHERE run_id = %s", (run_id,)).fetchone()
    assert stored == value


def test_work_given_to_a_big_commit_runs_while_postgresql_is_still_on_it(db_url, conn):
    import threading

    from statepipe.store.database import open_store

    store = open_store(db_url, max_size=2)
    try:
        (run_id,) = _runs(store, 1, 2)
        blocker = psycopg.connect(db_url)  # holds the run's row, so the commit cannot finish yet
        blocker.execute("SELECT 1 FROM statepipe.runs WHERE id = %s FOR UPDATE", (run_id,))
        seen: list[int] = []

        def meanwhile() -> None:
            (stored,) = conn.execute("SELECT count(*) FROM statepipe.attempts WHERE run_id = %s", (run_id,)).fetchone()
            seen.append(stored)
            blocker.rollback()

        fallback = threading.Timer(10, blocker.rollback)  # if `meanwhile` came only after the answer
        fallback.start()
        (events,) = store.commit([_step_done(run_id, 0, _BIG)], meanwhile)
        fallback.cancel()
        blocker.close()
    finally:
        store.pool.close()
    assert seen == [0]  # it ran before the commit was in, and the commit went on
    assert [e.seq for e in events] == [2, 3]
    (stored,) = conn.execute("SELECT output FROM statepipe.attempts WHERE run_id = %s", (run_id,)).fetchone()
    assert stored == json.loads(_BIG)


def test_an_error_in_a_big_commits_meanwhile_is_raised_once_the_commit_is_in(conn):
    store = Store(SingleConnection(conn))
    (run_id,) = _runs(store, 1, 2)

    def meanwhile() -> None:
        raise RuntimeError("decoding failed")

    with pytest.raises(RuntimeError, match="decoding failed"):
        store.commit([_step_done(run_id, 0, _BIG)], meanwhile)
    (events,) = store.commit([_step_done(run_id, 1, "{}")])  # the connection is idle and usable again
    assert [e.seq for e in events] == [4, 5]


def test_a_database_at_an_older_schema_version_is_brought_up_to_date_when_opened(db_url, conn):
    from statepipe.store.database import open_store
    from statepipe.store.store import SCHEMA_VERSION

    conn.execute("DROP FUNCTION statepipe.commit_changes(jsonb, jsonb[])")  # as version 1 had it
    conn.execute("DELETE FROM statepipe.schema_version")
    conn.execute("INSERT INTO statepipe.schema_version (version) VALUES (1)")
    store = open_store(db_url, max_size=1)
    try:
        (run_id,) = _runs(store, 1, 2)
        store.commit([_step_done(run_id, 0, "{}")])
    finally:
        store.pool.close()
    versions = [v for (v,) in conn.execute("SELECT version FROM statepipe.schema_version ORDER BY version")]
    assert versions == [1, SCHEMA_VERSION]


@pytest.mark.parametrize("size", [10, 2_000])  # a small output, and one past the big-output limit
def test_a_live_consumer_gets_the_output_as_stored_not_the_object_returned(store, size):
    import asyncio

    from conftest import workflow_path

    from statepipe.definition.loader import load
    from statepipe.engine.runtime import Runtime

    runtime = Runtime(store)
    loaded = load(workflow_path("shapes"))
    try:
        run_id = runtime.create_run(loaded, {"size": size})
        outcome = asyncio.run(runtime.execute(run_id, loaded))
    finally:
        runtime.close()
    assert outcome.state == "succeeded"
    # exactly what a run resumed after the first step would be handed: JSON's lists and string keys
    assert outcome.result == {"pair_type": "list", "keys": ["7"], "filler": size}


def test_a_cached_output_with_a_zero_time_to_live_is_never_reused(conn):
    store = Store(SingleConnection(conn))
    (run_id,) = _runs(store, 1, 2)
    change = _step_done(run_id, 0, '{"x": 1}')
    change.attempts[0].cache_key = "k-zero-ttl"
    store.commit([change])
    assert store.cache_lookup("k-zero-ttl", None) is not None  # no limit: found
    assert store.cache_lookup("k-zero-ttl", 3600) is not None
    assert store.cache_lookup("k-zero-ttl", 0) is None


def test_a_single_connection_store_keeps_the_url_it_was_given_for_its_listeners(db_url):
    from statepipe.store.database import open_store

    params = psycopg.conninfo.conninfo_to_dict(db_url)
    params["password"] = "s3cret"  # connection info read back from libpq leaves the password out
    url = psycopg.conninfo.make_conninfo(**params)
    store = open_store(url, max_size=1)
    try:
        assert psycopg.conninfo.conninfo_to_dict(store.pool.conninfo)["password"] == "s3cret"
    finally:
        store.pool.close()


def test_a_finished_run_is_freed_by_reference_counting_without_a_garbage_collection(store):
    """A run's executor, steps and outputs form no reference cycle once it ends: a worker that
    executes thousands of runs does not hold them (and their outputs) until a full GC pass."""
    import asyncio
    import gc

    from conftest import workflow_path

    from statepipe.definition.loader import load
    from statepipe.engine.executor import RunExecutor
    from statepipe.engine.runtime import Runtime
    from statepipe.engine.steps import StepState

    runtime = Runtime(store)
    loaded = load(workflow_path("mixed"))
    gc.collect()
    gc.disable()
    try:
        run_id = runtime.create_run(loaded, {})
        outcome = asyncio.run(runtime.execute(run_id, loaded))
        del outcome
        left = [o for o in gc.get_objects() if isinstance(o, (RunExecutor, StepState))]
    finally:
        gc.enable()
        runtime.close()
    assert left == []


def test_an_output_is_let_go_once_every_step_that_reads_it_has_succeeded(store):
    """Decoded, a big output is many times its JSON in Python objects; a long chain keeps only
    the outputs some unfinished step still needs, not every one it has produced."""
    from conftest import run_here

    run_id = run_here(store, "released")
    snap = store.snapshot(run_id)
    census = next(s for s in snap.steps if s.name == "census")
    assert census.output == {"first": 0, "second": 0, "third": 500}  # third is census's own input


def test_an_output_let_go_is_read_again_from_its_json_when_a_compensation_needs_it(store):
    from conftest import run_here

    run_id = run_here(store, "released", fail_at="census")
    snap = store.snapshot(run_id)
    assert snap.run.state == "failed"
    (undo,) = [s for s in snap.steps if s.compensates == "first"]
    assert undo.state == "succeeded"
    assert undo.output == {"saw": 500, "head": {"from": "first", "i": 0, "path": ["first"]}}


def test_commits_keep_to_one_connection_however_many_the_pool_has_opened(db_url, monkeypatch):
    """The pool hands its idle connections out in turn; commits, one after another on the hot
    path, stay on one backend whose caches are warm."""
    from statepipe.store.database import open_store

    store = open_store(db_url, max_size=6)
    try:
        held = [store.pool.getconn() for _ in range(5)]  # a busy moment opens five
        for conn in held:
            store.pool.putconn(conn)
        used: list[int] = []
        real = Store._commit_changes

        def noting(self: Store, conn: psycopg.Connection[Any], *args: Any, **kwargs: Any) -> Any:
            used.append(conn.info.backend_pid)
            return real(self, conn, *args, **kwargs)

        (run_id,) = _runs(store, 1, 6)
        monkeypatch.setattr(Store, "_commit_changes", noting)
        for i in range(5):
            store.commit([_step_done(run_id, i, "{}")])
        assert len(used) == 5 and len(set(used)) == 1
    finally:
        store.pool.close()


@pytest.mark.parametrize("output", ["{}", _BIG], ids=["small", "big"])
def test_a_commit_after_the_server_dropped_the_commit_connection_gets_a_fresh_one(db_url, conn, output):
    from statepipe.errors import DatabaseUnavailable
    from statepipe.store.database import open_store

    store = open_store(db_url, max_size=3)
    try:
        (run_id,) = _runs(store, 1, 4)
        store.commit([_step_done(run_id, 0, "{}")])  # the write path now holds its connection
        with store.pool.committing() as kept:
            pid = kept.info.backend_pid
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(DatabaseUnavailable):
            store.commit([_step_done(run_id, 1, output)])
        (events,) = store.commit([_step_done(run_id, 1, output)])  # the writer's retry
        assert [e.seq for e in events] == [4, 5]
        with store.pool.committing() as kept:
            assert kept.info.backend_pid != pid
    finally:
        store.pool.close()


def test_a_commit_connection_found_closed_goes_back_to_the_pool_and_is_replaced(db_url):
    from statepipe.store.database import open_store

    store = open_store(db_url, max_size=2)
    try:
        (run_id,) = _runs(store, 1, 4)
        store.commit([_step_done(run_id, 0, "{}")])
        with store.pool.committing() as kept:
            kept.close()  # as psycopg leaves a connection it found broken
        store.commit([_step_done(run_id, 1, "{}")])
        with store.pool.connection(timeout=5):  # the closed one no longer counts against the two
            pass
    finally:
        store.pool.close()


def _queued(store: Store, workflow: str = "w") -> str:
    """A run nobody owns yet, as `run --detach` and `batch` leave it for the workers."""
    run_id = str(uuid.uuid4())
    store.create_runs([NewRun(run_id, workflow, "w.py:wf", '{"n": 1}', [NewStepRow("s0", "", None, "pending", [])],
                              NewEvent("run_created", data={"workflow": workflow}))])
    return run_id


def _xmin(conn: psycopg.Connection[Any], run_id: str) -> int:
    row = conn.execute("SELECT xmin::text::bigint FROM statepipe.runs WHERE id = %s", (run_id,)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("pipelines", [True, False], ids=["pipeline", "libpq-without-pipelines"])
def test_a_claim_sent_with_a_commit_is_committed_with_it(conn, monkeypatch, pipelines):
    import statepipe.store.store as store_module

    monkeypatch.setattr(store_module, "_PIPELINES", pipelines)
    store = Store(SingleConnection(conn))
    (mine,) = _runs(store, 1, 3)
    queued = _queued(store)
    events, (claimed,) = store.commit_and_claim([_step_done(mine, 0, "{}")], [ClaimRequest("worker-2", 30.0, 5)])
    assert [e.seq for e in events[0]] == [2, 3]
    (claim,) = claimed
    assert (claim.run.id, claim.run.owner, claim.run.fencing_token, claim.run.input) == (queued, "worker-2", 2, {"n": 1})
    assert claim.run.lease_expires_at is not None and claim.run.lease_expires_at > claim.run.created_at
    assert claim.created is not None and (claim.created.type, claim.created.data) == ("run_created", {"workflow": "w"})
    same = _xmin(conn, mine) == _xmin(conn, queued)  # written by one transaction
    assert same is pipelines


def test_a_commit_refused_for_a_stale_fencing_token_claims_nothing(conn):
    from statepipe.errors import LeaseLost

    store = Store(SingleConnection(conn))
    (mine,) = _runs(store, 1, 3)
    queued = _queued(store)
    conn.execute("UPDATE statepipe.runs SET fencing_token = 2 WHERE id = %s", (mine,))  # another owner took it
    with pytest.raises(LeaseLost):
        store.commit_and_claim([_step_done(mine, 0, "{}")], [ClaimRequest("worker-2", 30.0, 5)])
    assert conn.execute("SELECT owner, fencing_token FROM statepipe.runs WHERE id = %s", (queued,)).fetchone() == (None, 1)


def test_a_claim_takes_only_the_workflows_and_batch_asked_for_and_passes_over_the_runs_to_skip(conn):
    store = Store(SingleConnection(conn))
    skipped, wanted, other = _queued(store, "a"), _queued(store, "a"), _queued(store, "b")
    conn.execute("UPDATE statepipe.runs SET batch_id = 'b1' WHERE id = ANY(%s)", ([skipped, wanted, other],))
    assert store.claim_next(ClaimRequest("w", 30.0, 5, workflows=("a",), batch_id="b2")) == []
    claimed = store.claim_next(ClaimRequest("w", 30.0, 5, workflows=("a",), batch_id="b1", skip=(skipped,)))
    assert [c.run.id for c in claimed] == [wanted]
    assert [c.run.id for c in store.claim_next(ClaimRequest("w2", 30.0, 5))] == [skipped, other]  # oldest first


def test_a_claim_queued_while_a_commit_is_in_flight_rides_with_the_next_one(db_url, conn):
    import asyncio

    from statepipe.engine.writer import Writer

    store = Store(SingleConnection(conn))
    (mine,) = _runs(store, 1, 3)
    queued = _queued(store)
    writer = Writer(store)

    async def both() -> list[Any]:
        with writer._turn:  # as while the writer's thread has a transaction in flight
            claim = writer.claim(ClaimRequest("me", 30.0, 1))
            commit = writer.committed(_step_done(mine, 0, "{}"))
        return list(await asyncio.gather(claim, commit))

    try:
        before = writer.transactions
        claimed, events = asyncio.run(both())
    finally:
        writer.close()
    assert [c.run.id for c in claimed] == [queued] and [e.seq for e in events] == [2, 3]
    assert writer.transactions - before == 1
    assert _xmin(conn, mine) == _xmin(conn, queued)


def test_claims_alike_queued_together_go_as_one_whose_runs_they_share_oldest_first(conn, monkeypatch):
    """Several runs of a worker ending in one commit each ask for their slot's next run: one
    scan of the runs serves them all."""
    from statepipe.engine.writer import Writer

    store = Store(SingleConnection(conn))
    oldest, middle, newest = _queued(store), _queued(store), _queued(store)
    writer = Writer(store)
    sent: list[list[int]] = []  # per transaction: the limit of each claim sent
    real = Store._commit_changes

    def spy(self: Store, conn_: Any, changes: Any, by_run: Any, *args: Any, claims: Any = (), **kwargs: Any) -> Any:
        sent.append([c.limit for c in claims])
        return real(self, conn_, changes, by_run, *args, claims=claims, **kwargs)

    monkeypatch.setattr(Store, "_commit_changes", spy)

    async def both() -> list[Any]:
        with writer._turn:  # as while the writer's thread has a transaction in flight
            one = writer.claim(ClaimRequest("me", 30.0, 1))
            two = writer.claim(ClaimRequest("me", 30.0, 2))
        return list(await asyncio.gather(one, two))

    try:
        got_one, got_two = asyncio.run(both())
    finally:
        writer.close()
    assert sent == [[3]]
    assert [c.run.id for c in got_one] == [oldest] and [c.run.id for c in got_two] == [middle, newest]


def test_a_claim_riding_with_a_change_the_database_refuses_still_claims(conn):
    """The refusal is that change's waiter's to hear; a worker's claim must not fail with it."""
    import asyncio

    from statepipe.engine.writer import Writer

    store = Store(SingleConnection(conn))
    (mine,) = _runs(store, 1, 3)
    queued = _queued(store)
    store.commit([_step_done(mine, 0, "{}")])
    refused = _step_done(mine, 0, "{}")  # the same attempt again: its key is taken
    writer = Writer(store)

    async def both() -> list[Any]:
        with writer._turn:
            claim = writer.claim(ClaimRequest("me", 30.0, 1))
            commit = writer.committed(refused)
        return list(await asyncio.gather(claim, commit, return_exceptions=True))

    try:
        claimed, failed = asyncio.run(both())
    finally:
        writer.close()
    assert isinstance(failed, psycopg.IntegrityError)
    assert [c.run.id for c in claimed] == [queued]


def test_an_output_with_a_nul_character_fails_its_step_with_a_clear_error(store):
    from conftest import run_here

    snap = store.snapshot(run_here(store, "nul_text"))
    assert snap.run.state == "failed"
    assert snap.steps[0].error == "step text: output holds a NUL character (\\x00) at character 1, which PostgreSQL cannot store"


def test_an_error_with_a_nul_character_is_kept_with_the_character_replaced(store):
    from conftest import run_here

    snap = store.snapshot(run_here(store, "nul_text", where="error"))
    assert snap.run.state == "failed"
    assert snap.steps[0].error == "ValueError: bad\ufffdbyte"


def test_a_run_input_with_a_nul_character_is_refused_before_anything_is_stored(store):
    from conftest import workflow_path

    from statepipe.definition.loader import load
    from statepipe.engine.runtime import Runtime
    from statepipe.errors import InputError

    runtime = Runtime(store)
    try:
        with pytest.raises(InputError, match="NUL character"):
            runtime.create_run(load(workflow_path("nul_text")), {"where": "a\x00b"})
    finally:
        runtime.writer.close()  # the store belongs to the fixture
    assert store.list_runs(states=[], workflow="nul_text", since=None, limit=5) == []


def test_event_data_of_any_json_the_python_json_module_writes_is_committed(store):
    """The commit document is written by orjson, which refuses integers past 64 bits; json writes
    those, so an event carrying one is still committed, as are timestamps and non-string keys."""
    (run_id,) = _runs(store, 1, 1)
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    data = [{"big": 2**70}, {"at": when, 7: "seven", "text": "naïve ☃"}]
    (big,), (other,) = (store.commit([Change(run_id, 1, [NewEvent("progress", "s0", None, 1, d)])])[0] for d in data)
    stored = {e.seq: e.data for e in store.events_after(run_id)}
    assert stored[big.seq] == {"big": 2**70}
    assert datetime.fromisoformat(stored[other.seq].pop("at")) == when
    assert stored[other.seq] == {"7": "seven", "text": "naïve ☃"}


@pytest.fixture
def database_in(server_url: str) -> Iterator[Any]:
    """A function making an empty database in the given encoding and returning its URL; each is
    dropped after the test."""
    from psycopg import sql

    made: list[str] = []

    def make(encoding: str) -> str:
        name = f"sp_test_{encoding.lower()}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE DATABASE {} ENCODING {} TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'").format(
                    sql.Identifier(name), sql.Literal(encoding)
                )
            )
        made.append(name)
        info = psycopg.conninfo.conninfo_to_dict(server_url)
        info["dbname"] = name
        return psycopg.conninfo.make_conninfo(**info)

    yield make
    with psycopg.connect(server_url, autocommit=True) as admin:
        for name in made:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.parametrize("given", [{}, {"text": "naïve ☃ 中文"}], ids=["default", "as-input"])
def test_a_database_in_sql_ascii_stores_and_returns_text_beyond_ascii(database_in, given):
    from conftest import run_here

    from statepipe.store.database import open_store

    text = given.get("text", "café, 中文, ☃")
    store = open_store(database_in("SQL_ASCII"), max_size=2)
    try:
        snap = store.snapshot(run_here(store, "unicode_text", **given))
        logged = [e.data for e in store.events_after(snap.run.id) if e.type == "progress"]
    finally:
        store.pool.close()
    assert snap.run.state == "succeeded"
    assert snap.run.input == given
    assert snap.steps[0].output == {"text": text, "note": None}
    assert logged and text in json.dumps(logged, ensure_ascii=False)


@pytest.mark.parametrize("where", ["output", "input"])
def test_text_a_latin1_database_has_no_characters_for_ends_the_run_command_with_one_clear_line(database_in, cli, where):
    from conftest import workflow_path

    url = database_in("LATIN1")
    given = ["-i", "text=中文"] if where == "input" else []
    done = cli("run", workflow_path("unicode_text"), *given, STATEPIPE_DATABASE_URL=url)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("statepipe: error: the database cannot store this text (")
    assert done.stderr.rstrip().endswith("statepipe needs a UTF8 database")
    assert "Traceback" not in done.stderr
    latin = cli("run", workflow_path("unicode_text"), "-i", "text=café", STATEPIPE_DATABASE_URL=url)
    assert latin.returncode == 0, latin.stderr  # what LATIN1 has characters for is stored
    runs = json.loads(cli("list", "--json", STATEPIPE_DATABASE_URL=url).stdout)
    # a refused output leaves its run as it was, resumable; a refused input creates none
    assert sorted(r["state"] for r in runs) == (["interrupted", "succeeded"] if where == "output" else ["succeeded"])


def test_a_change_the_database_refuses_fails_only_its_own_run_among_those_committed_with_it(database_in):
    """Grouped in one transaction with other runs' changes, a change whose text the database cannot
    hold is retried run by run: the others are committed, only its waiter hears the refusal."""
    from statepipe.engine.writer import Writer
    from statepipe.errors import ConfigError
    from statepipe.store.database import open_store

    store = open_store(database_in("LATIN1"), max_size=2)
    writer = Writer(store)
    try:
        ok, bad, also_ok = _runs(store, 3, 1)

        def said(run_id: str, text: str) -> Change:
            return Change(run_id, 1, [NewEvent("progress", "s0", None, 1, {"message": text})])

        async def together() -> list[Any]:
            with writer._turn:  # held: the three are gathered into one batch
                waits = [writer.committed(said(ok, "café")), writer.committed(said(bad, "中文")),
                         writer.committed(said(also_ok, "naïve"))]
            return list(await asyncio.gather(*waits, return_exceptions=True))

        first, refused, third = asyncio.run(together())
        assert isinstance(refused, ConfigError) and "UTF8 database" in str(refused)
        assert [e.data["message"] for e in first] == ["café"] and [e.data["message"] for e in third] == ["naïve"]
        assert [e.type for e in store.events_after(bad)] == ["run_created"]
    finally:
        writer.close()
        store.pool.close()


def test_results_of_many_runs_are_each_runs_result_sinks_fan_outs_and_chosen_steps_alike(store, tmp_path):
    """Store.results (one query for many runs, as `batch` and `list --json` use it) gives what
    each run's snapshot gives: the chosen result step, else the sinks' outputs."""
    from conftest import run_here, workflow_path

    two_sinks = tmp_path / "two_sinks.py"
    two_sinks.write_text(
        "from statepipe import Workflow\n"
        "wf = Workflow('two_sinks')\n"
        "@wf.step\n"
        "def items() -> list:\n    return [1, 2, 3]\n"
        "@wf.step(map_over=items)\n"
        "def double(item) -> int:\n    return item * 2\n"
        "@wf.step\n"
        "def count(items) -> int:\n    return len(items)\n"
    )
    ids = [run_here(store, str(two_sinks)), run_here(store, "iter_fanout"), run_here(store, str(workflow_path("chosen_result")))]
    results = store.results(ids)
    assert results[ids[0]] == {"double": [2, 4, 6], "count": 3}
    assert results == {run_id: store.snapshot(run_id).result() for run_id in ids}


def test_a_commit_after_a_refused_value_still_finds_its_prepared_statement(store):
    """A value refused inside its transaction (a second for one name) rolls that transaction
    back on the connection commits use; psycopg then deallocates every prepared statement of
    the connection, the engine's own named ones included: the next commit prepares its own again."""
    (run_id,) = _runs(store, 1, 1)
    assert store.commit([Change(run_id, 1, [NewEvent("progress", data={"message": "before"})])])
    store.send_input(run_id, "x", "1", NewEvent("input_sent", data={"name": "x"}))
    with pytest.raises(ConflictError):
        store.send_input(run_id, "x", "2", NewEvent("input_sent", data={"name": "x"}))
    store.get_run(run_id)  # any statement: psycopg's deallocation rides with it
    ((event,),) = store.commit([Change(run_id, 1, [NewEvent("progress", data={"message": "after"})])])
    assert event.data == {"message": "after"}


def test_a_claim_riding_with_a_commit_after_a_refused_value_prepares_what_was_lost(store):
    """The same deallocation, met by a commit that carries a worker's claim: the claim's statement
    is prepared afresh, the commit's is found missing, and the retry prepares it again without
    tripping over the claim's, which survived (a worker once passed its run over for this)."""
    (run_id,) = _runs(store, 1, 1)
    assert store.commit([Change(run_id, 1, [NewEvent("progress", data={"message": "before"})])])
    store.send_input(run_id, "x", "1", NewEvent("input_sent", data={"name": "x"}))
    with pytest.raises(ConflictError):
        store.send_input(run_id, "x", "2", NewEvent("input_sent", data={"name": "x"}))
    store.get_run(run_id)
    ((event,),), (claimed,) = store.commit_and_claim(
        [Change(run_id, 1, [NewEvent("progress", data={"message": "after"})])], [ClaimRequest("w:1", 30.0, 1)]
    )
    assert event.data == {"message": "after"} and claimed == []
