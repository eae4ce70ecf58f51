"""All of statepipe's SQL (with schema.sql): parametrised statements over a psycopg 3 pool.

`commit` is the single write path of the engine: a batch of Changes lands in one transaction,
each run's events appended under its fencing token (statepipe.commit_changes), so a state row
never exists without its event and a stale owner can write nothing."""

from __future__ import annotations

import json
import re
import select
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import fields
from datetime import datetime, timedelta
from importlib import resources
from typing import Any, Protocol

import orjson
import psycopg
from psycopg import sql
from psycopg.pq import ExecStatus
from psycopg.pq.abc import PGconn, PGresult
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

from statepipe.errors import ClaimLost, ConfigError, ConflictError, DatabaseUnavailable, LeaseLost, NotFoundError
from statepipe.store import storable
from statepipe.store.records import (
    FANOUT_HEAD,
    AttemptRow,
    Change,
    ChildClaim,
    ChildClaimRequest,
    ChildHold,
    Claim,
    ClaimRequest,
    Event,
    ListPreview,
    NewEvent,
    NewRun,
    Pruned,
    RunRow,
    RunSnapshot,
    StepRow,
    json_text,
    result_of,
)

SCHEMA_VERSION = 11
BIG_VALUE = 64 * 1024  # an output longer than this goes as a parameter of its own
# a list output of more items than PREVIEW_ITEMS, stored in more bytes than PREVIEW_BYTES (more
# than inspect shows of a value), is previewed (see snapshot)
PREVIEW_BYTES = 2048
PREVIEW_ITEMS = 20
PRUNE_BATCH = 500  # runs deleted a transaction
HISTORY_TABLES = ("runs", "steps", "attempts", "events")  # what `db status` counts
EXACT_BELOW = 100_000  # rows a table's estimate says it has under which `db status` counts them
# a fan-out wider than this is read in part by a snapshot with `some_children`: its output, a
# list of more items than a line has cells, is never shown whole, so a preview shows the same
WIDE_FANOUT = 1000
LEASE_LOST_SQLSTATE = "SP001"
CLAIM_LOST_SQLSTATE = "SP002"  # a fan-out child's claim was replaced (commit_changes)
# text a database in an encoding other than UTF8 has no characters for
_UNSTORABLE_TEXT = (psycopg.errors.UntranslatableCharacter, psycopg.errors.CharacterNotInRepertoire)
# statements prepared once per connection, by name
_COMMIT = b"statepipe_commit"  # commit_changes without big values
_CLAIM = b"statepipe_claim"
_STATEMENTS = {_COMMIT: b"SELECT statepipe.commit_changes($1::jsonb)", _CLAIM: b"SELECT statepipe.claim_runs($1::jsonb)"}
_PREPARED: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[bytes]] = weakref.WeakKeyDictionary()
_PIPELINES = psycopg.Pipeline.is_supported()  # libpq 14+; without, a claim has a transaction of its own
_RUN_TIMES = ("created_at", "started_at", "finished_at", "updated_at", "lease_expires_at", "resumed_at", "wake_at")  # ISO text in JSON
_SCHEMA_LOCK = 0x5354_4550  # advisory lock key while applying schema.sql


# the shown states derived from a stored one and the lease (RunRow.shown_state)
_STORED_AS = {"interrupted": ("running", "pending"), "running": ("running",), "pending": ("pending",)}

CONTROL_CHANNEL = "statepipe_control"  # payload "<run_id>:<request>": wakes the run's owner
RUNNABLE_CHANNEL = "statepipe_runnable"  # payload run id: a run wants an executor


EVENTS_CHANNEL = "statepipe_events"  # statepipe.commit_changes: "<run id>:<last seq>" per run per commit


def notified(payload: str) -> tuple[str, int]:
    """The run and its last seq from an EVENTS_CHANNEL payload."""
    run_id, _, seq = payload.rpartition(":")
    return run_id, int(seq)


def wait_for_events(conn: psycopg.Connection[Any], run_id: str, timeout: float) -> bool:
    """On a connection LISTENing on EVENTS_CHANNEL, wait up to `timeout` seconds for a commit
    of `run_id` (another run's are passed over); whether one came."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        for note in conn.notifies(timeout=left, stop_after=1):
            if notified(note.payload)[0] == run_id:
                return True
    return False


_RUN_COLUMNS = """
    r.id, r.workflow, r.workflow_ref, r.state, r.input, r.error, r.created_at, r.started_at,
    r.finished_at, r.updated_at, r.last_seq, r.owner, r.lease_expires_at, r.fencing_token,
    r.requested, r.dry_run, r.no_cache, r.fingerprint, r.forked_from, r.batch_id, r.batch_index, r.result_step,
    r.active_s, r.resumed_at, r.wake_at, r.parent_run, r.parent_key, r.depth,
    (SELECT count(*) FILTER (WHERE s.state IN ('succeeded', 'skipped'))
       FROM statepipe.steps s WHERE s.run_id = r.id AND s.item = '' AND s.compensates IS NULL) AS steps_done,
    (SELECT count(*) FROM statepipe.steps s
      WHERE s.run_id = r.id AND s.item = '' AND s.compensates IS NULL) AS steps_total,
    (SELECT sum((a.usage->>'cost_usd')::float8) FROM statepipe.attempts a
      WHERE a.run_id = r.id AND a.usage IS NOT NULL) AS cost_usd,
    (SELECT sum((a.usage->>'total_tokens')::bigint)::bigint FROM statepipe.attempts a
      WHERE a.run_id = r.id AND a.usage IS NOT NULL) AS tokens
"""

# a step's and an attempt's columns, in the order of their records' fields (built from them)
_STEP_COLUMNS = ", ".join(f.name for f in fields(StepRow) if f.name != "attempts")
_ATTEMPT_COLUMNS = ", ".join(f.name for f in fields(AttemptRow) if f.name not in ("step", "item"))
# a fan-out's children's outputs (their JSON text; null: not succeeded), in item order
_CHILD_OUTPUTS = (
    "SELECT a.output::text FROM statepipe.steps s LEFT JOIN statepipe.attempts a"
    "  ON a.run_id = s.run_id AND a.step = s.name AND a.item = s.item AND a.number = s.attempt AND a.state = 'succeeded'"
    " WHERE s.run_id = %s AND s.name = %s AND s.item <> '' AND s.compensates IS NULL AND s.item_index IS NOT NULL"
    " ORDER BY s.item_index"
)
_LONG_NUMBER = re.compile(rb"[0-9]{19}")  # may be an integer past 64 bits, which orjson reads as a float


def _loads(data: str | bytes) -> Any:
    """json.loads's value of a jsonb value, by orjson where it reads the same (a third of the
    time for the small outputs of a run's 100,000 steps)."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:  # a number past a float's range: json reads it as infinity
        return json.loads(raw)
    return json.loads(raw) if _LONG_NUMBER.search(raw) else value


