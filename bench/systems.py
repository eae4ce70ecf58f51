"""The two systems under test, behind one interface: each runs one workflow of a workload and
returns its result; the caller times and checks it.

- Floor: the least any engine could do on the same PostgreSQL. Plain psycopg 3, per step one
  INSERT of the JSON output committed in its own transaction (autocommit: one round trip),
  before any step that consumes it starts. Nothing else: no status rows, no reads, no events.
- Statepipe: the public API, as a user would call it: create_run, execute / execute_many, and
  the result each returns (the sink step's output, decoded from the JSON that was committed).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import psycopg
import workloads as wl
from psycopg_pool import ConnectionPool

from statepipe.definition.loader import Loaded
from statepipe.engine.runtime import Runtime
from statepipe.store import open_store

FLOOR_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS bench;
CREATE TABLE IF NOT EXISTS bench.step_outputs (
    workflow_id text NOT NULL,
    step_id     text NOT NULL,
    output      jsonb NOT NULL,
    PRIMARY KEY (workflow_id, step_id)
);
"""
_INSERT = "INSERT INTO bench.step_outputs (workflow_id, step_id, output) VALUES (%s, %s, %s::jsonb)"


def encode(value: Any) -> str:
    """Compact JSON as plain psycopg writes it (its Jsonb dumper calls json.dumps); statepipe
    stores the same values (its text, by orjson where it can, leaves non-ASCII unescaped)."""
    return json.dumps(value, separators=(",", ":"))


class BenchError(Exception):
    """A workflow did not produce its expected result, or rows are missing."""


class System(Protocol):
    name: str
    made: list[str]  # workflow/run ids created, for the row count
    phases: dict[str, float]  # where the last W4 batch spent its time, when the system can tell

    def w1(self, k: int) -> Any: ...
    def w2(self, k: int) -> Any: ...
    def w3(self, k: int) -> Any: ...
    def w4_batch(self, first_k: int, runs: int) -> list[Any]: ...
    def count_rows(self, ids: Sequence[str]) -> int: ...
    def close(self) -> None: ...


def server_settings(url: str) -> dict[str, str]:
    names = ("server_version", "synchronous_commit", "fsync", "wal_sync_method", "full_page_writes", "commit_delay")
    with psycopg.connect(url, autocommit=True) as conn:
        return {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in names}  # type: ignore[index]


# -- the floor -------------------------------------------------------------------------------


class Floor:
    name = "floor"

    def __init__(self, url: str, *, connections: int, threads: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(FLOOR_SCHEMA)
        self.pool = ConnectionPool(
            url, min_size=connections, max_size=connections, kwargs={"autocommit": True}, open=True, name="floor"
        )
        self.pool.wait()
        self.threads = ThreadPoolExecutor(threads, thread_name_prefix="floor")
        self.prefix = uuid.uuid4().hex[:8]
        self.made: list[str] = []
        self.phases: dict[str, float] = {}

    def _new_id(self, workload: str, k: int) -> str:
        wid = f"{self.prefix}-{workload}-{k}"
        self.made.append(wid)
        return wid

    def _chain(self, wid: str, first: Any, steps: int, body: wl.Body) -> Any:
        value = first
        with self.pool.connection() as conn:
            for i in range(1, steps + 1):
                value = body(value, i)
                conn.execute(_INSERT, (wid, f"s{i}", encode(value)))
        return value

    def _store(self, wid: str, step: str, value: Any) -> None:
        with self.pool.connection() as conn:
            conn.execute(_INSERT, (wid, step, encode(value)))

    def w1(self, k: int) -> Any:
        return self._chain(self._new_id("W1", k), wl.chain_input(k), wl.W1_STEPS, wl.advance)

    def w2(self, k: int) -> Any:
        wid = self._new_id("W2", k)
        items = wl.produce_items(k)
        self._store(wid, "produce", items)

        def branch(item: dict[str, Any]) -> Any:
            out = wl.answer(item)
            self._store(wid, f"branch[{item['idx']}]", out)
            return out

        answers = list(self.threads.map(branch, items))
        result = wl.join_answers(answers)
        self._store(wid, "join", result)
        return result

    def w3(self, k: int) -> Any:
        return self._chain(self._new_id("W3", k), wl.w3_input(k), wl.W3_STEPS, wl.w3_step)

    def w4_batch(self, first_k: int, runs: int) -> list[Any]:
        ids = [(self._new_id("W4", k), k) for k in range(first_k, first_k + runs)]
        futures = [self.threads.submit(self._chain, wid, wl.chain_input(k), wl.W4_STEPS, wl.advance) for wid, k in ids]
        return [f.result() for f in futures]

    def count_rows(self, ids: Sequence[str]) -> int:
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM bench.step_outputs WHERE workflow_id = ANY(%s)", (list(ids),)
            ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.threads.shutdown()
        self.pool.close()


# -- statepipe -------------------------------------------------------------------------------


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class Statepipe:
    name = "statepipe"

    def __init__(self, url: str, *, connections: int) -> None:
        self.store = open_store(url, max_size=connections)
        self.runtime = Runtime(self.store)
        # With Python's default SIGINT handler in place, every Runner.run installs its own and,
        # on the way out, compares it with getsignal(), whose failed enum lookup formats the
        # finished task's repr: the whole result, about 8 ms for W3's megabyte. A handler of
        # our own (same behaviour) keeps the harness from timing that.
        signal.signal(signal.SIGINT, _interrupt)
        self.runner = asyncio.Runner()
        ref = Path(wl.__file__).resolve()
        self.loaded = {name: Loaded(getattr(wl, name), f"{ref}:{name}") for name in ("W1", "W2", "W3", "W4")}
        self.made: list[str] = []
        self.phases: dict[str, float] = {}

    def _create(self, workload: str, run_input: dict[str, Any]) -> str:
        run_id = self.runtime.create_run(self.loaded[workload], run_input)
        self.made.append(run_id)
        return run_id

    def _run_one(self, workload: str, run_input: dict[str, Any]) -> Any:
        run_id = self._create(workload, run_input)
        outcome = self.runner.run(self.runtime.execute(run_id, self.loaded[workload]))
        if outcome.state != "succeeded":
            raise BenchError(f"statepipe {workload} run {run_id} ended {outcome.state}")
        return outcome.result

    def w1(self, k: int) -> Any:
        return self._run_one("W1", wl.chain_input(k))

    def w2(self, k: int) -> Any:
        return self._run_one("W2", wl.w2_input(k))

    def w3(self, k: int) -> Any:
        return self._run_one("W3", wl.w3_input(k))

    def w4_batch(self, first_k: int, runs: int) -> list[Any]:
        t0 = time.perf_counter()
        ids = self.runtime.create_runs(self.loaded["W4"], [wl.chain_input(k) for k in range(first_k, first_k + runs)])
        self.made.extend(ids)
        t1 = time.perf_counter()
        outcomes = self.runner.run(self.runtime.execute_many(ids, wl.W4_CONCURRENCY, self.loaded["W4"]))
        t2 = time.perf_counter()
        failed = [o for o in outcomes if o.state != "succeeded"]
        if failed:
            raise BenchError(f"statepipe W4: {len(failed)} runs did not succeed, e.g. {failed[0]}")
        self.phases = {"create_s": t1 - t0, "execute_s": t2 - t1}
        return [o.result for o in outcomes]

    def count_rows(self, ids: Sequence[str]) -> int:
        with self.store.pool.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM statepipe.attempts WHERE run_id = ANY(%s) AND state = 'succeeded'", (list(ids),)
            ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.runner.close()
        self.runtime.close()
