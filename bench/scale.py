"""Scale curves (issue 17): what one more child of a fan-out, one more step of a chain, and one
more streamed chunk cost, from small to large. Trivial step bodies, in-process, embedded
PostgreSQL (or STATEPIPE_DATABASE_URL), each in a database of its own (statepipe_bench_scale).

    python bench/scale.py fanout --widths 1000,4000,16000,32000,100000
    python bench/scale.py chain --lengths 100,1000
    python bench/scale.py stream --chunks 10000,100000,1000000

Fan-out: per-child cost = the run's executing time / width, and the process's peak RSS growth
(bytes per child). Chain: per-step cost. Stream: RSS while one step emits chunks, and a check
that every chunk is stored in order."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import benchdb  # bench/benchdb.py: the scripts run from this folder
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from statepipe import Workflow  # noqa: E402
from statepipe.definition.loader import Loaded  # noqa: E402
from statepipe.engine.runtime import Runtime  # noqa: E402
from statepipe.store.database import open_store  # noqa: E402

BENCH_DB = "statepipe_bench_scale"


def fresh_database(url: str | None) -> str:
    return benchdb.fresh_database(url, BENCH_DB)


def rss_mb() -> float:
    """The current resident set (not the peak), from /proc."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def fanout_workflow() -> Workflow:
    wf = Workflow("scale_fanout", max_concurrency=64)

    @wf.step
    def items(width: int) -> list[int]:
        return list(range(width))

    @wf.step(map_over=items)
    def child(item: int) -> int:
        return item * 2

    @wf.step
    def join(child: list[int]) -> int:
        return sum(child)

    return wf


def chain_workflow(length: int) -> Workflow:
    wf = Workflow("scale_chain")
    for n in range(length):
        wf.step(name=f"s{n:04d}", after=[f"s{n - 1:04d}"] if n else [])(lambda: 1)
    return wf


def stream_workflow() -> Workflow:
    wf = Workflow("scale_stream")

    @wf.step
    def flood(ctx, chunks: int) -> int:
        for i in range(chunks):
            ctx.emit(f"{i % 10}")
        return chunks

    return wf


def execute(url: str, wf: Workflow, run_input: dict[str, object]) -> tuple[str, float, float]:
    """Run it; returns (run id, seconds, the peak RSS growth in MB while it ran)."""
    store = open_store(url, max_size=8)
    runtime = Runtime(store)
    before = rss_mb()
    peak = [before]
    running = threading.Event()
    running.set()

    def sample() -> None:  # the peak while it runs, not what is left after
        while running.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        run_id = runtime.create_run(Loaded(wf, f"bench/scale.py:{wf.name}"), run_input)
        began = time.perf_counter()
        outcome = asyncio.run(runtime.execute(run_id, Loaded(wf, f"bench/scale.py:{wf.name}")))
        took = time.perf_counter() - began
        assert outcome.state == "succeeded", outcome
        runtime.writer.flush()
    finally:
        running.clear()
        sampler.join()
        runtime.close()
    return run_id, took, peak[0] - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["fanout", "chain", "stream"])
    parser.add_argument("--widths", default="1000,4000,16000,32000")
    parser.add_argument("--lengths", default="100,1000")
    parser.add_argument("--chunks", default="10000,100000")
    parser.add_argument("--database-url", default=os.environ.get("STATEPIPE_DATABASE_URL"))
    args = parser.parse_args()
    if args.what == "fanout":
        print("| children | seconds | us per child | peak RSS growth MB | bytes per child |")
        print("|---|---|---|---|---|")
        for width in [int(w) for w in args.widths.split(",")]:
            url = fresh_database(args.database_url)
            _, took, grown = execute(url, fanout_workflow(), {"width": width})
            print(f"| {width} | {took:.2f} | {took / width * 1e6:.0f} | {grown:.1f} | {grown * 2**20 / width:.0f} |", flush=True)
    elif args.what == "chain":
        print("| steps | seconds | ms per step |")
        print("|---|---|---|")
        for length in [int(n) for n in args.lengths.split(",")]:
            url = fresh_database(args.database_url)
            _, took, _ = execute(url, chain_workflow(length), {})
            print(f"| {length} | {took:.2f} | {took / length * 1e3:.2f} |", flush=True)
    else:
        print("| chunks | seconds | peak RSS growth MB | stored in order |")
        print("|---|---|---|---|")
        for chunks in [int(n) for n in args.chunks.split(",")]:
            url = fresh_database(args.database_url)
            run_id, took, grown = execute(url, stream_workflow(), {"chunks": chunks})
            with psycopg.connect(url) as conn:
                row = conn.execute(
                    "SELECT string_agg(data->>'text', '' ORDER BY seq) FROM statepipe.events"
                    " WHERE run_id = %s AND type = 'output'", (run_id,),
                ).fetchone()
            text = row[0] if row else ""
            ok = text == "".join(str(i % 10) for i in range(chunks))
            print(f"| {chunks} | {took:.2f} | {grown:.1f} | {ok} |", flush=True)


if __name__ == "__main__":
    main()