class ConnectionSource(Protocol):
    conninfo: str

    def connection(self) -> AbstractContextManager[psycopg.Connection[Any]]: ...

    def committing(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        """A connection for the write path (see database.Pool)."""
        ...

    def close(self) -> None: ...


class Store:
    def __init__(self, pool: ConnectionSource) -> None:
        self.pool = pool

    @contextmanager
    def _tx(self, committing: bool = False) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self.pool.committing() if committing else self.pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"lost the database connection: {first_line(exc)}") from exc

    # -- runs -------------------------------------------------------------------------------

    def create_runs(self, runs: Sequence[NewRun], ttl: float = 0.0) -> list[Event]:
        """Record pending runs in one transaction. An owned run is claimed from its first instant
        (fence 1) so no worker grabs it; an unowned one wakes the workers."""
        with self._tx(committing=True) as conn:  # a commit like any other: the kept connection
            changes = [Change(r.id, 1, [r.event], new_steps=r.steps) for r in runs]
            seqs, _ = self._commit_changes(conn, changes, [[i] for i in range(len(runs))], created=runs, lease_s=ttl)
        return [_event(r.id, seq, r.event) for r, seq in zip(runs, seqs)]

    def batch_runs(self, batch_id: str) -> dict[int, RunRow]:
        with self._tx() as conn:
            rows = conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_RUN_COLUMNS} FROM statepipe.runs r WHERE r.batch_id = %s", (batch_id,)
            ).fetchall()
        return {int(r["batch_index"]): RunRow(**r) for r in rows}

    def batch_counts(self, batch_id: str) -> dict[str, int]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT CASE WHEN state = 'running' AND owner IS NULL THEN 'queued' ELSE state END, count(*)"
                " FROM statepipe.runs WHERE batch_id = %s GROUP BY 1",
                (batch_id,),
            ).fetchall()
        return {str(k): int(v) for k, v in rows}

    def resolve_run_id(self, prefix: str) -> str:
        """Full id from a unique prefix, as git does for commits."""
        if not prefix or len(prefix) > 36 or not all(c in "0123456789abcdef-" for c in prefix.lower()):
            raise NotFoundError(f"no run {prefix!r}: run ids are hexadecimal uuids")
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT id FROM statepipe.runs WHERE id LIKE %s ORDER BY id LIMIT 2",
                (prefix.lower() + "%",),
            ).fetchall()
        if not rows:
            raise NotFoundError(f"no run {prefix!r}; see `statepipe list`")
        if len(rows) > 1:
            raise NotFoundError(f"run id prefix {prefix!r} is ambiguous; give more characters")
        return str(rows[0][0])

    def get_run(self, run_id: str) -> RunRow:
        with self._tx() as conn:
            return _run_row(conn, run_id)

    def get_runs(self, run_ids: Sequence[str]) -> list[RunRow]:
        """Several runs by id, newest first (unknown ids are left out)."""
        with self._tx() as conn:
            rows = conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_RUN_COLUMNS} FROM statepipe.runs r WHERE r.id = ANY(%s) ORDER BY r.created_at DESC",
                (list(run_ids),),
            ).fetchall()
        return [RunRow(**r) for r in rows]

    def list_runs(
        self,
        *,
        states: Sequence[str] = (),
        workflow: str | None = None,
        since: datetime | None = None,
        limit: int = 20,
        batch_id: str | None = None,
        before: tuple[datetime, str] | None = None,
    ) -> list[RunRow]:
        """Runs newest first (ties in creation time by id). `states` are as people see them
        (RunRow.shown_state): an `interrupted` run is stored as running or pending, so those are
        read whole (unfinished runs are few) and told apart here. `before`: only runs after
        this (created_at, id) in that order, the last of a page: the next page is found by the
        created_at index whatever its depth, and runs created meanwhile shift nothing."""
        stored = {kept for s in states for kept in _STORED_AS.get(s, (s,))}
        derived = bool(set(states) & set(_STORED_AS))
        at, last_id = before if before is not None else (None, None)
        with self._tx() as conn:
            rows = conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_RUN_COLUMNS} FROM statepipe.runs r"
                " WHERE (cardinality(%(states)s::text[]) = 0 OR r.state = ANY(%(states)s::text[]))"
                "   AND (%(workflow)s::text IS NULL OR r.workflow = %(workflow)s::text)"
                "   AND (%(since)s::timestamptz IS NULL OR r.created_at >= %(since)s::timestamptz)"
                "   AND (%(batch)s::text IS NULL OR r.batch_id = %(batch)s::text)"
                # the first condition alone is what the index can use
                "   AND (%(at)s::timestamptz IS NULL OR r.created_at <= %(at)s::timestamptz"
                "        AND (r.created_at < %(at)s::timestamptz OR r.id < %(last)s::text))"
                " ORDER BY r.created_at DESC, r.id DESC LIMIT %(limit)s",
                {"states": sorted(stored), "workflow": workflow, "since": since, "batch": batch_id,
                 "at": at, "last": last_id, "limit": None if derived else limit},
            ).fetchall()
        runs = [RunRow(**r) for r in rows]
        if derived:
            runs = [r for r in runs if r.shown_state in states][:limit]
        return runs

    def count_runs(
        self,
        *,
        states: Sequence[str] = (),
        workflow: str | None = None,
        since: datetime | None = None,
        batch_id: str | None = None,
        at_most: int | None = None,
    ) -> int:
        """How many runs list_runs would give without its limit (`list` says how many it left
        out). Stored states are counted by the server; a state derived from the lease is told
        apart here, over the unfinished runs, which are few. `at_most`: counting stops past it
        (a count of a million runs took 120 ms of the 0.5 s `list` has), so more than
        `at_most` means "more than that"."""
        plain = [s for s in states if s not in _STORED_AS]
        derived = [s for s in states if s in _STORED_AS]
        where = (" AND (%(workflow)s::text IS NULL OR r.workflow = %(workflow)s::text)"
                 " AND (%(since)s::timestamptz IS NULL OR r.created_at >= %(since)s::timestamptz)"
                 " AND (%(batch)s::text IS NULL OR r.batch_id = %(batch)s::text)")
        params: dict[str, Any] = {"workflow": workflow, "since": since, "batch": batch_id}
        total = 0
        with self._tx() as conn:
            if plain or not states:
                row = conn.execute(
                    "SELECT count(*) FROM (SELECT FROM statepipe.runs r"
                    " WHERE (cardinality(%(states)s::text[]) = 0 OR r.state = ANY(%(states)s::text[]))" + where
                    + " LIMIT %(cap)s) c",
                    {**params, "states": plain, "cap": None if at_most is None else at_most + 1},
                ).fetchone()
                total += row[0] if row else 0
            if derived:
                rows = conn.cursor(row_factory=dict_row).execute(
                    f"SELECT {_RUN_COLUMNS} FROM statepipe.runs r WHERE r.state = ANY(%(states)s::text[])" + where,
                    {**params, "states": sorted({kept for s in derived for kept in _STORED_AS[s]})},
                ).fetchall()
                total += sum(1 for r in rows if RunRow(**r).shown_state in derived)
        return total

    def snapshot(self, run_id: str, preview: bool = False, some_children: bool = False) -> RunSnapshot:
        """The run with its steps and attempts. `preview`: a long list output (see PREVIEW_BYTES)
        comes as a ListPreview of its first PREVIEW_ITEMS items, cut by the server: W3's five
        1 MB outputs took `inspect` about 100 ms to read whole, their heads 20.

        `some_children`: of a fan-out of more than WIDE_FANOUT children, only the first
        FANOUT_HEAD (its output's head) and every one that did not succeed are read, for a
        reader that lists a few of them (RunSnapshot.widths counts them all): `inspect` of a
        100,000-child run read and formatted every row for 6 s. The head holds the first
        succeeded children such a reader lists (see render.FANOUT_ROWS)."""
        columns = _STEP_COLUMNS
        with self._tx() as conn:
            run = _run_row(conn, run_id)
            if not some_children:
                steps = conn.cursor(row_factory=dict_row).execute(
                    f"SELECT {columns} FROM statepipe.steps WHERE run_id = %s"
                    " ORDER BY compensates IS NOT NULL, position, item_index NULLS FIRST",
                    (run_id,),
                ).fetchall()
            else:  # a top-N sort, not a sort of every child: 0.6 s -> 0.2 s at 100,000 children
                # the first FANOUT_HEAD that succeeded and all that did not hold the first FANOUT_HEAD
                of_s = _of("s", columns)
                steps = conn.cursor(row_factory=dict_row).execute(
                    f"WITH w AS MATERIALIZED (SELECT name, count(*) AS width FROM statepipe.steps"
                    "  WHERE run_id = %(run)s AND item <> '' AND compensates IS NULL AND item_index IS NOT NULL GROUP BY name)"
                    f" SELECT {columns}, width, position FROM ("
                    f"  SELECT {of_s}, coalesce(w.width, 0) AS width, s.position FROM statepipe.steps s LEFT JOIN w USING (name)"
                    "   WHERE s.run_id = %(run)s AND (s.item = '' OR s.compensates IS NOT NULL OR coalesce(w.width, 0) <= %(wide)s"
                    "    OR s.item_index IS NOT NULL AND s.state <> 'succeeded')"
                    f"  UNION ALL SELECT {of_s}, w.width, s.position FROM w, LATERAL (SELECT * FROM statepipe.steps s"
                    "   WHERE s.run_id = %(run)s AND s.name = w.name AND s.item <> '' AND s.compensates IS NULL"
                    "    AND s.item_index IS NOT NULL AND s.state = 'succeeded' ORDER BY s.item_index LIMIT %(head)s) s"
                    "   WHERE w.width > %(wide)s) s"
                    " ORDER BY compensates IS NOT NULL, position, item_index NULLS FIRST",
                    {"run": run_id, "wide": WIDE_FANOUT, "head": FANOUT_HEAD},
                ).fetchall()
            widths: dict[str, int] = {}
            for s in steps:
                width = s.pop("width", 0)
                s.pop("position", None)
                if width > WIDE_FANOUT and s["fanout"] and s["item"] == "" and s["compensates"] is None:
                    widths[s["name"]] = int(width)
            read = None if not widths else ([s["name"] for s in steps], [s["item"] for s in steps])
            attempts = conn.cursor(row_factory=dict_row).execute(
                "SELECT step, item, number, state, started_at, finished_at, error, usage, cached_from, traceback, worker, cut,"
                "  CASE WHEN cut THEN jsonb_build_object('head', jsonb_path_query_array(output, '$[0 to $last]',"
                "   jsonb_build_object('last', %(items)s - 1)), 'length', jsonb_array_length(output))"
                "   ELSE output END AS output"
                " FROM (SELECT *, %(preview)s AND pg_column_size(output) > %(bytes)s AND jsonb_typeof(output) = 'array'"
                "   AND jsonb_array_length(output) > %(items)s AS cut FROM statepipe.attempts WHERE run_id = %(run)s"
                "   AND (%(all)s OR (step, item) IN (SELECT * FROM unnest(%(names)s::text[], %(keys)s::text[])))) a"
                " ORDER BY step, item, number",
                {"run": run_id, "preview": preview, "bytes": PREVIEW_BYTES, "items": PREVIEW_ITEMS, "all": read is None,
                 "names": read[0] if read else [], "keys": read[1] if read else []},
            ).fetchall()
        rows = {(s["name"], s["item"]): StepRow(**s) for s in steps}
        for a in attempts:
            if a.pop("cut"):
                a["output"] = ListPreview(a["output"]["head"], a["output"]["length"])
            rows[(a["step"], a["item"])].attempts.append(AttemptRow(**a))
        return RunSnapshot(run, list(rows.values()), self.inputs(run_id), self.children_of(run_id), widths=widths)

    # -- values sent to runs (ctx.wait_for) -----------------------------------------------------

    def inputs(self, run_id: str) -> dict[str, Any]:
        """The values sent to a run, by name."""
        with self._tx() as conn:
            rows = conn.execute("SELECT name, value FROM statepipe.signals WHERE run_id = %s", (run_id,)).fetchall()
        return {str(name): value for name, value in rows}

    def send_input(self, run_id: str, name: str, value_json: str, event: NewEvent) -> Event:
        """Keep a value sent to a run under `name` (once: a second is refused), with its event
        in the run's log, in one transaction. A waiting run wants an executor again at once
        (wake_at); a live owner is told (the control channel). The run row is locked first, so a
        run going `waiting` at the same moment either sees the value or is woken by it."""
        with self._tx(committing=True) as conn, conn.transaction():
            row = conn.execute(
                "SELECT fencing_token, state FROM statepipe.runs WHERE id = %s FOR UPDATE", (run_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no run {run_id}")
            fence, state = row
            kept = conn.execute(
                "INSERT INTO statepipe.signals (run_id, name, value) VALUES (%s, %s, %s::jsonb)"
                " ON CONFLICT DO NOTHING RETURNING sent_at",
                (run_id, name, value_json),
            ).fetchone()
            if kept is None:
                sent = conn.execute(
                    "SELECT sent_at FROM statepipe.signals WHERE run_id = %s AND name = %s", (run_id, name)
                ).fetchone()
                at = sent[0].isoformat(timespec="seconds") if sent else "earlier"
                raise ConflictError(f"run {run_id} already has a value for {name!r} (sent {at}); each name takes one")
            conn.execute("UPDATE statepipe.runs SET wake_at = now() WHERE id = %s AND state = 'waiting'", (run_id,))
            (seq,), _ = self._commit_changes(conn, [Change(run_id, int(fence), [event])], [[0]], prepare=False)
            conn.execute("SELECT pg_notify(%s, %s)", (CONTROL_CHANNEL, f"{run_id}:input"))
            if state == "waiting":
                conn.execute("SELECT pg_notify(%s, %s)", (RUNNABLE_CHANNEL, run_id))
        return _event(run_id, seq, event)

    def results(self, run_ids: Sequence[str]) -> dict[str, Any]:
        """Each run's result for many runs in one round trip, by RunSnapshot.result's rule: its
        result step's output, else its sink steps' outputs (several: by name, in step order)."""
        if not run_ids:
            return {}
        with self._tx() as conn:
            rows = conn.execute(
                # the runs' steps read once: both for the rows and for what their steps depend on,
                # which a sink is not (a lookup per step took half the time for 200 runs)
                "WITH s AS MATERIALIZED (SELECT run_id, name, item, item_index, fanout, attempt, position, compensates,"
                "  depends_on FROM statepipe.steps WHERE run_id = ANY(%(ids)s))"
                " SELECT s.run_id, s.name, s.item, s.item_index, s.fanout, a.output"
                "  FROM s JOIN statepipe.runs r ON r.id = s.run_id"
                "  LEFT JOIN statepipe.attempts a ON a.run_id = s.run_id AND a.step = s.name"
                "   AND a.item = s.item AND a.number = s.attempt AND a.state = 'succeeded'"
                # r.id too: told only of s.run_id, the planner hashes the whole runs table
                " WHERE r.id = ANY(%(ids)s) AND s.compensates IS NULL AND (s.item = '' OR s.item_index IS NOT NULL)"
                " AND (s.name = r.result_step OR r.result_step IS NULL AND (s.run_id, s.name) NOT IN ("
                "   SELECT d.run_id, needed FROM s d, unnest(d.depends_on) AS needed))"
                " ORDER BY s.run_id, s.position, s.item_index NULLS FIRST",
                {"ids": list(run_ids)},
            ).fetchall()
        per_run: dict[str, dict[str, Any]] = {}
        for run_id, name, item, _index, fanout, output in rows:
            outputs = per_run.setdefault(run_id, {})
            if item == "":
                outputs[name] = [] if fanout else output
            else:
                outputs[name].append(output)
        return {r: (next(iter(o.values())) if len(o) == 1 else o) for r, o in per_run.items()}

    def cache_lookup(self, key: str, max_age: float | None) -> tuple[dict[str, Any], str] | None:
        """The newest succeeded attempt of any run with this cache key: (its address, output JSON)."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT run_id, step, item, number, output::text FROM statepipe.attempts"
                " WHERE cache_key = %(key)s AND state = 'succeeded'"
                "   AND (%(age)s::interval IS NULL OR finished_at > now() - %(age)s::interval)"
                " ORDER BY finished_at DESC LIMIT 1",
                {"key": key, "age": timedelta(seconds=max_age) if max_age is not None else None},
            ).fetchone()
        if row is None:
            return None
        return {"run_id": row[0], "step": row[1], "item": row[2] or None, "number": row[3]}, row[4]

    def fork_run(self, source: str, run: NewRun, keep: Sequence[str], ttl: float = 0.0) -> Event:
        """A new run whose steps named in `keep` (and their fan-out children) start from copies of
        the source's rows and attempts; the rest start pending."""
        with self._tx() as conn, conn.transaction():
            with conn.pipeline():  # three statements, one round trip
                conn.execute(
                    "INSERT INTO statepipe.runs (id, workflow, workflow_ref, state, input, owner, lease_expires_at,"
                    "  fencing_token, dry_run, no_cache, fingerprint, forked_from, result_step)"
                    " SELECT %s, workflow, %s, 'pending', %s::jsonb, %s::text,"
                    "  CASE WHEN %s::text IS NULL THEN NULL ELSE now() + %s END, 1, dry_run, no_cache, %s::jsonb, id,"
                    "  result_step"
                    " FROM statepipe.runs WHERE id = %s",
                    (run.id, run.workflow_ref, run.input_json, run.owner, run.owner, timedelta(seconds=ttl),
                     json.dumps(run.fingerprint), source),
                )
                conn.execute(
                    "INSERT INTO statepipe.steps (run_id, name, item, position, item_index, fanout, compensates, state,"
                    "  depends_on, attempt, started_at, finished_at, error, next_attempt_at, overrides, feedback)"
                    " SELECT %s, name, item, position, item_index, fanout, NULL,"
                    "  CASE WHEN name = ANY(%s::text[]) THEN state ELSE 'pending' END, depends_on,"
                    "  CASE WHEN name = ANY(%s::text[]) THEN attempt ELSE 0 END,"
                    "  CASE WHEN name = ANY(%s::text[]) THEN started_at END, CASE WHEN name = ANY(%s::text[]) THEN finished_at END,"
                    "  NULL, NULL, overrides, NULL"
                    " FROM statepipe.steps WHERE run_id = %s AND compensates IS NULL"
                    "  AND (item = '' OR name = ANY(%s::text[]))",
                    (run.id, list(keep), list(keep), list(keep), list(keep), source, list(keep)),
                )
                conn.execute(
                    "INSERT INTO statepipe.attempts (run_id, step, item, number, state, started_at, finished_at, error,"
                    "  output, usage, cache_key, cached_from)"
                    " SELECT %s, a.step, a.item, a.number, a.state, a.started_at, a.finished_at, a.error, a.output, a.usage,"
                    "  a.cache_key, jsonb_build_object('run_id', a.run_id, 'step', a.step, 'item', nullif(a.item, ''), 'number', a.number)"
                    " FROM statepipe.attempts a JOIN statepipe.steps s"
                    "   ON s.run_id = a.run_id AND s.name = a.step AND s.item = a.item AND s.attempt = a.number"
                    " WHERE a.run_id = %s AND a.step = ANY(%s::text[]) AND a.state = 'succeeded'",
                    (run.id, source, list(keep)),
                )
            # outside the pipeline: the commit is sent and answered on its own (see _execute)
            (seq,), _ = self._commit_changes(conn, [Change(run.id, 1, [run.event])], [[0]], prepare=False)
        return _event(run.id, seq, run.event)

    def child_of(self, parent_run: str, key: str) -> RunRow | None:
        """The run a step of `parent_run` started under `key` (ctx.run_workflow), if any."""
        with self._tx() as conn:
            row = conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_RUN_COLUMNS} FROM statepipe.runs r WHERE r.parent_run = %s AND r.parent_key = %s",
                (parent_run, key),
            ).fetchone()
        return RunRow(**row) if row else None

    def children_of(self, parent_run: str) -> list[RunRow]:
        """The child runs a run's steps started, oldest first."""
        with self._tx() as conn:
            rows = conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_RUN_COLUMNS} FROM statepipe.runs r WHERE r.parent_run = %s ORDER BY r.created_at", (parent_run,)
            ).fetchall()
        return [RunRow(**r) for r in rows]

    def last_owner(self, run_id: str) -> str | None:
        """Who started or resumed the run last (its run_started/run_resumed event): the owner
        whose death a new owner finds in the steps it left running."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT data->>'owner' FROM statepipe.events WHERE run_id = %s"
                " AND type IN ('run_started', 'run_resumed') ORDER BY seq DESC LIMIT 1",
                (run_id,),
            ).fetchone()
        return row[0] if row else None

    def forks_of(self, run_id: str) -> list[str]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT id FROM statepipe.runs WHERE forked_from = %s ORDER BY created_at", (run_id,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    @contextmanager
    def reading(self, run_id: str) -> Iterator[RunReader]:
        """The run read whole, a page at a time, in one transaction (see RunReader)."""
        with self._tx() as conn:
            try:
                with conn.transaction():
                    # one snapshot of the database for every part, however long the reader takes
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    # a cursor's sort of 100,000 steps with their attempts: in memory, twice as fast
                    conn.execute("SET LOCAL work_mem = '32MB'")
                    yield RunReader(conn, _run_row(conn, run_id))
            except psycopg.OperationalError as exc:
                raise DatabaseUnavailable(f"lost the database connection: {first_line(exc)}") from exc

    # -- ownership --------------------------------------------------------------------------

    def claim(self, run_id: str, owner: str, ttl: float, owner_is_dead: Callable[[str], bool], finished_ok: bool = False) -> int:
        """Become the run's owner and return the new fencing token. A live lease is refused
        unless its holder is known dead, judged under the row lock so two claimants that both
        saw a dead owner cannot both win; finished runs are refused."""
        with self._tx() as conn, conn.transaction():
            row = conn.execute(
                "SELECT state, owner, lease_expires_at > now() FROM statepipe.runs WHERE id = %s FOR UPDATE",
                (run_id,),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no run {run_id}")
            state, current, live = row
            if state in ("succeeded", "cancelled") and not finished_ok:
                raise ConflictError(f"run {run_id} already {state}; nothing to resume")
            if current and live and current != owner and not owner_is_dead(current):
                raise ConflictError(f"run {run_id} is being executed by {current}; try again when it stops")
            claimed = conn.execute(
                "UPDATE statepipe.runs SET owner = %s, lease_expires_at = now() + %s, fencing_token = fencing_token + 1,"
                " active_s = active_s + statepipe.lost_interval(resumed_at, updated_at, lease_expires_at, %s),"
                " resumed_at = NULL WHERE id = %s RETURNING fencing_token",
                (owner, timedelta(seconds=ttl), ttl, run_id),
            ).fetchone()
        assert claimed is not None  # the row is locked above: it cannot have gone
        return int(claimed[0])

    def claim_orphans(self, request: ClaimRequest, host: str, owner_is_dead: Callable[[str], bool]) -> list[tuple[str, int]]:
        """Claim, as `request` would but for their live lease, up to `request.limit` runs held by
        an owner on `host` (this machine) that `owner_is_dead` judges gone: a worker takes them
        at once, as `resume` does, instead of after the lease. Judged first without locks, then
        again under the row lock, as in `claim`, so of two claimants that both saw a dead owner
        only one wins; rows another transaction holds are passed over. Returns each claimed run's
        id and new fencing token."""
        where = (
            "state IN ('pending', 'running') AND starts_with(owner, %(host)s) AND owner <> %(owner)s"
            " AND lease_expires_at >= now() AND (%(workflows)s::text[] IS NULL OR workflow = ANY (%(workflows)s::text[]))"
            " AND (%(batch)s::text IS NULL OR batch_id = %(batch)s) AND id <> ALL (%(skip)s::text[])"
        )
        params = {
            "host": host + ":", "owner": request.owner, "batch": request.batch_id, "skip": list(request.skip),
            "workflows": list(request.workflows) if request.workflows else None,
        }
        with self._tx() as conn:
            held = conn.execute(f"SELECT id, owner FROM statepipe.runs WHERE {where}", params).fetchall()
            verdicts = {owner: owner_is_dead(owner) for _, owner in held}  # one look at each owner's pid
            orphans = [run_id for run_id, owner in held if verdicts[owner]][: request.limit]
            if not orphans:
                return []
            with conn.transaction():
                locked = conn.execute(
                    f"SELECT id, owner FROM statepipe.runs WHERE id = ANY (%(ids)s) AND {where} FOR UPDATE SKIP LOCKED",
                    {**params, "ids": orphans},
                ).fetchall()
                dead = [run_id for run_id, owner in locked if owner_is_dead(owner)]
                claimed = conn.execute(
                    "UPDATE statepipe.runs SET owner = %s, lease_expires_at = now() + %s, fencing_token = fencing_token + 1,"
                    " active_s = active_s + statepipe.lost_interval(resumed_at, updated_at, lease_expires_at, %s),"
                    " resumed_at = NULL WHERE id = ANY (%s) RETURNING id, fencing_token",
                    (request.owner, timedelta(seconds=request.ttl), request.ttl, dead),
                ).fetchall()
        return [(str(run_id), int(fence)) for run_id, fence in claimed]

    def claim_next(self, request: ClaimRequest) -> list[Claim]:
        """Claim runs in a transaction of their own (statepipe.claim_runs); a worker with commits
        in flight has its writer send the claim with them instead (commit_and_claim)."""
        return self.commit_and_claim([], [request])[1][0]

    def heartbeat(self, run_id: str, fence: int, ttl: float) -> tuple[bool, str | None]:
        """Extend the lease; returns whether we still own the run, and any pending request."""
        with self._tx() as conn:
            row = conn.execute(
                "UPDATE statepipe.runs SET lease_expires_at = now() + %s WHERE id = %s AND fencing_token = %s"
                " RETURNING requested",
                (timedelta(seconds=ttl), run_id, fence),
            ).fetchone()
        return (row is not None, row[0] if row else None)

    # -- distributed fan-outs (steps with distribute=True) ---------------------------------------

    def claim_children(self, request: ChildClaimRequest) -> list[ChildClaim]:
        """Claim fan-out children any worker may run (statepipe.claim_children)."""
        doc = json_text({
            "owner": request.owner, "lease_s": request.ttl, "limit": request.limit,
            "workflows": list(request.workflows) if request.workflows else None,
            "runs": list(request.runs) if request.runs is not None else None, "skip": list(request.skip),
        })
        with self._tx() as conn:
            (rows,) = conn.execute("SELECT statepipe.claim_children(%s::jsonb)", (doc,)).fetchone() or ([],)
        return [_child_claim(r) for r in rows]

    def renew_claims(self, holds: Sequence[tuple[str, ChildHold]], ttl: float) -> dict[tuple[str, str, str], str | None]:
        """Extend these claims (run id, hold); returns those still held, each with its run's
        request (None, or cancel, pause_now...; "ended" when the run no longer runs)."""
        doc = json_text({
            "lease_s": ttl, "claims": [{"run_id": r, "name": h.name, "item": h.item, "fence": h.fence} for r, h in holds],
        })
        with self._tx() as conn:
            (rows,) = conn.execute("SELECT statepipe.renew_claims(%s::jsonb)", (doc,)).fetchone() or ([],)
        return {
            (r["run_id"], r["name"], r["item"]): r["requested"] if r["state"] == "running" else "ended" for r in rows
        }

    def release_claims(self, run_id: str, holds: Sequence[ChildHold]) -> None:
        """Let go of claims whose attempt never started (the run was asked to stop meanwhile). A
        child its dead worker left running stays running, its lease run out: whoever takes it
        next records that attempt abandoned."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE statepipe.steps SET claimed_by = CASE WHEN state = 'running' THEN claimed_by END,"
                " lease_expires_at = CASE WHEN state = 'running' THEN least(lease_expires_at, now()) END"
                " WHERE run_id = %s AND (name, item, claim_fence) IN (SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[]))",
                (run_id, [h.name for h in holds], [h.item for h in holds], [h.fence for h in holds]),
            )

    def take_lapsed(self, run_id: str, name: str) -> list[tuple[StepRow, str | None]]:
        """A distributed fan-out's children left running by workers whose leases ran out, taken
        by the run's owner when no worker will claim them (the run is being stopped): their
        fence moves on, so their dead (or cut off) worker can no longer write; each with the
        worker that ran it. The owner then records their attempts abandoned."""
        with self._tx() as conn:
            rows = conn.execute(
                f"UPDATE statepipe.steps SET claim_fence = claim_fence + 1"
                f" WHERE run_id = %s AND name = %s AND item <> '' AND claim_fence IS NOT NULL AND state = 'running'"
                f" AND lease_expires_at < now() RETURNING {_STEP_COLUMNS}, claimed_by",
                (run_id, name),
            ).fetchall()
        return [(StepRow(*r[:-1]), r[-1]) for r in rows]

    def attempts_of(self, run_id: str, name: str, item: str) -> list[AttemptRow]:
        """A step's latest attempts (a claimer counts how many in a row died)."""
        with self._tx() as conn:
            rows = conn.cursor(row_factory=dict_row).execute(
                f"SELECT step, item, {_ATTEMPT_COLUMNS} FROM statepipe.attempts"
                " WHERE run_id = %s AND step = %s AND item = %s ORDER BY number DESC LIMIT 100",
                (run_id, name, item),
            ).fetchall()
        return [AttemptRow(**r) for r in rows]

    def fanout_progress(self, run_id: str, name: str) -> tuple[dict[str, int], tuple[str, str | None] | None]:
        """How many of a distributed fan-out's children are in each state ("lapsed": running, its
        worker's lease run out), and its first failed child (item, error), if any: what its
        owner follows while other workers run them."""
        with self._tx() as conn:
            counts = conn.execute(  # a running child whose lease ran out counts as "lapsed"
                "SELECT CASE WHEN state = 'running' AND lease_expires_at < now() THEN 'lapsed' ELSE state END, count(*)"
                " FROM statepipe.steps"
                " WHERE run_id = %s AND name = %s AND item <> '' AND item_index IS NOT NULL AND compensates IS NULL"
                " GROUP BY 1",
                (run_id, name),
            ).fetchall()
            failed = None
            if any(state == "failed" for state, _ in counts):
                failed = conn.execute(
                    "SELECT item, error FROM statepipe.steps WHERE run_id = %s AND name = %s AND item <> ''"
                    " AND item_index IS NOT NULL AND compensates IS NULL AND state = 'failed' ORDER BY item_index LIMIT 1",
                    (run_id, name),
                ).fetchone()
        return {str(s): int(n) for s, n in counts}, (str(failed[0]), failed[1]) if failed else None

    def fanout_children(self, run_id: str, name: str) -> list[StepRow]:
        """A distributed fan-out's children as they are now (other workers change them), in item
        order, without their attempts."""
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_STEP_COLUMNS} FROM statepipe.steps"
                " WHERE run_id = %s AND name = %s AND item <> '' AND item_index IS NOT NULL AND compensates IS NULL"
                " ORDER BY item_index",
                (run_id, name),
            ).fetchall()
        return [StepRow(*r) for r in rows]

    def outputs_of(self, run_id: str, names: Sequence[str]) -> dict[str, Any]:
        """Steps' outputs as consumers get them: a fan-out's is its children's, in item order."""
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT s.name, s.fanout, a.output::text FROM statepipe.steps s LEFT JOIN statepipe.attempts a"
                "  ON a.run_id = s.run_id AND a.step = s.name AND a.item = s.item AND a.number = s.attempt"
                "  AND a.state = 'succeeded'"
                " WHERE s.run_id = %s AND s.item = '' AND s.compensates IS NULL AND s.name = ANY (%s)",
                (run_id, list(names)),
            ).fetchall()
        out: dict[str, Any] = {}
        for name, fanout, text in rows:
            texts = self.child_outputs(run_id, name) if fanout else [text]
            values = [_loads(t) if t is not None else None for t in texts]
            out[name] = values if fanout else values[0]
        return out

    def child_outputs(self, run_id: str, name: str) -> list[str | None]:
        """The stored JSON of a fan-out's children's outputs, in item order (None: none yet)."""
        with self._tx() as conn:
            rows = conn.execute(_CHILD_OUTPUTS, (run_id, name)).fetchall()
        return [t for (t,) in rows]

    def release(self, run_id: str, fence: int) -> None:
        """Give the run up; if it still wants executing, wake the workers."""
        with self._tx() as conn, conn.transaction():
            row = conn.execute(
                "UPDATE statepipe.runs SET owner = NULL, lease_expires_at = NULL, resumed_at = NULL,"
                " active_s = active_s + coalesce(extract(epoch FROM now() - resumed_at), 0)"
                " WHERE id = %s AND fencing_token = %s RETURNING state",
                (run_id, fence),
            ).fetchone()
            if row and row[0] in ("pending", "running"):
                conn.execute("SELECT pg_notify(%s, %s)", (RUNNABLE_CHANNEL, run_id))

    def stop_children(self, run_id: str) -> bool:
        """The run is failing: its workers are to stop its distributed children and claim no
        more (a "stop" request, which its owner clears when it ends the run). A request already
        left (a cancel, say) is kept: it stops them too. Returns whether one is left now."""
        with self._tx() as conn, conn.transaction():
            row = conn.execute(
                "UPDATE statepipe.runs SET requested = coalesce(requested, 'stop') WHERE id = %s RETURNING requested",
                (run_id,),
            ).fetchone()
            if row and row[0] == "stop":
                conn.execute("SELECT pg_notify(%s, %s)", (CONTROL_CHANNEL, f"{run_id}:stop"))
        return row is not None

    def request(self, run_id: str, kind: str | None) -> None:
        """Leave a control request (pause, pause_now, cancel, cancel_compensate; retry for a
        failed run a worker should take up again) for the run's owner, and wake it."""
        with self._tx() as conn, conn.transaction():
            conn.execute("UPDATE statepipe.runs SET requested = %s WHERE id = %s", (kind, run_id))
            conn.execute("SELECT pg_notify(%s, %s)", (CONTROL_CHANNEL, f"{run_id}:{kind or ''}"))

    # -- the write path ---------------------------------------------------------------------

    def commit(self, changes: Sequence[Change], meanwhile: Callable[[], None] | None = None) -> list[list[Event]]:
        """Commit all changes in one transaction: a single statement, so one round trip and no
        per-parameter encoding beyond one JSON document; returns each change's events with their seq.

        `meanwhile` runs once the commit is on its way, while PostgreSQL stores it: work that
        must not start before the commit is durable can be readied there.

        Raises LeaseLost (nothing written) when any run's fencing token has moved on; the caller
        drops that run's changes and commits the rest again."""
        return self._commit(changes, (), meanwhile)[0]

    def commit_and_claim(
        self, changes: Sequence[Change], requests: Sequence[ClaimRequest]
    ) -> tuple[list[list[Event]], list[list[Claim]]]:
        """`commit`, then each request's claim, in the same transaction and round trip (the
        statements go as one pipeline, before one Sync): a worker refilling the slot of a run that
        just ended costs no transaction of its own. Returns each change's events and each
        request's claimed runs. A LeaseLost rolls the claims back with the changes."""
        if not _PIPELINES and bool(changes) + len(requests) > 1:  # one statement per transaction
            return self.commit(changes) if changes else [], [self.claim_next(r) for r in requests]
        return self._commit(changes, requests, None)

    def _commit(
        self, changes: Sequence[Change], requests: Sequence[ClaimRequest], meanwhile: Callable[[], None] | None
    ) -> tuple[list[list[Event]], list[list[Claim]]]:
        by_run: dict[str, list[int]] = {}
        for i, ch in enumerate(changes):
            by_run.setdefault(ch.run_id, []).append(i)
        with self._tx(committing=True) as conn:  # autocommit: one transaction, one round trip
            seqs, claimed = self._commit_changes(conn, changes, list(by_run.values()), meanwhile=meanwhile, claims=requests)
            lasts = dict(zip(by_run, seqs))
        out: list[list[Event]] = []
        firsts = {r: lasts[r] - sum(len(changes[i].events) for i in idx) for r, idx in by_run.items()}
        for ch in changes:
            seq = firsts[ch.run_id]
            out.append([_event(ch.run_id, seq + k + 1, e) for k, e in enumerate(ch.events)])
            firsts[ch.run_id] = seq + len(ch.events)
        return out, claimed

    def _commit_changes(
        self,
        conn: psycopg.Connection[Any],
        changes: Sequence[Change],
        by_run: Sequence[Sequence[int]],
        created: Sequence[NewRun] = (),
        lease_s: float = 0.0,
        meanwhile: Callable[[], None] | None = None,
        claims: Sequence[ClaimRequest] = (),
        prepare: bool = True,
    ) -> tuple[list[int], list[list[Claim]]]:
        """Send a batch (and the runs it creates) to statepipe.commit_changes as one JSON
        document, big values as parameters of their own, then each claim to statepipe.claim_runs;
        returns each run's last seq, in the order of `by_run`, and each claim's runs.

        `prepare`: as the named statements of _STATEMENTS, prepared once per connection. psycopg
        deallocates every prepared statement of a connection after a ROLLBACK on it (its own
        cache's rule), ours included: a statement found missing is prepared again and the batch
        sent once more (nothing of it ran). Inside a caller's transaction that cannot be
        retried, so such callers pass prepare=False."""
        commits = 1 if changes or created else 0
        doc, big = _document(changes, by_run, created, lease_s) if commits else ("", [])
        try:
            answers = self._send_commit(conn, commits, doc, big, claims, meanwhile, prepare)
        except psycopg.DatabaseError as exc:
            if exc.sqlstate == LEASE_LOST_SQLSTATE:  # psycopg has no class for our own SQLSTATE
                lost = str(exc.diag.message_primary or "").rsplit(" ", 1)[-1]
                raise LeaseLost(lost) from exc
            if exc.sqlstate == CLAIM_LOST_SQLSTATE:
                run_id, name, item = json.loads(str(exc.diag.message_primary or "").partition(": ")[2])
                raise ClaimLost(run_id, name, item) from exc
            if isinstance(exc, _UNSTORABLE_TEXT):
                raise ConfigError(
                    f"the database cannot store this text ({first_line(exc)}); statepipe needs a UTF8 database"
                ) from exc
            raise
        lasts = _lasts(answers[0]) if commits else []
        return lasts, [[_claim(row) for row in json.loads(a.get_value(0, 0) or b"[]")] for a in answers[commits:]]

    @staticmethod
    def _send_commit(
        conn: psycopg.Connection[Any], commits: int, doc: str, big: list[str], claims: Sequence[ClaimRequest],
        meanwhile: Callable[[], None] | None, prepare: bool,
    ) -> list[PGresult]:
        encoding = conn.info.encoding
        for again in (False, True):
            sends: list[Callable[[PGconn], None]] = []
            if commits:
                if big:
                    query = sql.SQL("SELECT statepipe.commit_changes($1::jsonb, VARIADIC ARRAY[{}])").format(
                        sql.SQL(", ").join(sql.SQL(f"${i}::jsonb") for i in range(2, len(big) + 2))
                    ).as_bytes(conn)
                    sends.append(_with_params(query, [v.encode(encoding) for v in (doc, *big)]))
                elif not prepare:
                    sends.append(_with_params(_STATEMENTS[_COMMIT], [doc.encode(encoding)]))
                else:
                    sends.append(_prepared(conn, _COMMIT, doc.encode(encoding)))
            sends += [_prepared(conn, _CLAIM, _claim_document(r).encode(encoding)) for r in claims]
            try:
                return _execute(conn, sends, None if again else meanwhile)
            except psycopg.errors.InvalidSqlStatementName:
                if again or not prepare:
                    raise
                _PREPARED.pop(conn, None)  # deallocated with psycopg's: prepared again on the retry
        raise AssertionError("unreachable: the second try returns or raises")

    # -- events -----------------------------------------------------------------------------

    def events_after(self, run_id: str, after: int = 0, limit: int = 5000) -> list[Event]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT run_id, seq, ts, type, step, item, attempt, data FROM statepipe.events"
                " WHERE run_id = %s AND seq > %s ORDER BY seq LIMIT %s",
                (run_id, after, limit),
            ).fetchall()
        return [Event(*r) for r in rows]

    def step_events(self, run_id: str, step: str, item: str, types: Sequence[str], limit: int = 5000) -> list[Event]:
        """The latest `limit` events of these types of one step (`item` "" for a step that is not
        a fan-out child), in order: the dashboard opening a step mid-run reads its streamed text
        so far without reading the events of its 10,000 siblings."""
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT * FROM (SELECT run_id, seq, ts, type, step, item, attempt, data FROM statepipe.events"
                "  WHERE run_id = %s AND step = %s AND coalesce(item, '') = %s AND type = ANY(%s::text[])"
                "  ORDER BY seq DESC LIMIT %s) e ORDER BY seq",
                (run_id, step, item, list(types), limit),
            ).fetchall()
        return [Event(*r) for r in rows]

    # -- history ----------------------------------------------------------------------------

    def prune(
        self, cutoff: datetime, states: Sequence[str], keep_last: int = 0, dry_run: bool = False, batch: int = PRUNE_BATCH
    ) -> Iterator[Pruned]:
        """Delete the runs in `states` (finished ones: the caller checks) created and finished
        before `cutoff`, oldest first, with their steps, attempts, events and sent values,
        `batch` runs a transaction, each yielded once committed. `keep_last`: each workflow's
        newest runs in `states`, that many, stay whatever their age. A child workflow's run goes
        with its parent when it is prunable too, never on its own while its parent stays.

        A run is locked while its batch deletes it, and one another transaction holds (a
        `resume` claiming it) is passed over; a run that wants an executor again (`requested`:
        a retry) or has one is never taken. Only rows are locked, for one batch: readers and
        writers of other runs never wait. `dry_run` counts what would go, changing nothing."""
        with self._tx() as conn:
            bounds = conn.execute(
                "SELECT w.workflow, k.created_at, k.id FROM (SELECT DISTINCT workflow FROM statepipe.runs) w,"
                " LATERAL (SELECT created_at, id FROM statepipe.runs r WHERE r.workflow = w.workflow"
                "  AND r.state = ANY(%(states)s) ORDER BY r.created_at DESC, r.id DESC OFFSET %(n)s - 1 LIMIT 1) k",
                {"states": list(states), "n": keep_last},
            ).fetchall() if keep_last else []
            tables = ["steps", "attempts", "events"]
            if conn.execute("SELECT to_regclass('statepipe.signals')").fetchone() != (None,):
                tables.append("signals")  # values sent to runs (schema v7)
        keys = {**{t: "run_id" for t in tables}, **({} if dry_run else {"runs": "id"})}
        removed = ", ".join(
            f"{t} AS ({'SELECT 1 FROM' if dry_run else 'DELETE FROM'} statepipe.{t} WHERE {key} IN (SELECT id FROM doomed)"
            f"{'' if dry_run else ' RETURNING 1'})"
            for t, key in keys.items()
        )
        prunable = (  # of runs `{r}`: what makes a run go, whoever its parent
            "{r}.created_at < %(cutoff)s AND coalesce({r}.finished_at, {r}.created_at) < %(cutoff)s"
            " AND {r}.state = ANY(%(states)s) AND {r}.requested IS NULL AND {r}.owner IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM kept k WHERE k.workflow = {r}.workflow AND ({r}.created_at, {r}.id) >= (k.created_at, k.id))"
        )
        query = (
            "WITH RECURSIVE kept AS (SELECT * FROM unnest(%(kept_wf)s::text[], %(kept_at)s::timestamptz[], %(kept_id)s::text[])"
            "  AS k(workflow, created_at, id)),"
            # a batch is `batch` runs with no parent left, and the child workflows' runs below
            # them that are prunable too: a child never goes before its parent, so no parent
            # loses a link, and a dry run counts what a real one deletes
            " roots AS (SELECT r.id, r.created_at FROM statepipe.runs r WHERE " + prunable.format(r="r") +
            "   AND (r.parent_run IS NULL OR NOT EXISTS (SELECT 1 FROM statepipe.runs p WHERE p.id = r.parent_run))"
            # the first condition alone is what the created_at index can use
            "   AND (%(at)s::timestamptz IS NULL OR r.created_at >= %(at)s AND (r.created_at, r.id) > (%(at)s, %(last)s::text))"
            f"  ORDER BY r.created_at, r.id LIMIT %(batch)s{'' if dry_run else ' FOR UPDATE SKIP LOCKED'}),"
            " tree AS (SELECT id FROM roots UNION ALL SELECT c.id FROM tree t JOIN statepipe.runs c ON c.parent_run = t.id"
            "  WHERE " + prunable.format(r="c") + "),"
            f" doomed AS (SELECT id, created_at FROM statepipe.runs WHERE id IN (SELECT id FROM tree)"
            f"{'' if dry_run else ' FOR UPDATE SKIP LOCKED'}),"
            " files AS (SELECT d.id, d.created_at, e.data->>'output_dir' AS dir FROM doomed d"
            "  LEFT JOIN statepipe.events e ON e.run_id = d.id AND e.seq = 1 AND e.type = 'run_created'), "
            + removed
            + " SELECT f.id, f.created_at, f.dir, f.id IN (SELECT id FROM roots), "
            + ", ".join(f"(SELECT count(*) FROM {t})" for t in tables)
            + " FROM files f ORDER BY f.created_at, f.id"
        )
        params: dict[str, Any] = {
            "cutoff": cutoff, "states": list(states), "batch": batch, "at": None, "last": None,
            "kept_wf": [b[0] for b in bounds], "kept_at": [b[1] for b in bounds], "kept_id": [b[2] for b in bounds],
        }
        while True:
            with self._tx() as conn, conn.transaction():
                rows = conn.execute(query, params).fetchall()
            if not rows:
                return
            params["at"], params["last"] = max((r[1], r[0]) for r in rows if r[3])  # the batches go by roots
            counts = {t: int(n) for t, n in zip(tables, rows[0][4:])}
            yield Pruned([(r[0], r[2]) for r in rows], {"runs": len(rows), **counts})

    def table_sizes(self) -> dict[str, Any]:
        """The database's size, and each table's rows and bytes (with its indexes and TOAST).
        Rows are the planner's estimate (pg_class.reltuples, kept by ANALYZE and autovacuum),
        counted exactly where that says fewer than EXACT_BELOW: a count of 10 million events
        would take seconds."""
        with self._tx() as conn:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            rows = conn.execute(
                "SELECT c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'statepipe' AND c.relkind = 'r' AND c.relname = ANY(%s) ORDER BY c.relname",
                (list(HISTORY_TABLES),),
            ).fetchall()
            tables: dict[str, dict[str, Any]] = {}
            for name, estimate, total in rows:
                exact = estimate < EXACT_BELOW  # -1: never analysed
                if exact:
                    counted = conn.execute(sql.SQL("SELECT count(*) FROM statepipe.{}").format(sql.Identifier(name))).fetchone()
                    estimate = counted[0] if counted else 0
                tables[name] = {"rows": int(estimate), "estimated": not exact, "bytes": int(total)}
        return {"database_bytes": int(size[0]) if size else 0, "tables": {t: tables[t] for t in HISTORY_TABLES if t in tables}}

    @contextmanager
    def listening(self, *channels: str) -> Iterator[psycopg.Connection[Any]]:
        """A dedicated autocommit connection LISTENing on the given channels."""
        try:
            with psycopg.connect(self.pool.conninfo, autocommit=True) as conn:
                for name in channels:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
                yield conn
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"lost the database connection: {first_line(exc)}") from exc


