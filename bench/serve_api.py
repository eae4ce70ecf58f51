"""What the HTTP API costs (issue 16): a synchronous invocation, `POST /api/runs?wait=true` of
W1 (a 20-step chain), against executing W1 in-process as the benchmark's statepipe system does
(goal: within 1.5x); and the latency of `GET /api/runs` and `GET /api/runs/{id}` on a database
of 100,000 runs (goal: under 50 ms each).

    python bench/serve_api.py                   # embedded PostgreSQL (or STATEPIPE_DATABASE_URL)
    python bench/serve_api.py --rounds 5 --reads 300

It works in its own database (statepipe_bench_api, dropped and re-created). The 100,000 runs
are written by SQL (INSERT ... SELECT generate_series): five succeeded steps each with their
attempts and outputs, a tenth of them failed, over the last 12 days, in two workflows. The
server runs as `statepipe serve` does, its own worker executing the runs, in another process;
its output folder is a temporary one. Every W1 result is checked. Figures go to stdout."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchdb  # bench/benchdb.py: the scripts run from this folder
import httpx
import psycopg
import workloads as wl  # beside this file, as bench/run.py imports it

HERE = Path(__file__).resolve().parent

BENCH_DB = "statepipe_bench_api"
RUNS = 100_000
W1_FILE = f"""import sys
sys.path.insert(0, {str(HERE)!r})
from workloads import W1
"""

POPULATE = [
    """INSERT INTO statepipe.runs (id, workflow, workflow_ref, state, input, error, created_at, started_at, finished_at,
                                  updated_at, last_seq, fencing_token, active_s)
       SELECT md5(i::text)::uuid::text, CASE WHEN mod(i, 3) = 0 THEN 'bench-other' ELSE 'bench-populated' END,
              'bench/populated.py:wf', CASE WHEN mod(i, 10) = 0 THEN 'failed' ELSE 'succeeded' END,
              jsonb_build_object('k', i, 'topic', 'run ' || i),
              CASE WHEN mod(i, 10) = 0 THEN 'step s5 failed: ValueError: no' END,
              t, t, t + interval '2 seconds', t + interval '2 seconds', 12, 1, 2.0
         FROM generate_series(1, %(runs)s) i, LATERAL (SELECT now() - make_interval(secs => (%(runs)s - i) * 10) AS t) c""",
    """INSERT INTO statepipe.steps (run_id, name, item, position, state, depends_on, attempt, started_at, finished_at)
       SELECT r.id, 's' || n, '', n - 1, 'succeeded', CASE WHEN n = 1 THEN '{}'::text[] ELSE ARRAY['s' || (n - 1)] END,
              1, r.started_at, r.finished_at
         FROM statepipe.runs r, generate_series(1, 5) n WHERE r.workflow_ref = 'bench/populated.py:wf'""",
    """INSERT INTO statepipe.attempts (run_id, step, item, number, state, started_at, finished_at, output, usage)
       SELECT s.run_id, s.name, '', 1, 'succeeded', s.started_at, s.finished_at,
              jsonb_build_object('step', s.name, 'value', s.position, 'trace', repeat('x', 40)),
              CASE WHEN s.position = 2 THEN '{"cost_usd": 0.0004, "total_tokens": 180}'::jsonb END
         FROM statepipe.steps s JOIN statepipe.runs r ON r.id = s.run_id WHERE r.workflow_ref = 'bench/populated.py:wf'""",
    "ANALYZE statepipe.runs",
    "ANALYZE statepipe.steps",
    "ANALYZE statepipe.attempts",
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _database(url: str | None) -> str:
    from statepipe.store.database import open_store

    bench_url = benchdb.fresh_database(url, BENCH_DB)
    open_store(bench_url, max_size=1).pool.close()  # the schema
    return bench_url


def _populate(url: str, runs: int) -> float:
    began = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in POPULATE:
            conn.execute(statement, {"runs": runs})
    return time.perf_counter() - began



def _quantiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p95, in milliseconds."""
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return q[49] * 1000, q[94] * 1000


class InProcess:
    """W1 as bench/systems.Statepipe executes it: create_run, then execute in this process."""

    def __init__(self, url: str) -> None:
        from statepipe.definition.loader import Loaded
        from statepipe.engine.runtime import Runtime
        from statepipe.store.database import open_store

        self.store = open_store(url, max_size=20)
        self.runtime = Runtime(self.store)
        self.loaded = Loaded(wl.W1, f"{HERE / 'workloads.py'}:W1")
        self.runner = asyncio.Runner()

    def w1(self, k: int) -> Any:
        run_id = self.runtime.create_run(self.loaded, wl.chain_input(k))
        outcome = self.runner.run(self.runtime.execute(run_id, self.loaded))
        return outcome.result

    def close(self) -> None:
        self.runner.close()
        self.runtime.close()


class OverHttp:
    def __init__(self, base: str) -> None:
        self.client = httpx.Client(base_url=base, timeout=120)

    def w1(self, k: int) -> Any:
        response = self.client.post("/api/runs?wait=true", json={"workflow": "bench-w1", "input": wl.chain_input(k)})
        if response.status_code != 200:
            raise SystemExit(f"POST /api/runs?wait=true answered {response.status_code}: {response.text}")
        return response.json()["run"]["result"]


