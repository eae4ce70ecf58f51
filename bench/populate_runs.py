"""Fill a database of its own with a year of history for bench/history.py: N runs (1,000,000 by
default) of ten workflows, one every ~31 s back from now, with a few steps, attempts and events
each, written set-based (INSERT ... SELECT generate_series) in batches. One run in 20 failed, one in
1,000 was cancelled; the newest 100 are unfinished (running or pending, nobody executing them).

    python bench/populate_runs.py                       # statepipe_bench_history, 1,000,000 runs
    python bench/populate_runs.py --runs 100000 --steps 0 --events 0

The embedded PostgreSQL (or --database-url / STATEPIPE_DATABASE_URL: its server) holds it; the
database is dropped and made again."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import benchdb  # bench/benchdb.py: the scripts run from this folder
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from statepipe.store.database import open_store

DATABASE = "statepipe_bench_history"
BATCH = 100_000  # runs a transaction
SPACING_S = 31.5  # between two runs' creation: 1,000,000 runs span a year
WORKFLOWS = 10
UNFINISHED = 100


# Run n (0 is the newest) in a batch [lo, hi): its id is a uuid made from n, so runs, steps,
# attempts and events of one batch agree without reading each other back.
RUN_ID = "md5('run' || n)::uuid::text"

RUNS = f"""
INSERT INTO statepipe.runs (id, workflow, workflow_ref, state, input, error, created_at, started_at, finished_at,
                            updated_at, last_seq, fencing_token, active_s, result_step)
SELECT {RUN_ID}, 'wf_' || mod(n, {WORKFLOWS}), 'bench/populate_runs.py:wf', st, jsonb_build_object('n', n),
       CASE WHEN st = 'failed' THEN 'ValueError: bench failure ' || n END,
       t, t + interval '1 second', CASE WHEN st IN ('running', 'pending') THEN NULL ELSE t + interval '3 seconds' END,
       t + interval '3 seconds', %(events)s, 1, 2.0, NULL
  FROM (SELECT n, now() - n * make_interval(secs => {SPACING_S}) AS t,
               CASE WHEN n < {UNFINISHED} THEN (CASE WHEN mod(n, 2) = 0 THEN 'running' ELSE 'pending' END)
                    WHEN mod(n, 1000) = 7 THEN 'cancelled' WHEN mod(n, 20) = 3 THEN 'failed' ELSE 'succeeded' END AS st
          FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS n) g
"""

STEPS = f"""
INSERT INTO statepipe.steps (run_id, name, item, position, state, depends_on, attempt, started_at, finished_at)
SELECT {RUN_ID}, 's' || k, '', k, 'succeeded', CASE WHEN k = 0 THEN '{{}}'::text[] ELSE ARRAY['s' || (k - 1)] END, 1,
       now() - n * make_interval(secs => {SPACING_S}) + interval '1 second',
       now() - n * make_interval(secs => {SPACING_S}) + interval '2 seconds'
  FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS n, generate_series(0, %(steps)s - 1) AS k
"""

ATTEMPTS = f"""
INSERT INTO statepipe.attempts (run_id, step, item, number, state, started_at, finished_at, output)
SELECT {RUN_ID}, 's' || k, '', 1, 'succeeded',
       now() - n * make_interval(secs => {SPACING_S}) + interval '1 second',
       now() - n * make_interval(secs => {SPACING_S}) + interval '2 seconds', jsonb_build_object('value', n * 10 + k)
  FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS n, generate_series(0, %(steps)s - 1) AS k
"""

EVENTS = f"""
INSERT INTO statepipe.events (run_id, seq, ts, type, step, data)
SELECT {RUN_ID}, e, now() - n * make_interval(secs => {SPACING_S}) + e * interval '1 millisecond',
       CASE WHEN e = 1 THEN 'run_created' ELSE 'step_succeeded' END, CASE WHEN e > 1 THEN 's' || (e - 2) END,
       CASE WHEN e = 1 THEN jsonb_build_object('workflow', 'wf_' || mod(n, {WORKFLOWS})) ELSE '{{}}'::jsonb END
  FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS n, generate_series(1, %(events)s) AS e
"""


def populate(url: str, runs: int, steps: int, events: int) -> None:
    began = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        for lo in range(0, runs, BATCH):
            hi = min(runs, lo + BATCH)
            params = {"lo": lo, "hi": hi, "steps": steps, "events": events}
            with conn.transaction():
                conn.execute(RUNS, params)
                if steps:
                    conn.execute(STEPS, params)
                    conn.execute(ATTEMPTS, params)
                if events:
                    conn.execute(EVENTS, params)
            print(f"{hi:,} runs ({time.perf_counter() - began:.0f} s)", file=sys.stderr, flush=True)
        conn.execute("VACUUM ANALYZE")  # as autovacuum would in time: statistics and the visibility map
    print(f"{runs:,} runs, {runs * steps:,} steps and attempts, {runs * events:,} events in {time.perf_counter() - began:.0f} s",
          file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=3, help="steps a run (each with one attempt)")
    parser.add_argument("--events", type=int, default=5, help="events a run")
    parser.add_argument("--database", default=DATABASE)
    parser.add_argument("--database-url", default=os.environ.get("STATEPIPE_DATABASE_URL"), help="the server")
    args = parser.parse_args()
    url = benchdb.fresh_database(args.database_url, args.database)
    open_store(url, max_size=1).pool.close()  # the schema
    populate(url, args.runs, args.steps, args.events)
    print(url)


if __name__ == "__main__":
    main()