class RunReader:
    """A run's steps and attempts in the order `inspect --json` lists them, read through
    server-side cursors a page at a time: that document of a 100,000-child run was built whole
    from every row (790 MB, 9.5 s) before its first byte was written. The order and the rules
    are RunSnapshot's (parents, each followed by its children in item order, then the
    compensations; a fan-out's output is its children's), applied by the server."""

    PAGE = 2000  # rows a cursor fetches at a time

    def __init__(self, conn: psycopg.Connection[Any], run: RunRow) -> None:
        self.conn = conn
        self.run = run
        self._cursors = 0

    def forks(self) -> list[str]:
        rows = self.conn.execute(
            "SELECT id FROM statepipe.runs WHERE forked_from = %s ORDER BY created_at", (self.run.id,)
        ).fetchall()
        return [str(r[0]) for r in rows]

    def child_runs(self) -> list[RunRow]:
        rows = self.conn.cursor(row_factory=dict_row).execute(
            f"SELECT {_RUN_COLUMNS} FROM statepipe.runs r WHERE r.parent_run = %s ORDER BY r.created_at", (self.run.id,)
        ).fetchall()
        return [RunRow(**r) for r in rows]

    def result(self) -> Any:
        """RunSnapshot.result, a fan-out's output an iterator of its children's (see output_of)."""
        rows = self.conn.execute(
            f"SELECT {_of('s', _STEP_COLUMNS)}, a.output FROM statepipe.steps s LEFT JOIN statepipe.attempts a"
            "  ON a.run_id = s.run_id AND a.step = s.name AND a.item = s.item AND a.number = s.attempt"
            "  AND a.state = 'succeeded'"
            " WHERE s.run_id = %s AND s.item = '' AND s.compensates IS NULL ORDER BY s.position, s.name COLLATE \"C\"",
            (self.run.id,),
        ).fetchall()
        parents = [(StepRow(*r[:-1]), r[-1]) for r in rows]
        outputs = {row.name: output for row, output in parents}
        return result_of([row for row, _ in parents], self.run.result_step,
                         lambda row: self.output_of(row) if row.fanout else outputs[row.name])

    def output_of(self, row: StepRow) -> Any:
        """A fan-out parent's output, its children's, as an iterator read as it is consumed."""
        return self.children_outputs(row.name) if row.fanout else row.output

    def children_outputs(self, name: str) -> Iterator[Any]:
        yield from (r[0] for r in self._cursor(
            _CHILD_OUTPUTS, (self.run.id, name), decode=[0],
        ))

    def steps(self) -> Iterator[StepRow]:
        """Every step, with its attempts, in the document's order: a fan-out child after its
        parent (dropped children, with no index, are left out), compensations last. The order
        is one integer, mostly: a sort by several keys that tie for every child took 4 s for
        100,000 rows."""
        n = _STEP_COLUMNS.count(",") + 1
        columns, decode = _texts_of_json(f"{_of('s', _STEP_COLUMNS)}, {_of('a', _ATTEMPT_COLUMNS)}")
        rows = self._cursor(
            f"SELECT {columns} FROM statepipe.steps s"
            " LEFT JOIN statepipe.steps p ON s.item <> '' AND s.compensates IS NULL AND p.run_id = s.run_id"
            "  AND p.name = s.name AND p.item = '' AND p.compensates IS NULL"
            " LEFT JOIN statepipe.attempts a ON a.run_id = s.run_id AND a.step = s.name AND a.item = s.item"
            " WHERE s.run_id = %s AND (s.item = '' OR s.compensates IS NOT NULL OR s.item_index IS NOT NULL AND p.name IS NOT NULL)"
            " ORDER BY CASE WHEN s.compensates IS NOT NULL"
            "   THEN (1::bigint << 62) + (coalesce(s.item_index, 0)::bigint << 31) + s.position"
            "   ELSE (coalesce(p.position, s.position)::bigint << 32) + CASE WHEN s.item = '' THEN 0 ELSE s.item_index + 1 END"
            "  END, s.name COLLATE \"C\", s.item_index NULLS FIRST, a.number",
            (self.run.id,), decode,
        )
        current: StepRow | None = None
        for r in rows:
            if current is None or (current.name, current.item) != (r[0], r[1]):
                if current is not None:
                    yield current
                current = StepRow(*r[:n])
            if r[n] is not None:  # an attempt (the LEFT JOIN gives a step without any one row of nulls)
                current.attempts.append(AttemptRow(current.name, current.item, *r[n:]))
        if current is not None:
            yield current

    def _cursor(self, query: str, params: tuple[Any, ...], decode: Sequence[int] = ()) -> Iterator[tuple[Any, ...]]:
        """The rows of a server-side cursor, a page at a time; several can be open at once.
        `decode`: the columns that are JSON text, decoded a page at a time (see _decoded)."""
        self._cursors += 1
        with self.conn.cursor(name=f"statepipe_reading_{self._cursors}", binary=True) as cur:
            set_json_loads(_loads, cur)
            cur.execute(query, params)
            while page := cur.fetchmany(self.PAGE):  # iterating the cursor costs a call a row
                yield from _decoded(page, decode) if decode else page


