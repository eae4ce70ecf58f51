"""W4 through the worker path: `statepipe batch` (a pool of worker processes claiming runs with
SKIP LOCKED) against the psycopg floor, interleaved, as BENCH.md asks.

    python bench/w4_batch.py [--rounds 3] [--processes 2] [--database-url URL]

The timed unit for statepipe is the whole `statepipe batch` command, from submitting the 200
inputs to holding their checked results (its `--jsonl` output): process start-up, run creation,
the pool's processes and their claims are all inside it. The floor is W4 as in run.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import workloads as wl
from systems import BenchError, Floor

from statepipe.store.database import resolve_url

HERE = Path(__file__).resolve().parent


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


def batch_round(url: str, first_k: int, processes: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.jsonl"
        ks = range(first_k, first_k + wl.W4_RUNS)
        inputs.write_text("".join(json.dumps(wl.chain_input(k)) + "\n" for k in ks))
        cmd = [
            sys.executable, "-m", "statepipe", "--database-url", url, "--output-dir", tmp,
            "batch", f"{HERE / 'workloads.py'}:W4", str(inputs),
            "--concurrency", str(wl.W4_CONCURRENCY), "--processes", str(processes), "--jsonl",
        ]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    url = resolve_url(args.database_url)
    base = int(time.time()) * 1000  # fresh inputs each invocation, so each batch is a new one
    floor, batch = [], []
    for r in range(args.rounds):
        k = base + r * 10_000
        floor.append(floor_round(url, k))
        batch.append(batch_round(url, k + 5_000, args.processes))
        print(f"round {r + 1}: floor {floor[-1] * 1000:.0f} ms, statepipe batch {batch[-1] * 1000:.0f} ms", file=sys.stderr)
    ratios = [b / f for b, f in zip(batch, floor)]
    print("| W4 (200 × 5 steps, 20 at a time) | floor | statepipe batch | ratio |")
    print("|---|---|---|---|")
    print(
        f"| median of {args.rounds} rounds | {statistics.median(floor) * 1000:.0f} ms | "
        f"{statistics.median(batch) * 1000:.0f} ms ({wl.W4_RUNS / statistics.median(batch):.0f} workflows/s) | "
        f"**{statistics.median(ratios):.2f}×** ({min(ratios):.2f}–{max(ratios):.2f}) |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
