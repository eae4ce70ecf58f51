"""Reading at scale and history (issue 17): what `list`, `inspect` and `logs` cost on a big
database, and what a step, an attempt and an event take on disk. Each command is the real CLI in
a subprocess (its wall time and peak RSS); the embedded PostgreSQL or STATEPIPE_DATABASE_URL's
server holds the databases, each of its own.

    python bench/populate_runs.py                  # first: 1,000,000 runs in statepipe_bench_history
    python bench/history.py list                   # list, list --status failed, list --workflow wf_3 --since 1d, plans
    python bench/history.py inspect --width 100000 # inspect and inspect --json of a 100,000-child run
    python bench/history.py logs --events 1000000  # logs of a run with 1,000,000 events
    python bench/history.py storage --widths 1000,10000,100000

`inspect` makes its run once (bench/scale.py's fan-out, in statepipe_bench_wide) and reuses it;
`logs` inserts its events directly (output chunks, as a streaming step writes them)."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import benchdb  # noqa: E402 - bench/benchdb.py: the scripts run from this folder
from populate_runs import DATABASE

LIST_COMMANDS = (["list"], ["list", "--status", "failed"], ["list", "--workflow", "wf_3", "--since", "1d"])


def timed(argv: Sequence[str], url: str, consume: Callable[[bytes], None] | None = None) -> tuple[float, float, int]:
    """Run `statepipe ARGV` against `url`: (wall seconds, peak RSS in MB, bytes written). Its
    stdout is read here as it comes (a pipe, as `| jq` would), each read handed to `consume`.
    Bytecode caching is on, as in any installed environment (as bench/run.py times the CLI):
    with PYTHONDONTWRITEBYTECODE, which some shells here set, a fresh checkout's modules are
    never cached but compiled by every command: 0.40 s for `list` against 0.30 s cached."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["STATEPIPE_DATABASE_URL"] = url
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "statepipe", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    size = 0
    while chunk := proc.stdout.read1(1 << 16):
        size += len(chunk)
        if consume is not None:
            consume(chunk)
    assert proc.stderr is not None
    said = proc.stderr.read()  # a line or two ("20 of ... runs")
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, f"statepipe {' '.join(argv)} exited {proc.returncode}: {said.decode()}"
    return took, usage.ru_maxrss / 1024, size


def median_of(argv: Sequence[str], url: str, rounds: int) -> tuple[float, float, float, int]:
    """(median wall s, fastest, slowest, peak RSS MB of the slowest), after one untimed run
    (bytecode written, pages cached)"""
    timed(argv, url)
    runs = [timed(argv, url) for _ in range(rounds)]
    walls = [r[0] for r in runs]
    return statistics.median(walls), min(walls), max(walls), int(max(r[1] for r in runs))


# -- list -------------------------------------------------------------------------------------