def _of(table: str, columns: str) -> str:
    """Columns named in a list, each qualified by `table`."""
    return ", ".join(f"{table}.{c.strip()}" for c in columns.split(","))


_JSON_COLUMNS = ("overrides", "waiting_for", "output", "usage", "cached_from")  # the jsonb of StepRow and AttemptRow


def _texts_of_json(columns: str) -> tuple[str, list[int]]:
    """The qualified columns with those of _JSON_COLUMNS read as text, and where those are."""
    named = [c.strip() for c in columns.split(",")]
    decode = [i for i, c in enumerate(named) if c.rpartition(".")[2] in _JSON_COLUMNS]
    return ", ".join(f"{c}::text" if i in decode else c for i, c in enumerate(named)), decode


def _decoded(page: list[tuple[Any, ...]], decode: Sequence[int]) -> list[tuple[Any, ...]]:
    """The page's rows with their JSON text columns decoded, a column in one call: a loader
    called for each value was a fifth of `inspect --json`'s time at 100,000 children."""
    columns = list(zip(*page))
    for i in decode:
        columns[i] = tuple(_loads_all(columns[i]))
    return list(zip(*columns))


def _loads_all(texts: Sequence[str | None]) -> list[Any]:
    """_loads of each text (None: None), read as one JSON array when orjson reads it as json does."""
    raw = ("[" + ",".join("null" if t is None else t for t in texts) + "]").encode()
    try:
        if not _LONG_NUMBER.search(raw):
            return list(orjson.loads(raw))
    except orjson.JSONDecodeError:  # a number past a float's range: _loads reads it as json does
        pass
    return [None if t is None else _loads(t) for t in texts]


