"""W4 through the worker path (BENCH.md): 200 runs submitted to the shared database and executed
by `statepipe worker` processes that claim them with SKIP LOCKED, against the psycopg floor,
interleaved.

    python bench/w4_batch.py [--rounds 3] [--workers 2] [--database-url URL]

Per round, as BENCH.md's rules put set-up outside the clock: the worker processes are started
and connected first (together `--concurrency 20`, the W4 limit); a warm-up batch of 20 runs,
then the timed batch of 200. The timed unit is from submitting the 200 runs (one transaction,
as `statepipe run --detach` / `batch` do) to holding all 200 checked results read back from the
store; the workers' own lines ("<run_id> <state>" as each run ends) say when to read them. After
the clock, the succeeded step attempts are counted. The workers are then stopped with SIGTERM
(they drain and exit). Their event files and results.jsonl go to one folder for all rounds,
removed at the end.

The whole `statepipe batch` command is timed as well (`--batch-command`), start-up included:
that is what a user waits for at the terminal, not the engine's cost.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import workloads as wl
from systems import BenchError, Floor

from statepipe.definition.loader import Loaded
from statepipe.engine.runtime import Runtime
from statepipe.lifecycles import RUN_FINISHED
from statepipe.store import open_store
from statepipe.store.database import resolve_url

HERE = Path(__file__).resolve().parent
W4_REF = f"{HERE / 'workloads.py'}:W4"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def floor_round(url: str, first_k: int) -> float:
    floor = Floor(url, connections=wl.W4_CONCURRENCY, threads=wl.W4_CONCURRENCY)
    try:
        floor.w4_batch(first_k, wl.W4_WARMUP_RUNS)
        start = time.perf_counter()
        got = floor.w4_batch(first_k + wl.W4_WARMUP_RUNS, wl.W4_RUNS)
        elapsed = time.perf_counter() - start
    finally:
        floor.close()
    for i, result in enumerate(got):
        if result != wl.chain_expected(first_k + wl.W4_WARMUP_RUNS + i, wl.W4_STEPS):
            raise BenchError(f"floor W4 result {i} is wrong")
    return elapsed


class Workers:
    """`statepipe worker` processes, started and connected before any timing. Each prints a line
    "<run_id> <state>" on stderr as a run ends; collecting those tells when a batch is done
    without querying the database the workers share (a poll every few milliseconds took CPU
    from them on a small machine)."""

    def __init__(self, url: str, count: int, out_dir: str) -> None:
        per = wl.W4_CONCURRENCY // count
        cmd = [
            sys.executable, "-m", "statepipe", "--database-url", url, "--output-dir", out_dir,
            "worker", "--concurrency", str(per), "--workflows", wl.W4.name,
        ]
        self.ended: dict[str, str] = {}  # run id -> the state it ended in
        self.changed = threading.Condition()
        self.procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True) for _ in range(count)]
        for proc in self.procs:  # the banner is printed once the worker's store is open
            assert proc.stderr is not None
            line = proc.stderr.readline()
            if not line.startswith("worker "):
                raise BenchError(f"worker did not start: {line.strip() or proc.wait()}")
            # read to the end, so a full pipe never stalls a worker
            threading.Thread(target=self._collect, args=(proc.stderr,), daemon=True).start()

    def _collect(self, stream: IO[str]) -> None:
        for line in stream:
            run_id, _, state = line.strip().partition(" ")
            if state in RUN_FINISHED:
                with self.changed:
                    self.ended[run_id] = state
                    self.changed.notify_all()

    def wait_for(self, ids: Sequence[str], timeout: float = 600.0) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: all(i in self.ended for i in ids), timeout):
                raise BenchError(f"workers finished {sum(i in self.ended for i in ids)} of {len(ids)} runs in {timeout:g}s")

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def submit_and_wait(runtime: Runtime, loaded: Loaded, workers: Workers, first_k: int, runs: int) -> tuple[float, list[str]]:
    """Submit `runs` W4 runs for the workers and wait until every one has ended; returns the
    elapsed time and the run ids, having checked each result."""
    batch_id = f"bench-{uuid.uuid4().hex[:12]}"
    inputs = [wl.chain_input(k) for k in range(first_k, first_k + runs)]
    expected = [wl.chain_expected(k, wl.W4_STEPS) for k in range(first_k, first_k + runs)]
    start = time.perf_counter()
    ids = runtime.create_runs(loaded, inputs, detach=True, batch_id=batch_id, batch_indices=list(range(runs)))
    workers.wait_for(ids)
    results = runtime.store.results(ids)
    elapsed = time.perf_counter() - start
    rows = runtime.store.batch_runs(batch_id)
    for i, run_id in enumerate(ids):
        if rows[i].state != "succeeded" or results.get(run_id) != expected[i]:
            raise BenchError(f"worker W4 run {run_id} ended {rows[i].state} with {results.get(run_id)}")
    return elapsed, ids


def count_succeeded_attempts(runtime: Runtime, ids: Sequence[str]) -> int:
    with runtime.store.pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM statepipe.attempts WHERE run_id = ANY(%s) AND state = 'succeeded'", (list(ids),)
        ).fetchone()
    return int(row[0]) if row else 0


def worker_round(url: str, first_k: int, workers: int, out_dir: str) -> tuple[float, int]:
    loaded = Loaded(wl.W4, W4_REF)
    runtime = Runtime(open_store(url, max_size=2))
    pool = Workers(url, workers, out_dir)
    try:
        submit_and_wait(runtime, loaded, pool, first_k, wl.W4_WARMUP_RUNS)
        elapsed, ids = submit_and_wait(runtime, loaded, pool, first_k + wl.W4_WARMUP_RUNS, wl.W4_RUNS)
        persisted = count_succeeded_attempts(runtime, ids)  # after the clock, as BENCH.md asks
        if persisted != wl.W4_RUNS * wl.W4_STEPS:
            raise BenchError(f"workers persisted {persisted} succeeded steps, expected {wl.W4_RUNS * wl.W4_STEPS}")
    finally:
        pool.stop()
        runtime.close()
    return elapsed, persisted


def batch_command_round(url: str, first_k: int, processes: int, out_dir: str) -> float:
    """The whole `statepipe batch` command, process start-up included."""
    inputs = Path(out_dir) / f"inputs-{first_k}.jsonl"
    ks = range(first_k, first_k + wl.W4_RUNS)
    inputs.write_text("".join(json.dumps(wl.chain_input(k)) + "\n" for k in ks))
    cmd = [
        sys.executable, "-m", "statepipe", "--database-url", url, "--output-dir", out_dir,
        "batch", W4_REF, str(inputs),
        "--concurrency", str(wl.W4_CONCURRENCY), "--processes", str(processes), "--jsonl",
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"statepipe batch failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if len(lines) != wl.W4_RUNS:
        raise BenchError(f"statepipe batch printed {len(lines)} results, expected {wl.W4_RUNS}")
    for k, line in zip(ks, lines):
        if line["state"] != "succeeded" or line["result"] != wl.chain_expected(k, wl.W4_STEPS):
            raise BenchError(f"statepipe batch result for k={k} is wrong: {line}")
    return elapsed


def row(label: str, floor: list[float], other: list[float]) -> str:
    ratios = [o / f for o, f in zip(other, floor)]
    return (
        f"| {label} | {statistics.median(floor) * 1000:.0f} ms | {statistics.median(other) * 1000:.0f} ms "
        f"({wl.W4_RUNS / statistics.median(other):.0f} workflows/s) | "
        f"**{statistics.median(ratios):.2f}×** ({min(ratios):.2f}–{max(ratios):.2f}) |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (W4's 20 slots are split between them)")
    parser.add_argument("--batch-command", action="store_true", help="also time the whole `statepipe batch` command")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    url = resolve_url(args.database_url)
    base = int(time.time()) * 1000  # fresh inputs each invocation
    floor, workers, command, persisted = [], [], [], []
    # One output folder for every round, as a long-lived worker has: files deleted between
    # rounds make creating the next round's slow on a filesystem that avoids reusing the inodes
    # of recently deleted files (ext4 without a journal scans past each: a third of a worker's
    # CPU on this benchmark's VM).
    with tempfile.TemporaryDirectory() as out_dir:
        try:
            for r in range(args.rounds):
                k = base + r * 10_000
                floor.append(floor_round(url, k))
                elapsed, steps = worker_round(url, k + 1_000, args.workers, out_dir)
                workers.append(elapsed)
                persisted.append(steps)
                line = f"round {r + 1}: floor {floor[-1] * 1000:.0f} ms, {args.workers} workers {workers[-1] * 1000:.0f} ms"
                if args.batch_command:
                    command.append(batch_command_round(url, k + 5_000, args.workers, out_dir))
                    line += f", `statepipe batch` command {command[-1] * 1000:.0f} ms"
                log(line)
        except BenchError as exc:
            log(f"benchmark failed: {exc}")
            return 1
    print(f"W4 (200 × 5 steps, at most 20 at a time), median of {args.rounds} rounds; ratio = median of per-round ratios")
    print()
    print("| path | floor | statepipe | ratio |")
    print("|---|---|---|---|")
    print(row(f"{args.workers} `statepipe worker` processes (started before timing)", floor, workers))
    if command:
        print(row("the whole `statepipe batch --jsonl` command, start-up included", floor, command))
    print()
    expected = wl.W4_RUNS * wl.W4_STEPS
    print(f"Succeeded step attempts persisted by the workers, per timed batch: {', '.join(f'{n:,}/{expected:,}' for n in persisted)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