def plans(url: str) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of each query the three commands send, as they send them:
    Store.list_runs and count_runs are called here with the CLI's arguments and their
    statements recorded (no auto_explain in the embedded server)."""
    from statepipe.client.runs import parse_since
    from statepipe.store.database import open_store
    from statepipe.views.cli import COUNTED_UP_TO

    sent: list[tuple[Any, Any]] = []
    original = psycopg.Cursor.execute

    def recording(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        if "statepipe.runs r" in str(query):
            sent.append((query, params))
        return original(self, query, params, **kw)

    store = open_store(url, max_size=1)
    psycopg.Cursor.execute = recording  # type: ignore[method-assign]
    try:
        for states, workflow, since in (((), None, None), (("failed",), None, None), ((), "wf_3", "1d")):
            kw: dict[str, Any] = {"states": states, "workflow": workflow, "since": parse_since(since)}
            store.list_runs(**kw, limit=20)
            store.count_runs(**kw, at_most=COUNTED_UP_TO)  # as `list` does when its 20 are not all
    finally:
        psycopg.Cursor.execute = original  # type: ignore[method-assign]
    with psycopg.connect(url) as conn:
        for query, params in sent:
            rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {query}", params).fetchall()
            first = " ".join(str(query).split())[:150]
            print(f"\n-- {first}…\n-- params: {params}")
            print("\n".join(r[0] for r in rows))
    store.pool.close()


def bench_list(args: argparse.Namespace) -> None:
    url = benchdb.database_url(args.database_url, args.database)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM statepipe.runs").fetchone()
    print(f"{row[0] if row else 0:,} runs in {args.database}\n")
    print("| command | median s | fastest | slowest | peak RSS MB |")
    print("|---|---|---|---|---|")
    for argv in LIST_COMMANDS:
        med, lo, hi, rss = median_of(argv, url, args.rounds)
        print(f"| statepipe {' '.join(argv)} | {med:.2f} | {lo:.2f} | {hi:.2f} | {rss} |", flush=True)
    med, lo, hi, rss = median_of(["--version"], url, args.rounds)
    print(f"| statepipe --version (start-up alone) | {med:.2f} | {lo:.2f} | {hi:.2f} | {rss} |")
    if not args.no_plans:
        plans(url)


# -- inspect ----------------------------------------------------------------------------------


def wide_run(args: argparse.Namespace) -> tuple[str, str]:
    """The database and id of a finished fan-out of `width` children, made once."""
    url = benchdb.database_url(args.database_url, f"statepipe_bench_wide_{args.width}") if not args.fresh else ""
    if url:
        try:
            with psycopg.connect(url) as conn:
                row = conn.execute("SELECT id FROM statepipe.runs WHERE workflow = 'scale_fanout' AND state = 'succeeded'"
                                   " ORDER BY created_at DESC LIMIT 1").fetchone()
            if row:
                return url, str(row[0])
        except psycopg.Error:  # not made yet
            pass
    url = benchdb.fresh_database(args.database_url, f"statepipe_bench_wide_{args.width}")
    print(f"making a {args.width:,}-child run …", file=sys.stderr, flush=True)
    # in a process of its own: a command forked from this one would count its memory as theirs
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        run_id, took = pool.apply(make_wide, (url, args.width))
    print(f"made in {took:.1f} s", file=sys.stderr)
    return url, run_id


def make_wide(url: str, width: int) -> tuple[str, float]:
    from scale import execute, fanout_workflow

    run_id, took, _ = execute(url, fanout_workflow(), {"width": width})
    return run_id, took


def bench_inspect(args: argparse.Namespace) -> None:
    url, run_id = wide_run(args)
    print(f"run {run_id}: {args.width:,} children\n")
    print("| command | median s | fastest | slowest | peak RSS MB | bytes out |")
    print("|---|---|---|---|---|---|")
    for argv in (["inspect", run_id], ["inspect", run_id, "--json"]):
        timed(argv, url)  # untimed, as median_of
        runs = [timed(argv, url) for _ in range(args.rounds)]
        walls = [r[0] for r in runs]
        print(f"| statepipe {' '.join(a if a != run_id else 'RUN' for a in argv)} | {statistics.median(walls):.2f} | "
              f"{min(walls):.2f} | {max(walls):.2f} | {max(r[1] for r in runs):.0f} | {runs[0][2]:,} |", flush=True)


# -- logs -------------------------------------------------------------------------------------


def event_run(args: argparse.Namespace) -> tuple[str, str]:
    """A finished run with `events` events, inserted set-based into a database of its own."""
    url = benchdb.fresh_database(args.database_url, "statepipe_bench_logs")
    from statepipe.store.database import open_store

    open_store(url, max_size=1).pool.close()  # the schema
    run_id = "0b0b0b0b-0000-4000-8000-000000000001"
    n = args.events
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO statepipe.runs (id, workflow, workflow_ref, state, input, created_at, started_at, finished_at, last_seq)"
            " VALUES (%s, 'flood', 'bench/history.py:flood', 'succeeded', '{}', now(), now(), now(), %s)", (run_id, n),
        )
        conn.execute(
            "INSERT INTO statepipe.events (run_id, seq, ts, type, step, item, attempt, data)"
            " SELECT %(id)s, s, now(), CASE WHEN s = 1 THEN 'run_created' WHEN s = %(n)s THEN 'run_succeeded' ELSE 'output' END,"
            "  CASE WHEN s > 1 AND s < %(n)s THEN 'flood' END, NULL, CASE WHEN s > 1 AND s < %(n)s THEN 1 END,"
            "  CASE WHEN s > 1 AND s < %(n)s THEN jsonb_build_object('text', 'token ' || s) ELSE '{}' END"
            " FROM generate_series(1, %(n)s) AS s",
            {"id": run_id, "n": n},
        )
        conn.execute("ANALYZE statepipe.events")
    return url, run_id


def bench_logs(args: argparse.Namespace) -> None:
    url, run_id = event_run(args)
    marks: list[float] = []
    lines = [0]
    step = max(1, args.events // 10)
    began = time.perf_counter()

    def count(chunk: bytes) -> None:
        before = lines[0]
        lines[0] += chunk.count(b"\n")
        if lines[0] // step > before // step:
            marks.append(time.perf_counter() - began)

    took, rss, size = timed(["logs", run_id], url, count)
    assert lines[0] == args.events, lines[0]
    print(f"statepipe logs RUN: {args.events:,} events, {size:,} bytes in {took:.2f} s "
          f"({args.events / took:,.0f} events/s), peak RSS {rss:.0f} MB")
    print("\n| events read | s | events/s over the last tenth |")
    print("|---|---|---|")
    previous = 0.0
    for i, at in enumerate(marks, 1):
        print(f"| {i * step:,} | {at:.2f} | {step / max(at - previous, 1e-9):,.0f} |")
        previous = at


# -- storage ----------------------------------------------------------------------------------


def bench_storage(args: argparse.Namespace) -> None:
    """Bytes a row of steps, attempts and events takes, with its indexes and TOAST
    (pg_total_relation_size / rows), after fan-outs of growing width, made by the engine."""
    from scale import execute, fanout_workflow

    # a dropped database ends the last runtime's listener, which says so, needlessly here
    logging.getLogger("statepipe.runtime").setLevel(logging.ERROR)
    print("| children | table | rows | MB | bytes per row |")
    print("|---|---|---|---|---|")
    for width in [int(w) for w in args.widths.split(",")]:
        url = benchdb.fresh_database(args.database_url, "statepipe_bench_storage")
        execute(url, fanout_workflow(), {"width": width})
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")  # as autovacuum does soon after: dead versions of updated rows reused
            for table in ("steps", "attempts", "events"):
                row = conn.execute(
                    f"SELECT count(*), pg_total_relation_size('statepipe.{table}') FROM statepipe.{table}"
                ).fetchone()
                rows, size = row if row else (0, 0)
                print(f"| {width:,} | {table} | {rows:,} | {size / 2**20:.1f} | {size / max(rows, 1):.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["list", "inspect", "logs", "storage"])
    parser.add_argument("--database", default=DATABASE, help="list: the database bench/populate_runs.py filled")
    parser.add_argument("--database-url", default=os.environ.get("STATEPIPE_DATABASE_URL"), help="the server")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-plans", action="store_true", help="list: leave the query plans out")
    parser.add_argument("--width", type=int, default=100_000, help="inspect: children of the run")
    parser.add_argument("--fresh", action="store_true", help="inspect: make the run again")
    parser.add_argument("--events", type=int, default=1_000_000, help="logs: events of the run")
    parser.add_argument("--widths", default="1000,10000,100000", help="storage: fan-out widths")
    args = parser.parse_args()
    {"list": bench_list, "inspect": bench_inspect, "logs": bench_logs, "storage": bench_storage}[args.what](args)


if __name__ == "__main__":
    main()