def _document(
    changes: Sequence[Change], by_run: Sequence[Sequence[int]], created: Sequence[NewRun] = (), lease_s: float = 0.0
) -> tuple[str, list[str]]:
    """The JSON document statepipe.commit_changes reads (see schema.sql), and the big values
    that go beside it. Inputs, outputs and usage are already JSON text: small ones are spliced
    into the document as values, not encoded again as strings; a big one is a parameter of its
    own, since taking a megabyte back out of the document costs the server more than parsing it."""
    values: list[str] = []
    big: list[str] = []

    def value(text: str | None) -> int | None:
        if text is None:
            return None
        values.append(text)
        return len(values) - 1

    def spliced_or_big(text: str | None, key: str) -> dict[str, int | None]:
        if text is not None and len(text) > BIG_VALUE:
            big.append(text)
            return {key: None, key + "b": len(big)}
        return {key: value(text)}

    runs, events = [], []
    for b, idx in enumerate(by_run, 1):
        block = [e for i in idx for e in changes[i].events]
        # the owner's fence, if any of the run's changes is the owner's (a claimed child's has none)
        fence = next((changes[i].fence for i in idx if changes[i].fence is not None), None)
        runs.append({"id": changes[idx[0]].run_id, "fence": fence, "n": len(block)})
        events += [
            {"b": b, "pos": pos, "ts": e.ts, "type": e.type, "step": e.step, "item": e.item, "attempt": e.attempt, "data": e.data}
            for pos, e in enumerate(block, 1)
        ]
    latest = {(ch.run_id, s.name, s.item): (ch.run_id, s) for ch in changes for s in ch.steps}  # last write wins
    body = {
        "new_runs": [
            {
                "id": r.id, "workflow": r.workflow, "workflow_ref": r.workflow_ref, **spliced_or_big(r.input_json, "i"),
                "owner": r.owner, "lease_s": lease_s, "batch_id": r.batch_id, "batch_index": r.batch_index,
                "dry_run": r.dry_run, "no_cache": r.no_cache, "fingerprint": r.fingerprint, "forked_from": r.forked_from,
                "result_step": r.result_step, "parent_run": r.parent_run, "parent_key": r.parent_key, "depth": r.depth,
            }
            for r in created
        ],
        "runs": runs,
        "events": events,
        "run_writes": [{"id": ch.run_id, **vars(ch.run)} for ch in changes if ch.run is not None],
        "new_steps": [{"run_id": ch.run_id, **vars(s)} for ch in changes for s in ch.new_steps],
        "steps": [{"run_id": r, **vars(s)} for r, s in latest.values()],
        "attempts": [
            {
                "run_id": ch.run_id, "step": a.step, "item": a.item, "number": a.number, "state": a.state,
                "started_at": a.started_at, "finished_at": a.finished_at, "error": a.error, "traceback": a.traceback,
                **spliced_or_big(a.output, "o"), "u": value(a.usage), "cache_key": a.cache_key, "cached_from": a.cached_from,
                "worker": a.worker,
            }
            for ch in changes for a in ch.attempts
        ],
        "claims": [{"run_id": ch.run_id, **vars(h)} for ch in changes for h in ch.claims],
    }
    head = json_text({k: v for k, v in body.items() if v})  # every commit waits for it: 2 us by orjson, 12 by json
    if not storable.storable(head):  # data with it was refused before: a message holds it
        storable.mend(changes, created)
        return _document(changes, by_run, created, lease_s)
    return head[:-1] + ("," if len(head) > 2 else "") + '"values":[' + ",".join(values) + "]}", big