def _time_w1(system: InProcess | OverHttp, k: int) -> float:
    began = time.perf_counter()
    result = system.w1(k)
    took = time.perf_counter() - began
    if result != wl.chain_expected(k, wl.W1_STEPS):
        raise SystemExit(f"W1 {k}: wrong result {result!r}")
    return took


def _time_reads(read: Callable[[], httpx.Response], reps: int) -> list[float]:
    samples = []
    for _ in range(reps):
        began = time.perf_counter()
        response = read()
        samples.append(time.perf_counter() - began)
        if response.status_code != 200:
            raise SystemExit(f"{response.request.url} answered {response.status_code}: {response.text}")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of W1")
    parser.add_argument("--reps", type=int, default=20, help="W1 runs per system per round, alternating (after 2 warm-up)")
    parser.add_argument("--reads", type=int, default=200, help="requests per read measured")
    parser.add_argument("--runs", type=int, default=RUNS, help="runs in the database")
    parser.add_argument("--database-url", default=os.environ.get("STATEPIPE_DATABASE_URL"))
    args = parser.parse_args()

    url = _database(args.database_url)
    log(f"populating {args.runs:,} runs ...")
    log(f"  {_populate(url, args.runs):.1f}s")
    work = Path(tempfile.mkdtemp(prefix="statepipe-bench-api-"))
    (work / "bench-w1.py").write_text(W1_FILE)
    env = {**os.environ, "STATEPIPE_DATABASE_URL": url, "STATEPIPE_WORKFLOWS_PATH": str(work),
           "STATEPIPE_OUTPUT_DIR": str(work / "output")}
    server, base = benchdb.serve(env, cwd=work)
    local = InProcess(url)
    http = OverHttp(base)
    try:
        for k in range(2):  # warm-up
            _time_w1(local, k)
            _time_w1(http, k)
        inproc: list[list[float]] = []
        served: list[list[float]] = []
        k = 10
        for r in range(args.rounds):  # each run in-process, then the same over HTTP: both see the same moment's load
            log(f"W1 round {r + 1}/{args.rounds}")
            inproc.append([])
            served.append([])
            for _ in range(args.reps):
                inproc[-1].append(_time_w1(local, k))
                served[-1].append(_time_w1(http, k + 1))
                k += 2
        ratios = [statistics.median(s) / statistics.median(i) for i, s in zip(inproc, served)]
        print(f"W1 (20-step chain), {args.rounds} rounds x {args.reps} runs, {args.runs:,} runs in the database\n")
        print("| W1 | p50 ms | p95 ms |")
        print("|---|---|---|")
        for label, samples in (("in-process (create_run + execute)", inproc), ("POST /api/runs?wait=true", served)):
            p50, p95 = _quantiles([x for round_ in samples for x in round_])
            print(f"| {label} | {p50:.1f} | {p95:.1f} |")
        print(f"\nratio HTTP/in-process, median of round medians: {statistics.median(ratios):.2f}x "
              f"(rounds {min(ratios):.2f}-{max(ratios):.2f}; goal within 1.5x)\n")

        from statepipe.views.web.api import encode_cursor

        client = http.client
        with psycopg.connect(url) as conn:
            ids = [str(r[0]) for r in conn.execute("SELECT id FROM statepipe.runs TABLESAMPLE SYSTEM (1) LIMIT 500").fetchall()]
            at, middle_id = conn.execute(
                "SELECT created_at, id FROM statepipe.runs ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1", (args.runs // 2,)
            ).fetchone() or (None, None)
        middle = encode_cursor(at, middle_id)
        reads: list[tuple[str, Callable[[], httpx.Response]]] = [
            ("GET /api/runs (newest 20)", lambda: client.get("/api/runs")),
            ("GET /api/runs?limit=100", lambda: client.get("/api/runs", params={"limit": 100})),
            ("GET /api/runs, a page 50,000 runs deep", lambda: client.get("/api/runs", params={"cursor": middle})),
            ("GET /api/runs?status=failed", lambda: client.get("/api/runs", params={"status": "failed"})),
            ("GET /api/runs?workflow=bench-other&since=7d", lambda: client.get("/api/runs", params={"workflow": "bench-other", "since": "7d"})),
            ("GET /api/runs/{id} (a random run)", lambda: client.get(f"/api/runs/{random.choice(ids)}")),
        ]
        print(f"reads on {args.runs:,} runs, {args.reads} requests each, one client, keep-alive\n")
        print("| request | p50 ms | p95 ms |")
        print("|---|---|---|")
        for label, read in reads:
            _time_reads(read, 5)
            p50, p95 = _quantiles(_time_reads(read, args.reads))
            print(f"| {label} | {p50:.1f} | {p95:.1f} |", flush=True)
    finally:
        http.client.close()
        local.close()
        server.send_signal(signal.SIGTERM)
        server.wait(60)


if __name__ == "__main__":
    main()
