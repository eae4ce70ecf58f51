"""Process steps against threads (issue 18): a montecarlo-style fan-out of seeded, CPU-bound
branches (the pi estimator of workflows/montecarlo.py), its branches on threads, then in processes
(`process=True`), in-process runs on embedded PostgreSQL (or STATEPIPE_DATABASE_URL), in a
database of its own (statepipe_bench_processes).

    python bench/process_steps.py                          # 2, 4 and 8 branches, 3 rounds
    python bench/process_steps.py --branches 2,4 --samples 400000 --rounds 5 --processes 2

Each round runs each mode on a fresh Runtime twice: cold (the pool's processes, and the
forkserver they come from, start during the run) and warm (they are up, as in a worker that has
run one before). Figures are medians over the rounds: wall time from create_run to the result,
and CPU time per wall second of the whole round (this process plus its reaped children, which the
pool's processes are once it closes). Speedup = threads' wall / processes' wall. Results of both
modes are compared: the branches are seeded, so they must be equal. Then a chain of trivial
steps, warm, on threads and in processes: what a process step costs beyond a thread step (its
round trip through the pipe), so a step is worth a process only when it computes for longer."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import benchdb  # bench/benchdb.py: the scripts run from this folder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from statepipe import Workflow
from statepipe.definition.loader import Loaded
from statepipe.engine.pool import default_size
from statepipe.engine.runtime import Runtime
from statepipe.store.database import open_store

BENCH_DB = "statepipe_bench_processes"

threads = Workflow("bench_threads", max_concurrency=64)
processes = Workflow("bench_processes", max_concurrency=64)


def seeds(branches: int, seed: int = 42) -> list[int]:
    return [seed + k for k in range(int(branches))]


def pi_branch(item: int, samples: int) -> dict[str, Any]:
    """One branch: `samples` uniform points, the fraction inside the quarter circle."""
    rng = random.Random(item)
    inside = 0
    for _ in range(int(samples)):
        x, y = rng.random(), rng.random()
        if x * x + y * y <= 1.0:
            inside += 1
    return {"seed": item, "inside": inside}


def combine(branch: list[dict[str, Any]], samples: int) -> float:
    return 4 * sum(b["inside"] for b in branch) / (len(branch) * int(samples))


for wf, in_process in ((threads, False), (processes, True)):
    wf.step(name="seeds")(seeds)
    wf.step(name="branch", map_over="seeds", process=in_process)(pi_branch)
    wf.step(name="combine")(combine)

# what a process step costs beyond a thread step: a chain of trivial steps, one at a time (a
# fan-out would measure how many children a commit carries: on threads all of them finish
# together, in processes a pool's worth)
CHAIN = 100
trivial_threads = Workflow("bench_trivial_threads")
trivial_processes = Workflow("bench_trivial_processes")


def link() -> int:
    return 1


for wf, in_process in ((trivial_threads, False), (trivial_processes, True)):
    for n in range(CHAIN):
        wf.step(name=f"link{n:03d}", after=[f"link{n - 1:03d}"] if n else [], process=in_process)(link)


def fresh_database(url: str | None) -> str:
    return benchdb.fresh_database(url, BENCH_DB)


def machine_busy_s() -> float:
    """CPU time the whole machine spent on work (steal included), from /proc/stat: what this
    process did not use of it is other work, which leaves the branches fewer CPUs."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def one(runtime: Runtime, wf: Workflow, run_input: dict[str, Any]) -> tuple[float, Any]:
    name = next(k for k, v in globals().items() if v is wf)
    loaded = Loaded(wf, f"{__file__}:{name}")
    began = time.perf_counter()
    run_id = runtime.create_run(loaded, run_input)
    outcome = asyncio.run(runtime.execute(run_id, loaded))
    wall = time.perf_counter() - began
    assert outcome.state == "succeeded", outcome
    return wall, outcome.result


def round_of(store: Any, wf: Workflow, run_input: dict[str, Any], pool: int) -> tuple[float, float, float, Any]:
    """(cold wall, warm wall, CPU per wall second over both, result) of one mode."""
    cpu, began = cpu_s(), time.perf_counter()
    runtime = Runtime(store, processes=pool)
    try:
        cold, result = one(runtime, wf, run_input)
        warm, again = one(runtime, wf, run_input)
        assert again == result
    finally:  # not runtime.close(), which closes the store too
        runtime.pool.close()  # reaps the pool's processes: their CPU time is counted from here
        runtime._closing.set()
        runtime.writer.close()
    return cold, warm, (cpu_s() - cpu) / (time.perf_counter() - began), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--branches", default="2,4,8", help="comma-separated fan-out widths")
    parser.add_argument("--samples", type=int, default=300_000, help="points per branch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=None, help="pool size (default: the CPUs usable)")
    parser.add_argument("--database-url", default=os.environ.get("STATEPIPE_DATABASE_URL"))
    args = parser.parse_args()
    pool = args.processes or default_size()
    store = open_store(fresh_database(args.database_url), max_size=8)
    busy, ours, began = machine_busy_s(), cpu_s(), time.perf_counter()
    print(f"{os.cpu_count()} CPUs ({default_size()} usable), pool of {pool}, {args.samples:,} points per branch, "
          f"median of {args.rounds} rounds; load average before: {os.getloadavg()[0]:.2f}")
    print()
    print("| branches | threads wall | threads CPU/wall | processes wall (warm) | processes wall (cold) "
          "| processes CPU/wall | speedup warm | speedup cold |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for width in (int(b) for b in args.branches.split(",")):
            run_input = {"branches": width, "samples": args.samples}
            t_walls, t_ratios, p_cold, p_warm, p_ratios = [], [], [], [], []
            for _ in range(args.rounds):
                cold, warm, ratio, by_threads = round_of(store, threads, run_input, pool)
                t_walls += [cold, warm]
                t_ratios.append(ratio)
                cold, warm, ratio, by_processes = round_of(store, processes, run_input, pool)
                assert by_processes == by_threads, (by_processes, by_threads)
                p_cold.append(cold)
                p_warm.append(warm)
                p_ratios.append(ratio)
            t, warm, cold = statistics.median(t_walls), statistics.median(p_warm), statistics.median(p_cold)
            print(f"| {width} | {t:.2f} s | {statistics.median(t_ratios):.2f} | {warm:.2f} s | {cold:.2f} s "
                  f"| {statistics.median(p_ratios):.2f} | x{t / warm:.2f} | x{t / cold:.2f} |", flush=True)
        print()
        print(f"A chain of {CHAIN} trivial steps (warm): time per step")
        print()
        print("| threads | processes | a process step's extra cost |")
        print("|---:|---:|---:|")
        per_thread = statistics.median(round_of(store, trivial_threads, {}, pool)[1] for _ in range(args.rounds))
        per_process = statistics.median(round_of(store, trivial_processes, {}, pool)[1] for _ in range(args.rounds))
        per_thread, per_process = per_thread / CHAIN * 1000, per_process / CHAIN * 1000
        print(f"| {per_thread:.2f} ms | {per_process:.2f} ms | {per_process - per_thread:.2f} ms |")
    finally:
        store.pool.close()
    others = (machine_busy_s() - busy) - (cpu_s() - ours)  # the database server's share of the runs is counted here
    print()
    print(f"meanwhile other processes kept {others / (time.perf_counter() - began):.2f} CPUs busy on average; "
          f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