def _claim_document(request: ClaimRequest) -> str:
    """The JSON document statepipe.claim_runs reads (see schema.sql)."""
    return json_text({
        "owner": request.owner, "lease_s": request.ttl, "limit": request.limit,
        "workflows": list(request.workflows) if request.workflows else None,
        "batch": request.batch_id, "skip": list(request.skip),
    })


def _claim(row: dict[str, Any]) -> Claim:
    """A claimed run from statepipe.claim_runs's JSON, where timestamps are ISO text."""
    for key in _RUN_TIMES:
        if row[key] is not None:
            row[key] = datetime.fromisoformat(row[key])
    ts, type_, data = row.pop("first_ts"), row.pop("first_type"), row.pop("first_data")
    run = RunRow(**row)
    created = Event(run.id, 1, datetime.fromisoformat(ts), type_, None, None, None, data) if type_ is not None else None
    return Claim(run, created)


def _child_claim(row: dict[str, Any]) -> ChildClaim:
    """A claimed child from statepipe.claim_children's JSON, where timestamps are ISO text."""
    started = row.get("started_at")
    return ChildClaim(
        row["run_id"], row["name"], row["item"], int(row["item_index"]), row["state"], int(row["attempt"]), row["error"],
        int(row["claim_fence"]), row["workflow"], row["workflow_ref"], row["input"], bool(row["dry_run"]), row["overrides"],
        row["feedback"], int(row["parent_attempt"]), datetime.fromisoformat(started) if started else None, row["prior"],
    )


def _run_row(conn: psycopg.Connection[Any], run_id: str) -> RunRow:
    row = conn.cursor(row_factory=dict_row).execute(
        f"SELECT {_RUN_COLUMNS} FROM statepipe.runs r WHERE r.id = %s", (run_id,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no run {run_id}")
    return RunRow(**row)


def _with_params(query: bytes, params: list[bytes]) -> Callable[[PGconn], None]:
    """What sends a statement with its parameters, unprepared."""
    return lambda pg: pg.send_query_params(query, params)


def _prepared(conn: psycopg.Connection[Any], name: bytes, param: bytes) -> Callable[[PGconn], None]:
    """What sends the named statement of _STATEMENTS with its one parameter, preparing it first
    on a connection that has not seen it (at protocol level, as psycopg prepares, which is what
    poolers that track prepared statements follow)."""
    done = _PREPARED.setdefault(conn, set())
    if name not in done:
        try:
            _execute(conn, [lambda pg: pg.send_prepare(name, _STATEMENTS[name])])
        except psycopg.errors.DuplicatePreparedStatement:
            # our record was dropped whole when another of our statements went missing, this
            # one survived; the name is only ever given to this text
            pass
        done.add(name)
    return lambda pg: pg.send_query_prepared(name, [param])


def _execute(
    conn: psycopg.Connection[Any], sends: Sequence[Callable[[PGconn], None]], meanwhile: Callable[[], None] | None = None
) -> list[PGresult]:
    """Run the statements `sends` send through libpq itself, in one transaction and one round trip
    (several go as a pipeline ended by one Sync), calling `meanwhile` between sending them and
    waiting for the answers; returns each statement's answer.

    This is the engine's hot path, and psycopg's execute() costs it: about 35 us of CPU more a
    commit (W1's 21 commits: 0.8 ms), and it goes straight from sending to waiting, so work
    meant to overlap the server's had to run on another thread, which, holding the GIL through a
    whole json.loads, stalled the sending one. W3 (five 1 MB outputs, each decoded for its
    consumer while PostgreSQL stores it) went from about 1.23x the floor to 1.12x this way
    (medians of alternated in-process runs).

    An error in `meanwhile` is raised once the answers are in; the first statement that failed
    raises its error (the ones after it were skipped, and the transaction is rolled back). The
    connection is closed if its answers are not read to the end (an interrupt, a broken socket),
    so it is never handed out again mid-statement."""
    pg = conn.pgconn
    assert not pg.pipeline_status, "a statement sent here would wait behind the pipeline's, for ever"
    piped = len(sends) > 1
    answers: list[PGresult | None] = []
    late: BaseException | None = None
    done = False
    try:
        if piped:
            pg.enter_pipeline_mode()
        for send in sends:
            send(pg)
        if piped:
            pg.pipeline_sync()
        while pg.flush():  # 1 while libpq still holds unsent bytes
            _wait(pg.socket, write=True)
            pg.consume_input()  # the server may answer (an error) before it has read it all
        if meanwhile is not None:
            try:
                meanwhile()
            except BaseException as exc:  # the statements are sent: their answers are read first
                late = exc
        for _ in sends:
            answer = None
            while (result := _next_result(pg)) is not None:  # a statement's results end with None
                if answer is None:
                    answer = result
            answers.append(answer)
        if piped:
            synced = _next_result(pg)
            assert synced is not None and synced.status == ExecStatus.PIPELINE_SYNC
            pg.exit_pipeline_mode()
        done = True
    finally:
        if not done:
            conn.close()
    if late is not None:
        raise late
    for answer in answers:
        if answer is None:
            raise psycopg.OperationalError("the server sent no answer")
        if answer.status == ExecStatus.FATAL_ERROR:
            raise psycopg.errors.error_from_result(answer, encoding=conn.info.encoding)
    return answers  # type: ignore[return-value]  # none is None, as checked


def _next_result(pg: PGconn) -> PGresult | None:
    while pg.is_busy():
        _wait(pg.socket, write=False)
        pg.consume_input()
    return pg.get_result()


def _wait(fd: int, write: bool) -> None:
    """Until the socket is readable (or writable, with `write`); the GIL is free meanwhile."""
    if hasattr(select, "poll"):  # no limit on descriptor numbers, unlike select()
        poller = select.poll()
        poller.register(fd, select.POLLIN | (select.POLLOUT if write else 0))
        poller.poll()
    else:
        select.select([fd], [fd] if write else [], [])


def _lasts(result: PGresult) -> list[int]:
    """commit_changes's bigint[] from its text form, "{12,40}"."""
    text = (result.get_value(0, 0) or b"{}").decode()[1:-1]
    return [int(v) for v in text.split(",")] if text else []


def _event(run_id: str, seq: int, e: NewEvent) -> Event:
    return Event(run_id, seq, e.ts, e.type, e.step, e.item, e.attempt, e.data)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Apply schema.sql once per database version: the file is idempotent, so an older database
    is migrated by applying it again under the lock."""
    row = conn.execute("SELECT to_regclass('statepipe.schema_version') IS NOT NULL").fetchone()
    if row and row[0]:
        current = conn.execute("SELECT max(version) FROM statepipe.schema_version").fetchone()
        version = current[0] if current else None
        if version == SCHEMA_VERSION:
            return
        if version is not None and version > SCHEMA_VERSION:
            raise DatabaseUnavailable(
                f"the database has statepipe schema v{version}; this statepipe knows v{SCHEMA_VERSION}: upgrade statepipe"
            )
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(schema_sql().encode())


def schema_sql() -> str:
    return resources.files("statepipe.store").joinpath("schema.sql").read_text()
